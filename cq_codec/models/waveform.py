"""The end-to-end waveform codec (seed 003's NeuralWave-RVQ, seed 001's adaptive-bitrate RVQ codec).

A strided convolutional encoder turns 16 kHz audio into latent frames (one per `hop` samples,
hop = product of the strides, 64..320; the seed's default 128), a residual vector quantizer
(`ResidualVectorQuantizer`: quantizer dropout, k-means init, EMA codebooks, dead-code restarts)
codes each latent frame with up to N codebooks, and a mirrored decoder (sub-pixel upsampling)
rebuilds the waveform. No LPC. Because the RVQ was trained with quantizer dropout, one file of
weights serves every codebook count 1..N (bitrate = frames/s x sum of log2 K over the codebooks used).

Every convolution is causal (zeros on the left, no look-ahead), so the codec streams: the
encoder's latent frame t depends only on samples < (t + 1) * hop, the decoder's samples of frame
t only on frames <= t, each within a finite receptive field. A stream processes a chunk with the
last `encoder_context` samples (or `decoder_context` frames) before it prepended, which covers
that field, and keeps only the outputs past the prepended part: they equal the whole-file ones
up to float rounding (the convolutions run on other lengths). See cq_codec/waveform_api.py.

Shapes: audio `[B, N]` (N a multiple of hop; `pad_to_hop` pads), latents `[B, T, D]` with
T = N / hop, codes `[B, T, n]` (n = codebooks used).
"""

from __future__ import annotations

import math

import keras
import numpy as np
import tensorflow as tf
from keras import layers, ops

import constants as C
from cq_codec.bitstream import entropy
from cq_codec.nn.blocks import BLOCK_TYPES, CausalConv1D, CausalResidualUnit
from cq_codec.quantizers.rvq import ResidualVectorQuantizer

__all__ = ["CausalConv1D", "CausalResidualUnit", "CausalSubPixelUpsample", "WaveformCodec",
           "multi_resolution_stft_loss", "pad_to_hop", "MIN_HOP", "MAX_HOP",
           "fit_entropy_tables", "TABLES_FORMAT"]

_PKG = "cq_codec"
MIN_HOP, MAX_HOP = 64, 320


@keras.saving.register_keras_serializable(package=_PKG)
class CausalSubPixelUpsample(layers.Layer):
    """Causal sub-pixel upsampling: a causal conv makes factor * out channels, interleaved into
    time: `[B, T, C] -> [B, T * factor, out]` (the `SubPixelUpsample1D` of cq_codec.nn, causal)."""

    def __init__(self, factor: int, out_channels: int, kernel_size: int = 3, **kwargs):
        super().__init__(**kwargs)
        if factor < 1 or out_channels < 1 or kernel_size < 1:
            raise ValueError(f"CausalSubPixelUpsample: factor, out_channels, kernel_size must be >= 1; got "
                             f"{factor}, {out_channels}, {kernel_size}")
        self.factor, self.out_channels, self.kernel_size = int(factor), int(out_channels), int(kernel_size)

    def build(self, input_shape):
        self.conv = CausalConv1D(self.factor * self.out_channels, self.kernel_size)
        self.conv.build(input_shape)

    @property
    def history(self) -> int:
        return self.kernel_size - 1

    def call(self, x):
        h = self.conv(x)
        b, t = ops.shape(h)[0], ops.shape(h)[1]
        return ops.reshape(h, (b, t * self.factor, self.out_channels))

    def compute_output_shape(self, input_shape):
        t = None if input_shape[1] is None else input_shape[1] * self.factor
        return (input_shape[0], t, self.out_channels)

    def get_config(self):
        cfg = super().get_config()
        cfg.update(factor=self.factor, out_channels=self.out_channels, kernel_size=self.kernel_size)
        return cfg


