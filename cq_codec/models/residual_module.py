"""One neural residual codec ("module") of the cascade: encoder -> quantizer -> decoder.

The reference architecture (Zhen et al., CMRL Interspeech 2019 / CQ ICASSP 2020):
encoder conv 1->C (k55); blocks; strided conv (k9); blocks; conv C->code_dim (k55) + tanh;
decoder conv ->C (k9); blocks; sub-pixel upsampling (T/s, C) -> (T, C/2); blocks; conv C/2->1 (k55).

`front_end="patch"` is the lean variant measured for the default model (docs/DESIGN.md): the
frame is cut into `stride`-sample patches ([T, 1] -> [T/s, s], space-to-depth) and every layer
runs at the code rate: encoder conv s->C (k9); all blocks; conv C->code_dim (k55) + tanh;
decoder conv ->C (k9); all blocks; conv C->s (k9), patches back to samples (depth-to-space).
No layer runs at the sample rate, so a module costs about a fifth of the reference's FLOPs.
"""

from __future__ import annotations

import keras
from keras import layers, ops

import constants as C
from cq_codec.nn.blocks import SubPixelUpsample1D, make_block
from cq_codec.quantizers import get_quantizer

__all__ = ["ResidualModule", "FRONT_ENDS"]

FRONT_ENDS = ("conv", "patch")   # "conv": the reference (sample-rate layers); "patch": the lean variant


_LANES = 16   # fp32 lanes of an AVX-512 register: oneDNN pads a convolution's output channels to 16


def _strided_ok(conv, length) -> bool:
    """`strided_output_conv` applies: a single-output, stride-1, undilated "same" Conv1D over a
    length divisible by 16."""
    return (isinstance(conv, layers.Conv1D) and conv.filters == 1 and conv.strides == (1,)
            and conv.dilation_rate == (1,) and conv.padding == "same" and length is not None
            and length % _LANES == 0)


def strided_output_conv(conv, h):
    """`conv(h)` for a single-output "same" Conv1D (`_strided_ok`), laid out for oneDNN.

    oneDNN computes a convolution's output channels 16 at a time (one AVX-512 register), so a
    1-channel output costs as much as 16 (measured: the encoder's k = 55 output convolution was
    ~40 % of the encoder's convolution time while holding ~11 % of its multiply-adds). Here the
    16 lanes hold 16 neighbouring output positions instead: lane j's kernel is the layer's kernel
    shifted by j taps (length k + 15), run with stride 16, so each position's sum has the same
    terms, and 1/16 of the work is padding instead of 15/16. oneDNN orders the terms of a sum
    differently for this shape, so results differ in the last bits (up to ~1e-5 before the
    tanh on the default model)."""
    import tensorflow as tf
    kernel = tf.cast(tf.convert_to_tensor(conv.kernel)[:, :, 0], h.dtype)     # [k, C] (bf16 backend: h's dtype)
    k = int(kernel.shape[0])
    shifted = tf.stack([tf.pad(kernel, [[j, _LANES - 1 - j], [0, 0]]) for j in range(_LANES)], axis=-1)
    left = (k - 1) // 2
    padded = tf.pad(h, [[0, 0], [left, k - 1 - left], [0, 0]])
    y = tf.nn.conv1d(padded, shifted, _LANES, "VALID")                      # [B, T / 16, 16]
    y = tf.reshape(y, (-1, int(h.shape[1]), 1))
    if conv.use_bias:
        y = y + tf.cast(conv.bias, y.dtype)
    return conv.activation(y)


