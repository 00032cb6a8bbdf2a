"""LPC analysis: window, autocorrelation, lag window, Levinson-Durbin, per-hop LSFs (numpy).

Autocorrelation method with a Gaussian lag window and white-noise correction as in AMR-WB
(3GPP TS 26.190, 5.2.1): r[k] *= exp(-(2 pi f0 k / fs)^2 / 2), r[0] *= 1.0001.
"""

import functools

import numpy as np

import constants as C
from lpc._validate import as_float_array, check_shape_tail
from lpc.lsf import lpc_to_lsf, lsf_to_lpc

__all__ = ["analysis_window", "lag_window", "autocorrelation", "levinson", "analyze",
           "subframe_lpc", "lpc_from_frames"]

_P = C.LPC_ORDER


@functools.lru_cache(maxsize=None)
def _analysis_window():
    rise = C.LPC_WINDOW_RISE
    n = np.arange(rise)
    half = 0.5 - 0.5 * np.cos(np.pi * (n + 0.5) / rise)  # rising half of a Hann window
    w = np.ones(C.LPC_WINDOW)
    w[:rise] = half
    w[-rise:] = half[::-1]
    w.setflags(write=False)
    return w


def analysis_window():
    """[LPC_WINDOW] LPC analysis window: rising half-Hann (LPC_WINDOW_RISE), flat, falling
    half-Hann (LPC_WINDOW_RISE)."""
    return _analysis_window().copy()


def lag_window(order=_P):
    """[order + 1] Gaussian lag window (bandwidth LAG_WINDOW_BANDWIDTH_HZ), with the white-noise
    correction WHITE_NOISE_CORRECTION folded into element 0."""
    if int(order) != order or order < 1:
        raise ValueError(f"order must be a positive integer, got {order!r}")
    k = np.arange(int(order) + 1)
    w = np.exp(-0.5 * (2.0 * np.pi * C.LAG_WINDOW_BANDWIDTH_HZ * k / C.SAMPLE_RATE) ** 2)
    w[0] = C.WHITE_NOISE_CORRECTION
    return w


def autocorrelation(frame, order=_P):
    """Biased autocorrelation r[k] = sum_n frame[n] frame[n + k], k = 0..order.

    Args:
      frame: [..., L] (already windowed) frames, L > order.
    Returns:
      [..., order + 1] float64.
    """
    frame = as_float_array(frame, "frame")
    if int(order) != order or order < 1 or frame.shape[-1] <= order:
        raise ValueError(f"order must be an integer in [1, L), got {order!r} for L = "
                         f"{frame.shape[-1]}")
    length = frame.shape[-1]
    return np.stack([np.einsum("...n,...n->...", frame[..., k:], frame[..., :length - k])
                     for k in range(int(order) + 1)], axis=-1)


def levinson(r):
    """Levinson-Durbin recursion, vectorised over leading axes.

    Solves the normal equations for A(z) = 1 + sum_k a_k z^-k from autocorrelations r. Frames
    with r[0] <= 0 (silence) get the flat filter a = [1, 0, ..., 0] and error 0.

    Args:
      r: [..., p + 1] autocorrelation.
    Returns:
      (a [..., p + 1], reflection [..., p], error [...]): coefficients, reflection coefficients
      (a[i][i] of step i) and the final prediction error power.
    """
    r = as_float_array(r, "r")
    if r.shape[-1] < 2:
        raise ValueError(f"r must have shape [..., p + 1] with p >= 1, got {r.shape}")
    p = r.shape[-1] - 1
    silent = ~(r[..., 0] > 0.0)
    r = np.where(silent[..., None], np.eye(1, p + 1)[0], r)
    a = np.zeros(r.shape)
    a[..., 0] = 1.0
    refl = np.zeros(r.shape[:-1] + (p,))
    err = r[..., 0].copy()
    tiny = np.finfo(np.float64).tiny
    for i in range(1, p + 1):
        acc = np.einsum("...j,...j->...", a[..., :i], r[..., i:0:-1])
        k = -acc / np.maximum(err, tiny)
        refl[..., i - 1] = k
        a[..., 1:i + 1] = a[..., 1:i + 1] + k[..., None] * a[..., i - 1::-1][..., :i]
        err = err * (1.0 - k * k)
    return a, refl, np.where(silent, 0.0, err)


