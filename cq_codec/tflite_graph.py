"""The frame encoder / decoder as one NHWC graph that XNNPACK takes (nearly) whole.

`cq_codec.backends.convert_frame_function(graph="traced")` freezes the model's own traced
`encode_frames` / `decode_frames`: every Keras Conv1D reaches LiteRT as EXPAND_DIMS / CONV_2D /
RESHAPE, the dilated ones as SPACE_TO_BATCH_ND / CONV_2D / BATCH_TO_SPACE_ND, and XNNPACK takes
neither EXPAND_DIMS nor the batch/space ops, so the 3-module encoder ran as 85 delegate
partitions with CPU kernels between them (docs/DESIGN.md "Speed, sixth pass").

Here the same function is written out directly from the layers' weights (numpy constants, so
nothing is left to freeze):
  - activations stay 4-D, `[N, 1, T, C]`, from the input reshape to the output reshape;
  - every Conv1D is a `tf.nn.conv2d` with a `[1, k, C_in, C_out]` kernel, its dilation native
    (CONV_2D's dilation factors) and its "same" padding the same ("SAME"; Keras passes "SAME" to
    TensorFlow too);
  - a gated block's linear and gate convolutions stay two (one convolution with both kernels
    and a SPLIT was no faster: docs/DESIGN.md "Speed, sixth pass");
  - a narrow "same" output convolution (C_out < 16 dividing 16: `enc_out`, 64 -> 1, kernel 55;
    `dec_out`, 64 -> 4, kernel 9) is laid out as `residual_module.strided_output_conv` does for
    oneDNN: 16 / C_out neighbouring positions share the 16 output lanes (lane (j, c) holds
    channel c's kernel shifted by j taps, the convolution runs with stride 16 / C_out over the
    padded input), so each output is the same sum of the same products and XNNPACK's 16-wide
    output tiles are not mostly padding;
  - the quantizer's nearest bin is the keras graph's own formulation (float32 |z - b|, ARG_MIN,
    the first index on ties), and the cascade's dequantized value a GATHER of the bins: the only
    ops XNNPACK leaves on the CPU (one ARG_MIN per module, one GATHER per module but the last,
    so the n-module encoder is n delegate partitions; the decoder's GATHERs run first and the n
    decoders are one partition).

The arithmetic is the keras path's, summed in XNNPACK's order (codes differ only where a latent
lies within rounding of a bin boundary). `unsupported(model, n)` says why a model cannot be
written this way (the caller then converts the traced functions instead).
"""

from __future__ import annotations

import numpy as np

import constants as C

__all__ = ["unsupported", "frame_function"]

_LANES = 16   # fp32 lanes of an AVX-512 register: XNNPACK's (and oneDNN's) output-channel tile


def _np(v) -> np.ndarray:
    """A weight's value (eagerly, also while a function is being traced: it becomes a constant)."""
    import tensorflow as tf
    with tf.init_scope():
        return np.asarray(v.numpy() if hasattr(v, "numpy") else v, np.float32)


def _conv_reason(layer) -> str | None:
    from keras import layers
    if not isinstance(layer, layers.Conv1D) or type(layer).__name__ not in ("Conv1D",):
        return f"layer {layer.name} is a {type(layer).__name__}, not a Conv1D"
    if layer.padding != "same":
        return f"layer {layer.name} has padding {layer.padding!r}"
    if layer.groups != 1:
        return f"layer {layer.name} is grouped"
    if layer.strides[0] > 1 and layer.dilation_rate[0] > 1:
        return f"layer {layer.name} is strided and dilated"
    act = getattr(layer.activation, "__name__", str(layer.activation))
    if act not in ("linear", "tanh"):
        return f"layer {layer.name} has activation {act}"
    return None


def _layer_reason(layer) -> str | None:
    from cq_codec.nn.blocks import GatedResidualBlock, BottleneckBlock, SeparableBlock, SubPixelUpsample1D
    if isinstance(layer, (GatedResidualBlock, BottleneckBlock, SeparableBlock)):
        if getattr(layer, "causal", False):
            return f"block {layer.name} is causal"
        subs = [layer.reduce, layer.expand] + ([layer.linear, layer.gate] if layer.block_type == "gln" else
                                                [layer.mid] if layer.block_type == "bottleneck" else [])
        for s in subs:
            r = _conv_reason(s)
            if r:
                return r
        if layer.block_type == "separable":
            from keras import layers
            dw = layer.depthwise
            if not isinstance(dw, layers.DepthwiseConv1D) or dw.padding != "same" or dw.strides[0] != 1 \
                    or dw.depth_multiplier != 1 or dw.activation.__name__ != "linear":
                return f"block {layer.name}'s depthwise convolution is not a plain 'same' DepthwiseConv1D"
        return None
    if isinstance(layer, SubPixelUpsample1D):
        return _conv_reason(layer.conv)
    return _conv_reason(layer)