@keras.saving.register_keras_serializable(package="cq_codec")
class ResidualModule(layers.Layer):
    """Codes one 512-sample frame: `call(x [B, 512, 1]) -> (y [B, 512, 1], QuantizerOutput)`.

    The encoder makes `frame_size / stride` positions of `code_dim` values; they are regrouped
    into vectors of `vector_dim` values for the quantizer (1 for the scalar softmax quantizer),
    i.e. the quantizer sees `[B, frame_size / stride * code_dim / vector_dim, vector_dim]`.
    """

    def __init__(self, channels: int = 100, bottleneck: int = 20, num_resnets: int = 2,
                 kernel_and_dilation=(9, 9, 1, 2), stride: int = 2, block_type: str = "gln",
                 code_dim: int = 1, vector_dim: int = 1, quantizer: dict | None = None,
                 frame_size: int = C.FRAME_SIZE, front_end: str = "conv", **kwargs):
        super().__init__(**kwargs)
        if front_end not in FRONT_ENDS:
            raise ValueError(f"ResidualModule: front_end must be one of {', '.join(FRONT_ENDS)}; got {front_end!r}")
        if stride not in (1, 2, 4):
            raise ValueError(f"ResidualModule: stride must be 1, 2 or 4; got {stride}")
        if frame_size % stride:
            raise ValueError(f"ResidualModule: frame_size {frame_size} is not divisible by stride {stride}")
        if (frame_size // stride * code_dim) % vector_dim:
            raise ValueError(f"ResidualModule: {frame_size // stride} positions x code_dim {code_dim} cannot be "
                             f"grouped into vectors of {vector_dim}")
        if channels % 2:
            raise ValueError(f"ResidualModule: channels must be even (the decoder halves them); got {channels}")
        self.channels = int(channels)
        self.bottleneck = int(bottleneck)
        self.num_resnets = int(num_resnets)
        self.kernel_and_dilation = tuple(int(v) for v in kernel_and_dilation)
        self.stride = int(stride)
        self.block_type = block_type
        self.code_dim = int(code_dim)
        self.vector_dim = int(vector_dim)
        self.frame_size = int(frame_size)
        self.front_end = front_end
        self.quantizer_config = dict(quantizer or {"name": "softmax"})
        qcfg = dict(self.quantizer_config)
        self.quantizer = get_quantizer(qcfg.pop("name"), **qcfg)

        k, d = self.kernel_and_dilation[:2], self.kernel_and_dilation[2:]

        def blocks(ch, bn, tag):
            return [make_block(block_type, ch, bn, k[j % 2], d[j % 2], name=f"{tag}_{j}") for j in range(self.num_resnets)]

        conv = lambda n, ks, s=1, act=None, name=None: layers.Conv1D(n, ks, strides=s, padding="same",
                                                                      activation=act, name=name)
        if front_end == "patch":
            enc = ([conv(self.channels, 9, name="enc_in")] + blocks(self.channels, self.bottleneck, "enc_a")
                   + blocks(self.channels, self.bottleneck, "enc_b") + [conv(self.code_dim, 55, act="tanh", name="enc_out")])
            dec = ([conv(self.channels, 9, name="dec_in")] + blocks(self.channels, self.bottleneck, "dec_a")
                   + blocks(self.channels, self.bottleneck, "dec_b") + [conv(self.stride, 9, name="dec_out")])
        else:
            enc = [conv(self.channels, 55, name="enc_in")] + blocks(self.channels, self.bottleneck, "enc_a")
            if self.stride > 1:
                enc.append(conv(self.channels, 9, self.stride, name="enc_down"))
            enc += blocks(self.channels, self.bottleneck, "enc_b") + [conv(self.code_dim, 55, act="tanh", name="enc_out")]
            half = self.channels // 2
            dec = [conv(self.channels, 9, name="dec_in")] + blocks(self.channels, self.bottleneck, "dec_a")
            dec.append(SubPixelUpsample1D(self.stride, half, name="dec_up") if self.stride > 1 else conv(half, 9, name="dec_up"))
            dec += blocks(half, max(1, self.bottleneck // 2), "dec_b") + [conv(1, 55, name="dec_out")]
        self.encoder_layers = enc
        self.decoder_layers = dec
        # 1.0 during the quantization-free pretrain epochs: a variable, so no retracing.
        self.bypass = self.add_weight(shape=(), initializer="zeros", trainable=False, name="bypass")

    @property
    def num_positions(self) -> int:
        """Quantizer positions per frame."""
        return self.frame_size // self.stride * self.code_dim // self.vector_dim

    def build(self, input_shape):
        shape = (input_shape[0], self.frame_size, 1) if self.front_end == "conv" else \
            (input_shape[0], self.frame_size // self.stride, self.stride)
        for layer in self.encoder_layers:
            layer.build(shape)
            shape = layer.compute_output_shape(shape)
        self.quantizer.build((input_shape[0], self.num_positions, self.vector_dim))
        shape = (input_shape[0], self.frame_size // self.stride, self.code_dim)
        for layer in self.decoder_layers:
            layer.build(shape)
            shape = layer.compute_output_shape(shape)

    def encode_latent(self, x, strided_out: bool = False):
        """[B, 512, 1] -> latents [B, positions, vector_dim] (before quantization).

        `strided_out` (inference only): the last convolution (`enc_out`, C -> 1 channel, kernel
        55) as `strided_output_conv`, the same sum in a layout oneDNN runs ~5x faster; its
        rounding differs (see there), so codes can differ from the plain path's in rare cases."""
        h = x if self.front_end == "conv" else ops.reshape(x, (-1, self.frame_size // self.stride, self.stride))
        last = self.encoder_layers[-1]
        fast = strided_out and _strided_ok(last, self.frame_size // self.stride)   # enc_out's input length
        for layer in self.encoder_layers[:-1] if fast else self.encoder_layers:
            h = layer(h)
        if fast:
            h = strided_output_conv(last, h)
        return ops.reshape(h, (-1, self.num_positions, self.vector_dim))

    def decode_latent(self, q):
        """Quantized latents [B, positions, vector_dim] -> frame [B, 512, 1]."""
        h = ops.reshape(q, (-1, self.frame_size // self.stride, self.code_dim))
        for layer in self.decoder_layers:
            h = layer(h)
        return h if self.front_end == "conv" else ops.reshape(h, (-1, self.frame_size, 1))

    def call(self, x, training=None):
        z = self.encode_latent(x)
        out = self.quantizer(z, training=training)
        q = self.bypass * z + (1.0 - self.bypass) * out.quantized
        return self.decode_latent(q), out

    def decode_codes(self, codes):
        """Integer codes [B, positions, S] -> frame [B, 512, 1] (the inference path)."""
        return self.decode_latent(self.quantizer.decode(codes))

    def get_config(self):
        cfg = super().get_config()
        cfg.update(channels=self.channels, bottleneck=self.bottleneck, num_resnets=self.num_resnets,
                   kernel_and_dilation=list(self.kernel_and_dilation), stride=self.stride,
                   block_type=self.block_type, code_dim=self.code_dim, vector_dim=self.vector_dim,
                   quantizer=self.quantizer_config, frame_size=self.frame_size)
        if self.front_end != "conv":
            # Only when not the default: the config hash that .nac files of versions 1-3 carry
            # (codec_stream.model_sha256) stays what it was before the option existed, so those
            # files still decode (from version 4 the model id is not over the config).
            cfg["front_end"] = self.front_end
        return cfg
