"""Inference backends for the frame-level codec: "keras", "tflite", "fast", "bf16", and "auto"
(the API's and CLI's default: tflite where its NHWC export serves the model, else keras;
`auto_backend_reason` says why not).

A backend runs the two network halves that `inference.StreamEncoder` / `StreamDecoder` call
once per chunk; everything else (LPC analysis, the switched filters, the postfilter, range
coding) is the same numpy code for both:

    encode_frames(frames float32 [N, 512], num_active) -> [int32 [N, P_i, S_i] per module]
    decode_frames([int32 [N, P_i, S_i], ...])            -> float32 [N, 512]

"keras": the model's traced `tf.function`s (`CQCodec.encode_frames` / `decode_frames`). Its codes
define the `.nac` bytes the golden-file tests pin.

"fast": keras with each encoder's output convolution (C -> 1 channel, kernel 55) laid out so
that oneDNN does not pad its one output channel to 16 (`residual_module.strided_output_conv`;
~40 % of the encoder's convolution time on the default model). The same sums in another order:
codes agree with keras's except where a latent lies within rounding of a bin boundary, so, as
with tflite, the bytes may differ from keras's and either decodes the other's.

"bf16" (opt-in): the modules' encoder and decoder layers computing in bfloat16 on oneDNN
(`BF16Backend`; float32 weights cast per call, fp32 accumulation), the quantizer, the residual
cascade and the sum of the modules' outputs in float32, and each encoder's output convolution
laid out as "fast" does. About 1.4x keras's encode + decode at 3 modules on a CPU with
AVX512_BF16 (docs/DESIGN.md "Speed, third pass"; without native bf16 oneDNN emulates it and it
may be slower than keras). It is lossy against keras: ~0.3-0.9 % of the module codes differ
(latents round to bfloat16 before the quantizer) and its decoder's output is ~26 dB SNR from
keras's on the same bytes; bytes of any backend decode with every other, and PESQ-WB on the
test voices moved by < 0.01 on average. Never the default.

"tflite": the frame encoder / decoder of each operating point converted to `.tflite` flatbuffers
and run by the LiteRT interpreter (`ai-edge-litert`; TensorFlow's own `tf.lite.Interpreter` is
deprecated) with the XNNPACK delegate, 50 frames per invocation. The export is the NHWC graph of
`nhwc_frame_function` (the layers' weights written out as 4-D convolutions that XNNPACK takes
whole but for the quantizers' ARG_MIN / GATHER; 1.3-1.6x keras's encode + decode on the shipped
model, docs/DESIGN.md "Speed, sixth pass"); for a model it cannot write (another quantizer, a
bypassed one; `nhwc_unsupported` says why, and the backend logs it) the model's own traced
functions, frozen (variables folded into constants: a hand conversion of the SavedModel keeps
READ_VARIABLE ops whose resources LiteRT never initialises, so it fails with `variable != nullptr`
or decodes NaN). Its float arithmetic is not TensorFlow's, so a latent within a rounding error of a
bin boundary may take the neighbouring code (11 in 18 million on the test corpus at 1 module;
docs/DESIGN.md): the bytes may differ from the keras backend's, and either backend's codes decode
with the other (decoded audio within the tolerance tests/test_tflite.py states). Conversions are
cached in memory, and on disk under `cache_dir` (default `$CQ_CODEC_CACHE` or `~/.cache/cq_codec`,
keyed by the weights, config, TensorFlow version and export format `_FORMAT`) when it is writable.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile

import numpy as np

import constants as C

__all__ = ["BACKENDS", "KerasBackend", "TFLiteBackend", "BF16Backend", "get_backend", "auto_backend_reason",
           "model_key", "default_cache_dir",
           "convert_frame_function", "nhwc_frame_function", "nhwc_unsupported",
           "tflite_interpreter_class"]

BACKENDS = ("auto", "keras", "tflite", "fast", "bf16")
_FORMAT = 2          # bump when the exported functions change (invalidates disk caches); 2: the NHWC graph
SUB_BATCH = 50       # frames per LiteRT invocation (tflite backend; `_Runner`)


class KerasBackend:
    """The model's own traced functions (looked up at call time, so wrappers see every call).
    `strided_out=True` is the "fast" backend: the encoders' output convolutions laid out for
    oneDNN (`residual_module.strided_output_conv`); decoding is keras's."""

    def __init__(self, model, strided_out: bool = False):
        self.model = model
        self.strided_out = bool(strided_out)
        self.name = "fast" if self.strided_out else "keras"

    def encode_frames(self, frames: np.ndarray, num_active: int) -> list[np.ndarray]:
        extra = {"strided_out": True} if self.strided_out else {}   # keras: the call as it always was
        codes = self.model.encode_frames(np.asarray(frames, np.float32), num_active=num_active, **extra)
        return [np.asarray(c, np.int32) for c in codes]

    def decode_frames(self, codes) -> np.ndarray:
        import tensorflow as tf
        return np.asarray(self.model.decode_frames([tf.constant(np.asarray(c, np.int32)) for c in codes]))