def pad_to_hop(x: np.ndarray, hop: int) -> np.ndarray:
    """[..., N] -> [..., ceil(N / hop) * hop] (zeros appended)."""
    x = np.asarray(x)
    n = x.shape[-1]
    target = max(1, math.ceil(n / hop)) * hop
    if target == n:
        return x
    pad = [(0, 0)] * (x.ndim - 1) + [(0, target - n)]
    return np.pad(x, pad)


@keras.saving.register_keras_serializable(package=_PKG)
class WaveformCodec(keras.Model):
    """Causal conv encoder -> RVQ -> causal conv decoder on 16 kHz audio.

    Args:
      strides: downsampling per encoder level (product = hop, MIN_HOP..MAX_HOP). The first level
        is a patch front end when `patch` is set (the first stride's samples reshaped into
        channels: no layer runs at the sample rate), else a causal conv at the sample rate.
      channels: channels per level, one more than strides ([sample-rate level, after stride 1, ...]);
        an int c means [c, 2c, 4c, ...] capped at 8c.
      latent_dim: D of the latent frames.
      num_units: residual units per level (dilations 1, 3, 9, ...).
      block_type / kernel_size: the residual units (`CausalResidualUnit`).
      quantizer: `ResidualVectorQuantizer` config (num_stages, codebook_sizes, stage_dims, ...).
      entropy_tables: fitted code statistics for the `.nac` coder (set after training).
    """

    def __init__(self, strides=(2, 4, 4, 4), channels=32, latent_dim=64, num_units=2, block_type="bottleneck",
                 kernel_size=7, patch=False, quantizer=None, entropy_tables=None, **kwargs):
        super().__init__(**kwargs)
        strides = [int(s) for s in strides]
        if not strides or min(strides) < 1:
            raise ValueError(f"strides must be a non-empty list of positive ints; got {strides}")
        hop = int(np.prod(strides))
        if not MIN_HOP <= hop <= MAX_HOP:
            raise ValueError(f"the downsampling factor (product of strides {strides}) is {hop}; it must be "
                             f"in {MIN_HOP}..{MAX_HOP}")
        if isinstance(channels, int):
            channels = [min(channels * 2 ** i, channels * 8) for i in range(len(strides) + 1)]
        channels = [int(c) for c in channels]
        if len(channels) != len(strides) + 1 or min(channels) < 1:
            raise ValueError(f"channels needs {len(strides) + 1} positive entries (one per level + the "
                             f"latent level); got {channels}")
        if block_type not in BLOCK_TYPES:
            raise ValueError(f"unknown block_type {block_type!r}; valid: {', '.join(BLOCK_TYPES)}")
        self.strides, self.channels, self.hop = strides, channels, hop
        self.latent_dim, self.num_units = int(latent_dim), int(num_units)
        self.block_type, self.kernel_size, self.patch = block_type, int(kernel_size), bool(patch)
        self.quantizer_config = dict(quantizer or {})
        self.quantizer = ResidualVectorQuantizer(**self.quantizer_config, name="rvq")
        self.entropy_tables = entropy_tables
        k = self.kernel_size

        def units(c, prefix):
            return [CausalResidualUnit(c, max(1, c // 2), k, 3 ** j, block_type, name=f"{prefix}_u{j}")
                    for j in range(self.num_units)]

        enc = []
        first = strides[0]
        if self.patch:   # level 0 runs at sample rate / first stride on patches of `first` samples
            enc.append(CausalConv1D(channels[1], k, name="enc_in"))
            rest = list(enumerate(strides[1:], start=1))
        else:
            enc.append(CausalConv1D(channels[0], k, name="enc_in"))
            rest = list(enumerate(strides))
        for i, s in rest:
            enc += units(channels[i], f"enc{i}")
            enc.append(CausalConv1D(channels[i + 1], 2 * s, stride=s, name=f"enc{i}_down"))
        enc += units(channels[-1], "enc_last")
        enc.append(CausalConv1D(self.latent_dim, 3, name="enc_out"))
        dec = [CausalConv1D(channels[-1], k, name="dec_in")] + units(channels[-1], "dec_first")
        for i, s in reversed(rest):
            dec.append(CausalSubPixelUpsample(s, channels[i], 3, name=f"dec{i}_up"))
            dec += units(channels[i], f"dec{i}")
        dec.append(CausalConv1D(first if self.patch else 1, k, name="dec_out"))
        self.encoder_layers, self.decoder_layers = enc, dec

    # ------------------------------------------------------------------ structure
    @property
    def frames_per_second(self) -> float:
        return 16000.0 / self.hop

    @property
    def num_codebooks(self) -> int:
        return self.quantizer.num_stages

    @property
    def codebook_sizes(self) -> list[int]:
        return list(self.quantizer.codebook_sizes)

    def nominal_kbps(self, n: int) -> float:
        """Fixed-length bitrate with the first n codebooks (frames/s x sum log2 K)."""
        return self.frames_per_second * sum(math.log2(k) for k in self.codebook_sizes[:n]) / 1000.0

    def _in_rate(self) -> int:
        return self.strides[0] if self.patch else 1

    @property
    def encoder_context(self) -> int:
        """Samples of history (a multiple of hop) that make a chunk's codes equal the whole file's."""
        steps, per = 0, self._in_rate()   # per = samples per step at the current layer's rate
        for layer in self.encoder_layers:
            steps_here = layer.history
            steps += steps_here * per
            if isinstance(layer, CausalConv1D):
                per *= layer.stride
        return int(math.ceil(steps / self.hop) * self.hop)

    @property
    def decoder_context(self) -> int:
        """Latent frames of history that make a chunk's samples equal the whole file's."""
        frames, per = 0.0, 1   # per = steps per latent frame at the current layer's rate
        for layer in self.decoder_layers:
            frames += layer.history / per
            if isinstance(layer, CausalSubPixelUpsample):
                per *= layer.factor
        return int(math.ceil(frames))

    def build(self, input_shape=None):
        shape = (None, None, self.strides[0] if self.patch else 1)
        for layer in self.encoder_layers:
            layer.build(shape)
            shape = layer.compute_output_shape(shape)
        self.quantizer.build((None, None, self.latent_dim))
        shape = (None, None, self.latent_dim)
        for layer in self.decoder_layers:
            layer.build(shape)
            shape = layer.compute_output_shape(shape)
        self.built = True

    # ------------------------------------------------------------------ paths
    def encode_latent(self, x):
        """Audio [B, N] (N a multiple of hop) -> latents [B, N / hop, D]."""
        b = ops.shape(x)[0]
        h = ops.reshape(x, (b, -1, self._in_rate()))
        for layer in self.encoder_layers:
            h = layer(h)
        return h

    def decode_latent(self, q):
        """Latents [B, T, D] -> audio [B, T * hop]."""
        h = q
        for layer in self.decoder_layers:
            h = layer(h)
        return ops.reshape(h, (ops.shape(h)[0], -1))

    def call(self, x, training=None, num_stages=None):
        """Audio [B, N] -> (reconstruction [B, N], QuantizerOutput)."""
        z = self.encode_latent(x)
        out = self.quantizer(z, training=training, num_stages=num_stages)
        return self.decode_latent(out.quantized), out

    def _traced(self, kind: str, n: int):
        """A traced `tf.function` per (kind, codebooks): eager Keras calls cost several times the
        convolutions on this model size."""
        fns = self.__dict__.setdefault("_wave_fns", {})
        if (kind, n) not in fns:
            if kind == "encode":
                fns[kind, n] = tf.function(
                    lambda x: self.quantizer(self.encode_latent(x), training=False, num_stages=n).codes,
                    input_signature=[tf.TensorSpec([None, None], tf.float32)], reduce_retracing=True)
            elif kind == "latents":
                fns[kind, n] = tf.function(lambda c: self.quantizer.decode(c),
                                           input_signature=[tf.TensorSpec([None, None, n], tf.int32)])
            else:
                fns[kind, n] = tf.function(self.decode_latent,
                                           input_signature=[tf.TensorSpec([None, None, self.latent_dim], tf.float32)])
        return fns[kind, n]

    def encode_codes(self, x, num_stages=None):
        """Audio [B, N] -> int32 codes [B, N / hop, n] (hard, inference)."""
        n = self.quantizer.num_active_stages if num_stages is None else int(num_stages)
        return self._traced("encode", n)(tf.convert_to_tensor(x, tf.float32))

    def codes_to_latents(self, codes):
        """Codes [B, T, n] -> quantized latents [B, T, D]."""
        codes = tf.convert_to_tensor(codes, tf.int32)
        return self._traced("latents", int(codes.shape[-1]))(codes)

    def latents_to_audio(self, q):
        """Quantized latents [B, T, D] -> audio [B, T * hop] (traced `decode_latent`)."""
        return self._traced("decode", 0)(tf.convert_to_tensor(q, tf.float32))

    def decode_codes(self, codes):
        """Codes [B, T, n] (the first n codebooks) -> audio [B, T * hop]."""
        return self.latents_to_audio(self.codes_to_latents(codes))

    def get_config(self):
        cfg = super().get_config()
        cfg.update(strides=list(self.strides), channels=list(self.channels), latent_dim=self.latent_dim,
                   num_units=self.num_units, block_type=self.block_type, kernel_size=self.kernel_size,
                   patch=self.patch, quantizer=self.quantizer_config, entropy_tables=self.entropy_tables)
        return cfg


# ---------------------------------------------------------------------- losses
STFT_RESOLUTIONS = ((256, 64), (512, 128), (1024, 256), (2048, 512))


def multi_resolution_stft_loss(x, y, resolutions=STFT_RESOLUTIONS):
    """Multi-resolution STFT loss (Yamamoto et al., Parallel WaveGAN 2020): mean over resolutions
    (frame length, hop; Hann windows) of spectral convergence ||S_x - S_y||_F / ||S_x||_F plus
    the mean absolute log-magnitude difference. x (reference), y: [B, N] -> scalar."""
    total = 0.0
    for n, hop in resolutions:
        sx = tf.abs(tf.signal.stft(x, n, hop, pad_end=True))
        sy = tf.abs(tf.signal.stft(y, n, hop, pad_end=True))
        sc = tf.norm(sx - sy) / (tf.norm(sx) + 1e-7)
        mag = tf.reduce_mean(tf.abs(tf.math.log(sx + 1e-5) - tf.math.log(sy + 1e-5)))
        total += sc + mag
    return total / len(resolutions)


# ------------------------------------------------------------------ entropy tables
TABLES_FORMAT = "cq_codec.waveform_entropy_tables"


def fit_entropy_tables(model, wavs, max_seconds: float = 600.0) -> dict:
    """Encodes up to max_seconds of 16 kHz signals (float, or int16) with all N codebooks and fits
    one categorical table per codebook; stores them with the measured bits per latent frame of each
    codebook in `model.entropy_tables` (saved inside the .keras file). Returns the tables."""
    codes, total = [], 0
    for w in wavs:
        w = np.asarray(w)
        x = w.astype(np.float32) / (32768.0 if w.dtype == np.int16 else 1.0)
        if x.ndim != 1 or x.size == 0:
            raise ValueError("fit_entropy_tables needs non-empty 1-D 16 kHz signals")
        codes.append(np.asarray(model.encode_codes(pad_to_hop(x, model.hop)[None])[0]))
        total += x.size
        if total >= max_seconds * C.SAMPLE_RATE:
            break
    if not codes:
        raise ValueError("fit_entropy_tables needs at least one signal")
    codes = np.concatenate(codes)
    table = entropy.CategoricalModel.fit(codes, model.codebook_sizes)
    bits = table.symbol_bits(codes).mean(axis=0)
    model.entropy_tables = {"format": TABLES_FORMAT, "version": 1, "model": table.to_dict(),
                            "bits_per_frame": [float(b) for b in bits], "fitted_frames": int(len(codes))}
    return model.entropy_tables
