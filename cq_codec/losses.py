"""Training losses: time-domain RMSE, multi-scale log-mel distance, entropy/bitrate terms.

Follows CMRL/CQ (Zhen et al. 2019/2020): loss = 60 * time RMSE + 10 * multi-scale log-mel RMSE
(512-point FFT, 8/16/32/128 mel bands over 0-8 kHz, mean of the four) + sparsity + tau * entropy.
"""

from __future__ import annotations

import functools

import tensorflow as tf

import constants as C

__all__ = ["time_rmse", "multiscale_mel_loss", "bits_per_symbol_target", "MEL_BANDS"]

MEL_BANDS = (8, 16, 32, 128)
_FFT = 512


def time_rmse(x, y):
    """Root-mean-square difference over everything: [B, N], [B, N] -> scalar."""
    return tf.sqrt(tf.reduce_mean(tf.square(x - y)) + 1e-12)


@functools.lru_cache(maxsize=None)
def _mel_matrix(bands: int):
    # Cached as numpy: a cached tensor would leak between tf.function graphs.
    with tf.init_scope():
        return tf.signal.linear_to_mel_weight_matrix(bands, _FFT // 2 + 1, C.SAMPLE_RATE, 0.0,
                                                     C.SAMPLE_RATE / 2).numpy()


def multiscale_mel_loss(x, y, frame_length: int = 256, frame_step: int = 128):
    """Mean over 8/16/32/128 mel bands of the RMSE between log-mel spectra of x and y ([B, N])."""
    sx = tf.abs(tf.signal.stft(x, frame_length, frame_step, fft_length=_FFT))
    sy = tf.abs(tf.signal.stft(y, frame_length, frame_step, fft_length=_FFT))
    total = 0.0
    for bands in MEL_BANDS:
        m = _mel_matrix(bands)
        mx = tf.math.log(tf.tensordot(tf.square(sx), m, 1) + 1e-5)
        my = tf.math.log(tf.tensordot(tf.square(sy), m, 1) + 1e-5)
        total += tf.sqrt(tf.reduce_mean(tf.square(mx - my)) + 1e-12)
    return total / len(MEL_BANDS)


def bits_per_symbol_target(target: float, unit: str, symbols_per_frame: int) -> float:
    """A module's entropy target in bits/symbol, from bits/symbol or kbps (1 kbps = 1000 bit/s)."""
    if unit == "bits":
        return float(target)
    if unit == "kbps":
        return float(target) * C.BITS_PER_KBIT / (C.FRAMES_PER_SECOND * symbols_per_frame)
    raise ValueError(f"target unit must be 'bits' or 'kbps'; got {unit!r}")