def tflite_interpreter_class():
    """The LiteRT interpreter: `ai_edge_litert` (pinned in requirements.txt), else TensorFlow's
    deprecated `tf.lite.Interpreter` (the same runtime, built into tensorflow-cpu 2.21)."""
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:  # pragma: no cover - the pinned package is missing
        import tensorflow as tf
        Interpreter = tf.lite.Interpreter
    return Interpreter


def model_key(model) -> str:
    """sha256 (hex, 16 chars) of the weights, the config and the TensorFlow version: the disk
    cache key of a model's `.tflite` files."""
    import tensorflow as tf
    h = hashlib.sha256()
    h.update(json.dumps([_FORMAT, tf.__version__, model.get_config()], sort_keys=True, default=str).encode())
    for w in model.weights:
        h.update(np.ascontiguousarray(w.numpy()).tobytes())
    return h.hexdigest()[:16]


def default_cache_dir() -> str:
    return os.environ.get("CQ_CODEC_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "cq_codec")


def _layout(model, n: int) -> list[tuple[int, int]]:
    """(positions, code streams) of each of the first n modules."""
    out = []
    for m in model.codec_modules[:n]:
        streams = len(m.quantizer.codebook_sizes)
        out.append((m.num_positions, streams))
    return out


# ------------------------------------------------------------------ the NHWC export (tflite)
# The frame encoder / decoder as one NHWC graph that XNNPACK takes (nearly) whole.
#
# `convert_frame_function(graph="traced")` freezes the model's own traced
# `encode_frames` / `decode_frames`: every Keras Conv1D reaches LiteRT as EXPAND_DIMS / CONV_2D /
# RESHAPE, the dilated ones as SPACE_TO_BATCH_ND / CONV_2D / BATCH_TO_SPACE_ND, and XNNPACK takes
# neither EXPAND_DIMS nor the batch/space ops, so the 3-module encoder ran as 85 delegate
# partitions with CPU kernels between them (docs/DESIGN.md "Speed, sixth pass").
#
# Here the same function is written out directly from the layers' weights (numpy constants, so
# nothing is left to freeze):
#   - activations stay 4-D, `[N, 1, T, C]`, from the input reshape to the output reshape;
#   - every Conv1D is a `tf.nn.conv2d` with a `[1, k, C_in, C_out]` kernel, its dilation native
#     (CONV_2D's dilation factors) and its "same" padding the same ("SAME"; Keras passes "SAME" to
#     TensorFlow too);
#   - a gated block's linear and gate convolutions stay two (one convolution with both kernels
#     and a SPLIT was no faster: docs/DESIGN.md "Speed, sixth pass");
#   - a narrow "same" output convolution (C_out < 16 dividing 16: `enc_out`, 64 -> 1, kernel 55;
#     `dec_out`, 64 -> 4, kernel 9) is laid out as `residual_module.strided_output_conv` does for
#     oneDNN: 16 / C_out neighbouring positions share the 16 output lanes (lane (j, c) holds
#     channel c's kernel shifted by j taps, the convolution runs with stride 16 / C_out over the
#     padded input), so each output is the same sum of the same products and XNNPACK's 16-wide
#     output tiles are not mostly padding;
#   - the quantizer's nearest bin is the keras graph's own formulation (float32 |z - b|, ARG_MIN,
#     the first index on ties), and the cascade's dequantized value a GATHER of the bins: the only
#     ops XNNPACK leaves on the CPU (one ARG_MIN per module, one GATHER per module but the last,
#     so the n-module encoder is n delegate partitions; the decoder's GATHERs run first and the n
#     decoders are one partition).
#
# The arithmetic is the keras path's, summed in XNNPACK's order (codes differ only where a latent
# lies within rounding of a bin boundary). `nhwc_unsupported(model, n)` says why a model cannot be
# written this way (the caller then converts the traced functions instead).

_LANES = 16   # fp32 lanes of an AVX-512 register: XNNPACK's (and oneDNN's) output-channel tile


def _np(v) -> np.ndarray:
    """A weight's value (eagerly, also while a function is being traced: it becomes a constant)."""
    import tensorflow as tf
    with tf.init_scope():
        return np.asarray(v.numpy() if hasattr(v, "numpy") else v, np.float32)


# (cq_codec.nn and cq_codec.quantizers are this module's siblings in the import layers, so their
# classes are recognised by name.)
def _is_block(layer) -> bool:
    return type(layer).__name__ in ("GatedResidualBlock", "BottleneckBlock", "SeparableBlock")


def _is_subpixel(layer) -> bool:
    return type(layer).__name__ == "SubPixelUpsample1D"


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
    if _is_block(layer):
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
    if _is_subpixel(layer):
        return _conv_reason(layer.conv)
    return _conv_reason(layer)


def nhwc_unsupported(model, n: int) -> str | None:
    """Why the first n modules of `model` cannot be written as the NHWC graph (None: they can)."""
    for i, m in enumerate(model.codec_modules[:n]):
        q = m.quantizer
        if type(q).__name__ != "SoftmaxQuantizer":
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
    from keras import layers
    for layer in layer_list:
        if _is_subpixel(layer):
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


def nhwc_frame_function(model, kind: str, n: int):
    """The `tf.function` (input signature as `convert_frame_function`'s) of the NHWC graph of the
    frame encoder ("encode": frames -> a tuple of int32 codes [N, P_i, S_i]) or decoder
    ("decode": codes_0..codes_{n-1} -> (frames [N, 512],)) of the first n modules. Raises
    ValueError with `nhwc_unsupported`'s reason when the model cannot be written this way."""
    import tensorflow as tf
    reason = nhwc_unsupported(model, n)
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


GRAPHS = ("nhwc", "traced")


def convert_frame_function(model, kind: str, n: int, graph: str = "nhwc") -> bytes:
    """The `.tflite` flatbuffer of the frame encoder ("encode") or decoder ("decode") of the first
    n modules, with frozen weights. Inputs: "frames" float32 [N, 512] / "codes_i" int32 [N, P_i, S_i];
    outputs "output_k": the codes of module k / the frames ("output_0").

    `graph="nhwc"`: the function written out from the layers' weights as one 4-D graph that
    XNNPACK takes whole but for the quantizers' ARG_MIN / GATHER (`nhwc_frame_function`; raises
    ValueError with the reason for a model it cannot write). `graph="traced"`: the model's own
    traced functions, frozen (Keras' Conv1D reaches LiteRT as EXPAND_DIMS / CONV_2D / RESHAPE and
    the dilated ones through SPACE_TO_BATCH_ND, which XNNPACK does not take: 17-85 partitions)."""
    import tensorflow as tf
    from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2
    if kind not in ("encode", "decode"):
        raise ValueError(f"kind must be 'encode' or 'decode'; got {kind!r}")
    if graph == "nhwc":
        fn = nhwc_frame_function(model, kind, n)     # weights are constants already
    elif graph != "traced":
        raise ValueError(f"graph must be one of {', '.join(GRAPHS)}; got {graph!r}")
    elif kind == "encode":
        @tf.function(input_signature=[tf.TensorSpec([None, C.FRAME_SIZE], tf.float32, name="frames")])
        def fn(frames):
            return tuple(model.encode_frames(frames, num_active=n))
    else:
        specs = [tf.TensorSpec([None, p, s], tf.int32, name=f"codes_{i}") for i, (p, s) in enumerate(_layout(model, n))]

        @tf.function(input_signature=specs)
        def fn(*codes):
            return (model.decode_frames(list(codes)),)
    import absl.logging
    verbosity = absl.logging.get_verbosity()
    absl.logging.set_verbosity(absl.logging.ERROR)   # the converter logs every SavedModel step it takes
    try:
        concrete = fn.get_concrete_function()
        if graph == "traced":
            concrete = convert_variables_to_constants_v2(concrete)
        return tf.lite.TFLiteConverter.from_concrete_functions([concrete], model).convert()
    except Exception as e:  # the converter raises many types (ConverterError, RuntimeError, ...)
        raise RuntimeError(f"cannot convert the {kind} function of {n} module(s) to TFLite "
                           f"(a quantizer whose ops LiteRT lacks?): {type(e).__name__}: {e}") from e
    finally:
        absl.logging.set_verbosity(verbosity)


class _Runner:
    """One interpreter's signature runner (inputs "frames" / "codes_i", outputs "output_k"), fed
    `sub_batch` frames per invocation (0: all at once). Every frame is computed alone (the same
    results for any batch), and XNNPACK ran the NHWC graphs 10-20 % faster on 25-50 frames than
    on a 250-frame chunk at once, whose activations (250 x 128 x 64 floats, 8 MB) leave the
    cache between layers (docs/DESIGN.md "Speed, sixth pass")."""

    def __init__(self, content: bytes, num_threads: int, sub_batch: int = 0):
        self.interpreter = tflite_interpreter_class()(model_content=content, num_threads=num_threads)
        self._run = self.interpreter.get_signature_runner()
        self.sub_batch = int(sub_batch)

    def _once(self, feed) -> list[np.ndarray]:
        out = self._run(**feed)     # resizes the inputs to the feed (a no-op when unchanged)
        return [out[k] for k in sorted(out, key=lambda k: int(k.rsplit("_", 1)[1]))]

    def run(self, **feed) -> list[np.ndarray]:
        n = len(next(iter(feed.values())))
        b = self.sub_batch
        if b <= 0 or n <= b:
            return self._once(feed)
        parts = [self._once({k: v[s: s + b] for k, v in feed.items()}) for s in range(0, n, b)]
        return [np.concatenate(p) for p in zip(*parts)]


class TFLiteBackend:
    """LiteRT + XNNPACK (see the module docstring). `num_threads` defaults to the CPU count;
    `cache_dir=False` disables the disk cache."""

    name = "tflite"

    def __init__(self, model, num_threads: int | None = None, cache_dir=None, graph: str = "auto",
                 sub_batch: int = SUB_BATCH):
        if graph not in ("auto",) + GRAPHS:
            raise ValueError(f"graph must be 'auto' or one of {', '.join(GRAPHS)}; got {graph!r}")
        self.model = model
        self.num_threads = int(num_threads or os.cpu_count() or 1)
        self.cache_dir = None if cache_dir is False else (cache_dir or default_cache_dir())
        self.graph = graph
        self.sub_batch = int(sub_batch)
        self.fallback_reasons: dict = {}     # n -> why the NHWC graph was not used ("auto")
        self._key = None
        self._runners: dict = {}

    def graph_for(self, n: int) -> str:
        """The export used for n modules: "nhwc" where `nhwc_frame_function` can write the model, else
        "traced" (with graph="auto", logging the reason once)."""
        if self.graph != "auto":
            return self.graph
        reason = nhwc_unsupported(self.model, n)
        if reason is None:
            return "nhwc"
        if n not in self.fallback_reasons:
            import logging
            logging.getLogger(__name__).warning(
                "tflite backend: converting the traced functions of %d module(s) (slower) instead of the NHWC "
                "graph: %s", n, reason)
            self.fallback_reasons[n] = reason
        return "traced"

    def flatbuffer(self, kind: str, n: int) -> bytes:
        """The `.tflite` bytes (from the disk cache when there, else converted and stored)."""
        graph = self.graph_for(n)
        path = None
        if self.cache_dir:
            self._key = self._key or model_key(self.model)
            name = f"{kind}_{n}.tflite" if graph == "nhwc" else f"{kind}_{n}.{graph}.tflite"
            path = os.path.join(self.cache_dir, "tflite", self._key, name)
            try:
                with open(path, "rb") as f:
                    return f.read()
            except OSError:
                pass
        content = convert_frame_function(self.model, kind, n, graph)
        if path:
            try:   # atomic: concurrent processes never read a half-written file
                os.makedirs(os.path.dirname(path), exist_ok=True)
                fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), suffix=".tmp")
                with os.fdopen(fd, "wb") as f:
                    f.write(content)
                os.replace(tmp, path)
            except OSError:
                pass   # an unwritable cache only costs the conversion next time
        return content

    def _runner(self, kind: str, n: int) -> _Runner:
        if any(hasattr(m.quantizer, "num_active_codebooks") for m in self.model.codec_modules[:n]):
            # a conversion bakes the RVQ codebooks in use into the graph; not part of the cache key yet
            raise ValueError("the tflite backend does not serve RVQ modules yet; use backend='keras'")
        if (kind, n) not in self._runners:
            self._runners[kind, n] = _Runner(self.flatbuffer(kind, n), self.num_threads, self.sub_batch)
        return self._runners[kind, n]

    def export(self, directory: str, num_active: int | None = None) -> list[str]:
        """Writes encode_<n>.tflite / decode_<n>.tflite for n = 1..num_active (default: all)."""
        os.makedirs(directory, exist_ok=True)
        paths = []
        for n in range(1, (num_active or len(self.model.codec_modules)) + 1):
            for kind in ("encode", "decode"):
                p = os.path.join(directory, f"{kind}_{n}.tflite")
                with open(p, "wb") as f:
                    f.write(self.flatbuffer(kind, n))
                paths.append(p)
        return paths

    def encode_frames(self, frames: np.ndarray, num_active: int) -> list[np.ndarray]:
        out = self._runner("encode", int(num_active)).run(frames=np.ascontiguousarray(frames, np.float32))
        return [np.array(c, np.int32) for c in out]

    def decode_frames(self, codes) -> np.ndarray:
        n = len(codes)
        if not 1 <= n <= len(self.model.codec_modules):
            raise ValueError(f"decode_frames: expected codes of 1..{len(self.model.codec_modules)} modules; got {n}")
        layout = _layout(self.model, n)
        feed = {}
        for i, (c, (p, s)) in enumerate(zip(codes, layout)):
            c = np.ascontiguousarray(c, np.int32)
            if c.ndim != 3 or c.shape[1:] != (p, s):
                raise ValueError(f"decode_frames: module {i}'s codes must be [N, {p}, {s}]; got {c.shape}")
            feed[f"codes_{i}"] = c
        return np.array(self._runner("decode", n).run(**feed)[0], np.float32)