def unsupported(model, n: int) -> str | None:
    """Why the first n modules of `model` cannot be written as the NHWC graph (None: they can)."""
    from cq_codec.quantizers.softmax import SoftmaxQuantizer
    for i, m in enumerate(model.codec_modules[:n]):
        q = m.quantizer
        if type(q) is not SoftmaxQuantizer:
            return f"module {i}'s quantizer is a {type(q).__name__} (only the scalar softmax quantizer is written out)"
        if q.num_groups != 1:
            return f"module {i}'s quantizer has {q.num_groups} bin grids (only one shared grid is written out)"
        if float(_np(m.bypass)) != 0.0 or float(_np(q.bypass)) != 0.0:
            return f"module {i} has quantization bypassed (a pretraining state)"
        for layer in m.encoder_layers + m.decoder_layers:
            r = _layer_reason(layer)
            if r:
                return f"module {i}: {r}"
    return None


# ------------------------------------------------------------------ graph pieces (tf ops)
def _conv(h, kernel, bias, stride=1, dilation=1, padding="SAME"):
    """`[N, 1, T, C_in]` conv with a Conv1D kernel `[k, C_in, C_out]` (numpy) -> `[N, 1, T', C_out]`."""
    import tensorflow as tf
    y = tf.nn.conv2d(h, tf.constant(kernel[None]), strides=[1, 1, stride, 1], padding=padding,
                     dilations=[1, 1, dilation, 1])
    return y if bias is None else tf.nn.bias_add(y, tf.constant(bias))


