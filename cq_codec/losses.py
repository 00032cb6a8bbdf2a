"""Training losses: time-domain RMSE, multi-scale log-mel distance, entropy/bitrate terms.

Follows CMRL/CQ (Zhen et al. 2019/2020): loss = 60 * time RMSE + 10 * multi-scale log-mel RMSE
(512-point FFT, 8/16/32/128 mel bands over 0-8 kHz, mean of the four) + sparsity + tau * entropy.
Optional spectral terms (issue 14: make the error follow the speech): a multi-resolution STFT
loss (spectral convergence + log magnitude) and a per-bin relative (noise-to-signal) loss.
"""

from __future__ import annotations

import functools

import numpy as np
import tensorflow as tf

import constants as C

__all__ = ["time_rmse", "multiscale_mel_loss", "mrstft_loss", "relative_spectral_loss", "mel_relative_spectral_loss", "spectral_loss",
           "SPECTRAL_LOSSES", "bits_per_symbol_target", "MEL_BANDS"]

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


def _power_spectra(x, y, n: int):
    """|STFT|^2 of x and of the error y - x, Hann window n, hop n/4, [B, frames, n/2 + 1]."""
    sx = tf.signal.stft(x, n, n // 4, fft_length=n)
    se = tf.signal.stft(y - x, n, n // 4, fft_length=n)
    return tf.square(tf.abs(sx)), tf.square(tf.abs(se)), sx, se


def mrstft_loss(x, y, fft_sizes=(512, 256, 128)):
    """Multi-resolution STFT loss (seed 003; Yamamoto et al., Parallel WaveGAN): per resolution
    spectral convergence ||Y| - |X||_F / ||X||_F plus the mean |log|Y| - log|X||, averaged over
    the resolutions. [B, N], [B, N] -> scalar. Windows are capped by the frame length N (a
    training example is one 512-sample codec frame)."""
    total = 0.0
    sizes = [n for n in fft_sizes if n <= int(x.shape[-1])]
    for n in sizes:
        mx = tf.abs(tf.signal.stft(x, n, n // 4, fft_length=n))
        my = tf.abs(tf.signal.stft(y, n, n // 4, fft_length=n))
        sc = tf.norm(my - mx) / (tf.norm(mx) + 1e-7)
        mag = tf.reduce_mean(tf.abs(tf.math.log(my + 1e-5) - tf.math.log(mx + 1e-5)))
        total += sc + mag
    return total / len(sizes)


LOW_SPLIT_HZ = 1000.0    # --spectral_low_weight weighs the bins / bands below this
HIGH_SPLIT_HZ = 4000.0   # --spectral_high_weight weighs the bins / bands from this up


def _band_weights(freqs_hz, high_weight: float, low_weight: float = 1.0):
    """Per-frequency weights (numpy, [F]): `low_weight` below LOW_SPLIT_HZ, `high_weight` from
    HIGH_SPLIT_HZ up, 1 between; None when both are 1 (the unweighted mean)."""
    if high_weight == 1.0 and low_weight == 1.0:
        return None
    f = np.asarray(freqs_hz)
    return np.where(f >= HIGH_SPLIT_HZ, high_weight, np.where(f < LOW_SPLIT_HZ, low_weight, 1.0)).astype(np.float32)


def _weighted_mean(v, w):
    """Mean of v ([..., F]) over everything, each frequency weighted by w ([F])."""
    if w is None:
        return tf.reduce_mean(v)
    return tf.reduce_mean(tf.tensordot(v, w, 1)) / float(np.sum(w))


def relative_spectral_loss(x, y, fft_sizes=(512, 128), floor_db: float = -35.0, abs_floor: float = 3e-5,
                           high_weight: float = 1.0, low_weight: float = 1.0):
    """Per-bin relative (noise-to-signal) spectral loss: mean over time-frequency bins of
    log(1 + |E|^2 / (|X|^2 + floor)), E = STFT(y - x), X = STFT(x).

    Each bin's error is weighed against the speech in that bin, so the error is pushed under
    the harmonics and the temporal envelope instead of into the valleys between harmonics and
    the quiet stretches (issue 14's oracle). The floor is `floor_db` below the frame's mean
    power (a bin far below its frame's level is masked anyway) plus `abs_floor` in signal
    power units (the input is normalised by the corpus std, so silence is not chased). log1p
    keeps the loss bounded where the error dwarfs a bin. With `high_weight` != 1 the bins
    from 4 kHz up weigh that much relative to those at 1-4 kHz, with `low_weight` != 1 those
    below 1 kHz. [B, N], [B, N] -> scalar."""
    total = 0.0
    sizes = [n for n in fft_sizes if n <= int(x.shape[-1])]
    for n in sizes:
        px, pe, _, _ = _power_spectra(x, y, n)
        w2 = 3.0 * n / 8.0                 # sum of the squared Hann window: power units -> |STFT|^2
        floor = 10.0 ** (floor_db / 10.0) * tf.reduce_mean(px, axis=-1, keepdims=True) + abs_floor * w2
        w = _band_weights(np.arange(n // 2 + 1) * C.SAMPLE_RATE / n, high_weight, low_weight)
        total += _weighted_mean(tf.math.log1p(pe / (px + floor)), w)
    return total / len(sizes)


@functools.lru_cache(maxsize=None)
def _band_matrix(bands: int, fft: int):
    with tf.init_scope():
        return tf.signal.linear_to_mel_weight_matrix(bands, fft // 2 + 1, C.SAMPLE_RATE, 0.0,
                                                     C.SAMPLE_RATE / 2).numpy()


def mel_relative_spectral_loss(x, y, fft: int = 512, bands: int = 64, floor_db: float = -35.0,
                               abs_floor: float = 3e-5, high_weight: float = 1.0, low_weight: float = 1.0):
    """`relative_spectral_loss` with the bins pooled into `bands` mel bands first: the
    noise-to-signal ratio per mel band and STFT frame. Below ~1 kHz a band is one or two bins
    (harmonics stay resolved); above, bands widen as critical bands do, so 4-8 kHz weighs as
    much as the ear gives it instead of half the bins. With `high_weight` != 1 the bands whose
    peak is at 4 kHz or above weigh that much relative to those peaking at 1-4 kHz, with
    `low_weight` != 1 those peaking below 1 kHz. [B, N], [B, N] -> scalar."""
    px, pe, _, _ = _power_spectra(x, y, fft)
    m = _band_matrix(bands, fft)
    bx, be = tf.tensordot(px, m, 1), tf.tensordot(pe, m, 1)
    floor = (10.0 ** (floor_db / 10.0) * tf.reduce_mean(bx, axis=-1, keepdims=True)
             + abs_floor * 3.0 * fft / 8.0 * tf.reduce_sum(m, axis=0))
    w = _band_weights(np.argmax(m, axis=0) * C.SAMPLE_RATE / fft, high_weight, low_weight)
    return _weighted_mean(tf.math.log1p(be / (bx + floor)), w)


# name -> function of (x, x_hat); "none" adds no term.
SPECTRAL_LOSSES = {"none": None, "mrstft": mrstft_loss, "nsr": relative_spectral_loss,
                   "nsr_mel": mel_relative_spectral_loss}


def spectral_loss(name: str, x, y, high_weight: float = 1.0, low_weight: float = 1.0):
    """The spectral term `name` of SPECTRAL_LOSSES between x and y ([B, N]) -> scalar.
    `high_weight` / `low_weight`: the relative weights of 4-8 kHz / 0-1 kHz against 1-4 kHz in
    the noise-to-signal losses (nsr, nsr_mel)."""
    if name not in SPECTRAL_LOSSES or SPECTRAL_LOSSES[name] is None:
        raise ValueError(f"spectral loss must be one of {sorted(k for k, v in SPECTRAL_LOSSES.items() if v)}; got {name!r}")
    if high_weight != 1.0 or low_weight != 1.0:
        if name not in ("nsr", "nsr_mel"):
            raise ValueError(f"band weights apply to the nsr and nsr_mel losses only; got {name!r}")
        return SPECTRAL_LOSSES[name](x, y, high_weight=high_weight, low_weight=low_weight)
    return SPECTRAL_LOSSES[name](x, y)


def bits_per_symbol_target(target: float, unit: str, symbols_per_frame: int) -> float:
    """A module's entropy target in bits/symbol, from bits/symbol or kbps (1 kbps = 1000 bit/s)."""
    if unit == "bits":
        return float(target)
    if unit == "kbps":
        return float(target) * C.BITS_PER_KBIT / (C.FRAMES_PER_SECOND * symbols_per_frame)
    raise ValueError(f"target unit must be 'bits' or 'kbps'; got {unit!r}")