class BF16Backend:
    """The modules' convolutions in bfloat16 (see the module docstring): a copy of each module
    whose encoder / decoder layers have the "mixed_bfloat16" policy (the model's own layers are
    untouched, so a keras backend on the same model is unchanged); one `tf.function` per
    direction and number of modules, like keras's."""

    name = "bf16"

    def __init__(self, model):
        self.model = model
        self.modules = []
        for m in model.codec_modules:
            if hasattr(m.quantizer, "num_active_codebooks"):
                raise ValueError("the bf16 backend does not serve RVQ modules; use backend='keras'")
            c = type(m).from_config(m.get_config())   # a ResidualModule (models is a higher layer)
            c.build((None, m.frame_size, 1))
            c.set_weights(m.get_weights())
            for layer in c.encoder_layers + c.decoder_layers:   # after build: the blocks' sublayers exist
                for sub in layer._flatten_layers(include_self=True):
                    sub.dtype_policy = "mixed_bfloat16"
            self.modules.append(c)
        self._fns = {}

    @staticmethod
    def _latent(m, x):
        """`m.encode_latent(x, strided_out=True)` on the bfloat16 copy (`strided_output_conv`
        computes in its input's dtype)."""
        return m.encode_latent(x, True)

    def _encode_fn(self, n: int):
        import tensorflow as tf
        if ("encode", n) not in self._fns:
            bf, f32 = tf.bfloat16, tf.float32

            def fn(frames):   # CQCodec._encode_frames with the casts
                r = frames * self.model.residual_scale
                codes = []
                for i, m in enumerate(self.modules[:n]):
                    z = tf.cast(self._latent(m, tf.cast(r[..., None], bf)), f32)
                    q = m.quantizer(z, training=False)
                    codes.append(q.codes)
                    if i == n - 1:   # the last module's decoder is not needed to encode
                        break
                    y = m.decode_latent(tf.cast(m.bypass * z + (1.0 - m.bypass) * q.quantized, bf))
                    r = r - tf.cast(y, f32)[..., 0]
                return codes
            self._fns["encode", n] = tf.function(fn, input_signature=[tf.TensorSpec([None, C.FRAME_SIZE], tf.float32)])
        return self._fns["encode", n]

    def _decode_fn(self, n: int):
        import tensorflow as tf
        if ("decode", n) not in self._fns:
            def fn(*codes):   # CQCodec._decode_frames with the casts
                total = 0.0
                for m, c in zip(self.modules, codes):
                    total += tf.cast(m.decode_latent(tf.cast(m.quantizer.decode(c), tf.bfloat16)), tf.float32)[..., 0]
                return total / self.model.residual_scale
            specs = [tf.TensorSpec([None, p, s], tf.int32) for p, s in _layout(self.model, n)]
            self._fns["decode", n] = tf.function(fn, input_signature=specs)
        return self._fns["decode", n]

    def encode_frames(self, frames: np.ndarray, num_active: int) -> list[np.ndarray]:
        codes = self._encode_fn(int(num_active))(np.asarray(frames, np.float32))
        return [np.asarray(c, np.int32) for c in codes]

    def decode_frames(self, codes) -> np.ndarray:
        n = len(codes)
        if not 1 <= n <= len(self.modules):
            raise ValueError(f"decode_frames: expected codes of 1..{len(self.modules)} modules; got {n}")
        return np.asarray(self._decode_fn(n)(*[np.asarray(c, np.int32) for c in codes]))