def _narrow_ok(layer, length: int) -> bool:
    """A stride-1, undilated "same" Conv1D with C_out < 16 dividing 16 over a length divisible
    by 16 / C_out: written as `_narrow_conv`."""
    co = layer.filters
    return (co < _LANES and _LANES % co == 0 and layer.strides[0] == 1 and layer.dilation_rate[0] == 1
            and length % (_LANES // co) == 0)


def _narrow_conv(h, kernel, bias, length: int):
    """The "same" convolution of `[N, 1, T, C_in]` by `kernel [k, C_in, C_out]` with L = 16 / C_out
    neighbouring positions in the 16 output lanes: lane j * C_out + c holds channel c's kernel
    shifted by j taps (length k + L - 1), run with stride L over the "same"-padded input."""
    import tensorflow as tf
    k, ci, co = kernel.shape
    lanes = _LANES // co
    shifted = np.zeros((k + lanes - 1, ci, lanes, co), np.float32)
    for j in range(lanes):
        shifted[j: j + k, :, j, :] = kernel
    left = (k - 1) // 2
    padded = tf.pad(h, [[0, 0], [0, 0], [left, k - 1 - left], [0, 0]])
    y = _conv(padded, shifted.reshape(k + lanes - 1, ci, lanes * co), None, stride=lanes, padding="VALID")
    y = tf.reshape(y, [-1, 1, length, co])        # [N, 1, T / L, L * C_out] -> [N, 1, T, C_out]
    return y if bias is None else y + tf.constant(bias)


def _apply_conv(layer, h, length: int, narrow: bool = True):
    import tensorflow as tf
    kernel = _np(layer.kernel)
    bias = _np(layer.bias) if layer.use_bias else None
    if narrow and _narrow_ok(layer, length):
        y = _narrow_conv(h, kernel, bias, length)
    else:
        y = _conv(h, kernel, bias, layer.strides[0], layer.dilation_rate[0])
    if getattr(layer.activation, "__name__", "") == "tanh":
        y = tf.tanh(y)
    return y


def _apply_block(layer, x):
    import tensorflow as tf
    lrelu = lambda v: tf.nn.leaky_relu(v, alpha=0.2)  # noqa: E731 (ops.leaky_relu(negative_slope=0.2))
    conv = lambda l, v: _apply_conv(l, v, 0, narrow=False)  # noqa: E731
    if layer.block_type == "gln":
        h = conv(layer.reduce, x)
        a, g = conv(layer.linear, h), conv(layer.gate, h)
        return x + lrelu(conv(layer.expand, a * tf.tanh(g)))
    if layer.block_type == "bottleneck":
        h = lrelu(conv(layer.reduce, x))
        h = lrelu(conv(layer.mid, h))
        return x + conv(layer.expand, h)
    dw = layer.depthwise      # separable
    kernel = _np(dw.kernel)   # [k, C, 1]
    h = tf.raw_ops.DepthwiseConv2dNative(input=x, filter=tf.constant(kernel[None]), strides=[1, 1, 1, 1],
                                         padding="SAME", dilations=[1, 1, dw.dilation_rate[0], 1])
    if dw.use_bias:
        h = tf.nn.bias_add(h, tf.constant(_np(dw.bias)))
    h = lrelu(conv(layer.reduce, h))
    return x + conv(layer.expand, h)


def _run_layers(layer_list, h, length: int):
    """`h [N, 1, length, C]` through the layers; returns (h, its length)."""
    import tensorflow as tf
    from cq_codec.nn.blocks import SubPixelUpsample1D
    from keras import layers
    for layer in layer_list:
        if isinstance(layer, SubPixelUpsample1D):
            h = _apply_conv(layer.conv, h, length, narrow=False)
            length *= layer.factor
            h = tf.reshape(h, [-1, 1, length, layer.out_channels])
        elif isinstance(layer, layers.Conv1D):
            h = _apply_conv(layer, h, length)
            length = -(-length // layer.strides[0])
        else:
            h = _apply_block(layer, h)
    return h, length


def _input_shape(m):
    """The `[1, T, C]` the module's first layer sees for a frame."""
    return (1, m.frame_size, 1) if m.front_end == "conv" else (1, m.frame_size // m.stride, m.stride)


def _encode_latent(m, r):
    """Residual `[N, 512]` -> latents `[N, 1, positions, 1]` (before the quantizer)."""
    import tensorflow as tf
    h = tf.reshape(r, (-1,) + _input_shape(m))
    h, _ = _run_layers(m.encoder_layers, h, _input_shape(m)[1])
    return tf.reshape(h, [-1, 1, m.num_positions * m.vector_dim, 1])


def _decode_latent(m, q):
    """Dequantized latents (any shape of N x positions x vector_dim values) -> frame `[N, 512]`."""
    import tensorflow as tf
    t = m.frame_size // m.stride
    h = tf.reshape(q, [-1, 1, t, m.code_dim])
    h, _ = _run_layers(m.decoder_layers, h, t)
    return tf.reshape(h, [-1, m.frame_size])


def frame_function(model, kind: str, n: int):
    """The `tf.function` (input signature as `convert_frame_function`'s) of the NHWC graph of the
    frame encoder ("encode": frames -> a tuple of int32 codes [N, P_i, S_i]) or decoder
    ("decode": codes_0..codes_{n-1} -> (frames [N, 512],)) of the first n modules. Raises
    ValueError with `unsupported`'s reason when the model cannot be written this way."""
    import tensorflow as tf
    reason = unsupported(model, n)
    if reason:
        raise ValueError(f"the NHWC export does not serve this model: {reason}")
    mods = model.codec_modules[:n]
    bins = [_np(m.quantizer.bins)[0] for m in mods]            # [K] each (one shared grid)
    scale = float(model.residual_scale)
    if kind == "encode":
        @tf.function(input_signature=[tf.TensorSpec([None, C.FRAME_SIZE], tf.float32, name="frames")], autograph=False)
        def fn(frames):
            r = frames * scale                                    # as CQCodec._encode_frames
            out = []
            for i, m in enumerate(mods):
                z = _encode_latent(m, r)                          # [N, 1, P, 1]
                b = tf.constant(bins[i])
                codes = tf.argmin(tf.abs(z - b), axis=-1, output_type=tf.int32)   # [N, 1, P]
                out.append(tf.reshape(codes, [-1, m.num_positions, m.vector_dim]))
                if i == n - 1:
                    break
                y = _decode_latent(m, tf.gather(b, codes))
                r = r - y
            return tuple(out)
    elif kind == "decode":
        specs = [tf.TensorSpec([None, m.num_positions, m.vector_dim], tf.int32, name=f"codes_{i}")
                 for i, m in enumerate(mods)]

        @tf.function(input_signature=specs, autograph=False)
        def fn(*codes):
            qs = [tf.gather(tf.constant(b), c) for b, c in zip(bins, codes)]   # all GATHERs first
            total = None
            for m, q in zip(mods, qs):
                y = _decode_latent(m, q)
                total = y if total is None else total + y
            return (total / scale,)
    else:
        raise ValueError(f"kind must be 'encode' or 'decode'; got {kind!r}")
    return fn