def lpc_from_frames(frames, use_lag_window=True):
    """LPC of frames of LPC_WINDOW samples: window, autocorrelation, lag window, Levinson.

    Args:
      frames: [..., LPC_WINDOW] unwindowed samples.
      use_lag_window: apply `lag_window` (and white-noise correction) before Levinson.
    Returns:
      a [..., LPC_ORDER + 1].
    """
    frames = as_float_array(frames, "frames")
    check_shape_tail(frames, (C.LPC_WINDOW,), "frames")
    r = autocorrelation(frames * _analysis_window(), _P)
    if use_lag_window:
        r = r * lag_window(_P)
    return levinson(r)[0]


def analyze(x, num_hops=None):
    """One LSF vector per hop.

    Hop t's window covers samples [t * HOP + HOP / 2 - LPC_WINDOW / 2, ... + LPC_WINDOW), i.e.
    it is centred on the centre of hop t; samples outside the signal are zeros.

    Args:
      x: [N] (high-passed, pre-emphasised) signal.
      num_hops: T, defaults to ceil(N / HOP_SIZE).
    Returns:
      lsf [T, LPC_ORDER] float64, increasing, repaired to LSF_MIN_GAP.
    """
    x = as_float_array(x, "x", 1, 1)
    if num_hops is None:
        num_hops = -(-len(x) // C.HOP_SIZE)
    if int(num_hops) != num_hops or num_hops < 1:
        raise ValueError(f"num_hops must be a positive integer, got {num_hops!r}")
    num_hops = int(num_hops)
    left = C.LPC_WINDOW // 2 - C.HOP_SIZE // 2
    total = (num_hops - 1) * C.HOP_SIZE + C.LPC_WINDOW
    padded = np.zeros(total)
    n = min(len(x), total - left)
    padded[left:left + n] = x[:n]
    frames = np.lib.stride_tricks.sliding_window_view(padded, C.LPC_WINDOW)[::C.HOP_SIZE]
    return lpc_to_lsf(lpc_from_frames(frames))


def subframe_lpc(lsf, lsf_prev=None):
    """Per-sub-frame filters with LSFs interpolated from the previous hop's to this hop's.

    Sub-frame j of hop t uses lsf[t-1] + (j + 1) / NUM_SUBFRAMES * (lsf[t] - lsf[t-1]), where
    lsf[-1] is `lsf_prev` (or lsf[0] when None).

    Args:
      lsf: [T, LPC_ORDER].
      lsf_prev: [LPC_ORDER] or None.
    Returns:
      a_sub [T, NUM_SUBFRAMES, LPC_ORDER + 1].
    """
    lsf = as_float_array(lsf, "lsf", 2, 2)
    check_shape_tail(lsf, (_P,), "lsf")
    if lsf.shape[0] < 1:
        raise ValueError("lsf must have at least one hop")
    if lsf_prev is None:
        prev0 = lsf[:1]
    else:
        prev0 = as_float_array(lsf_prev, "lsf_prev", 1, 1)
        if prev0.shape != (_P,):
            raise ValueError(f"lsf_prev must have shape [{_P}], got {prev0.shape}")
        prev0 = prev0[None]
    prev = np.concatenate([prev0, lsf[:-1]], axis=0)
    w = (np.arange(C.NUM_SUBFRAMES) + 1.0) / C.NUM_SUBFRAMES
    interp = prev[:, None, :] + w[None, :, None] * (lsf - prev)[:, None, :]
    return lsf_to_lpc(interp)