def auto_backend_reason(model) -> str | None:
    """Why "auto" runs `model` on keras rather than tflite (None: tflite serves it whole)."""
    if not hasattr(model, "codec_modules"):
        return f"{type(model).__name__} is not a CQ model"
    if any(hasattr(m.quantizer, "num_active_codebooks") for m in model.codec_modules):
        return "the tflite backend does not serve RVQ modules"
    why = nhwc_unsupported(model, len(model.codec_modules))
    if why:
        return f"the NHWC export does not cover it ({why})"
    try:
        tflite_interpreter_class()
    except Exception as e:  # pragma: no cover - neither LiteRT nor tf.lite importable
        return f"no LiteRT interpreter ({type(e).__name__}: {e})"
    return None


def get_backend(model, backend="keras", **kwargs):
    """"auto" / "keras" / "tflite" / "fast" / "bf16" / None (keras) / a backend object (returned
    as it is). "auto": tflite where its NHWC export serves the whole model (the faster runtime on
    every operating point measured, docs/DESIGN.md "Speed, sixth pass"), else keras."""
    if backend == "auto":
        return KerasBackend(model) if auto_backend_reason(model) else TFLiteBackend(model, **kwargs)
    if backend is None or backend == "keras":
        return KerasBackend(model)
    if backend == "tflite":
        return TFLiteBackend(model, **kwargs)
    if backend == "fast":
        return KerasBackend(model, strided_out=True)
    if backend == "bf16":
        return BF16Backend(model)
    if hasattr(backend, "encode_frames") and hasattr(backend, "decode_frames"):
        return backend
    raise ValueError(f"unknown backend {backend!r}; valid: {', '.join(BACKENDS)}")
