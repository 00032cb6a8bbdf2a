"""Adaptive decoder postfilter (numpy): pitch comb, formant shaping, gain control.

The classic CELP postfilter (Chen and Gersho, 1995; G.729 / AMR-WB in spirit), run on the
decoder's synthesised, still pre-emphasised signal before de-emphasis, with the decoder's own
quantized LPC filters, so it costs no bits and needs no look-ahead:

1. long-term (pitch): per sub-frame, the lag T in [PITCH_MIN, PITCH_MAX] whose past segment of
   the decoded signal correlates best with the sub-frame; if the normalised correlation c
   exceeds `pitch_threshold`, x <- (x + g x[n - T]) / (1 + g) with g = `pitch_gain` * c, which
   deepens the valleys between the harmonics where the coding noise is heard;
2. short-term (formant): H(z) = A(z / gamma_num) / A(z / gamma_den), attenuating the formant
   valleys, with one A(z) per hop (the synthesis's mid-hop sub-frame filter)
   (optionally followed by G.729's tilt compensation, `tilt` > 0; off by default: no gain measured);
3. gain control: per sub-frame gain G = rms(input) / rms(output), smoothed sample by sample
   (g[n] = agc * g[n-1] + (1 - agc) * G), so the loudness is kept.

Everything carries state across calls: chunked processing equals whole-signal processing.
Parameters were chosen on the many-voices validation split with the shipped model (docs/DESIGN.md,
"Postfilter"; `scripts/postfilter_study.py`).
"""

from __future__ import annotations

import numpy as np
import scipy.fft
import scipy.signal

import constants as C
from lpc.filters import compiled, lfilter_with_state

__all__ = ["PITCH_MIN", "PITCH_MAX", "Postfilter"]

PITCH_MIN = 32    # 500 Hz
PITCH_MAX = 320   # 50 Hz
_SUB = C.SUBFRAME_SIZE
_HIST = PITCH_MAX + _SUB
_P = C.LPC_ORDER
_MID = C.NUM_SUBFRAMES // 2 - 1   # the sub-frame filter half way between the hops' LSFs
_BLOCK = 64       # sub-frames per block of the pitch search (small temporaries)
_IMP = 20        # impulse-response length of the tilt estimate
_NFFT = 448       # > (PITCH_MAX - PITCH_MIN) + SUB - 1 = 407: the needed lags see no wrap-around


class Postfilter:
    """Streaming postfilter: `__call__(y, a_sub)` -> postfiltered y (float64, same length).

    Args:
      gamma_num, gamma_den: formant weighting, 0 <= gamma_num <= gamma_den <= 1 (equal: off).
      pitch_gain: long-term gain in [0, 1] (0: off).
      pitch_threshold: normalised correlation in [0, 1) below which a sub-frame is left alone.
      agc: gain smoothing in [0, 1).
      tilt: tilt compensation strength in [0, 1] (0: off; G.729 uses 0.8).
    """

    def __init__(self, gamma_num: float = 0.85, gamma_den: float = 0.9, pitch_gain: float = 0.2,
                 pitch_threshold: float = 0.6, agc: float = 0.9, tilt: float = 0.0):
        if not 0.0 <= gamma_num <= gamma_den <= 1.0:
            raise ValueError(f"postfilter needs 0 <= gamma_num <= gamma_den <= 1; got {gamma_num}, {gamma_den}")
        if not 0.0 <= pitch_gain <= 1.0:
            raise ValueError(f"pitch_gain must be in [0, 1]; got {pitch_gain}")
        if not 0.0 <= pitch_threshold < 1.0:
            raise ValueError(f"pitch_threshold must be in [0, 1); got {pitch_threshold}")
        if not 0.0 <= agc < 1.0:
            raise ValueError(f"agc must be in [0, 1); got {agc}")
        if not 0.0 <= tilt <= 1.0:
            raise ValueError(f"tilt must be in [0, 1]; got {tilt}")
        self.gamma_num, self.gamma_den = float(gamma_num), float(gamma_den)
        self.pitch_gain, self.pitch_threshold, self.agc = float(pitch_gain), float(pitch_threshold), float(agc)
        self.tilt = float(tilt)
        self._th = 0.0                    # tilt compensation: last input
        self._hist = np.zeros(_HIST)      # last decoded samples (pitch search)
        self._xh = np.zeros(_P)           # formant filter: last inputs / outputs
        self._yh = np.zeros(_P)
        self._gain = 1.0

    def __call__(self, y, a_sub) -> np.ndarray:
        y = np.asarray(y, np.float64)
        a_sub = np.asarray(a_sub, np.float64)
        if y.ndim != 1 or len(y) != a_sub.shape[0] * C.HOP_SIZE:
            raise ValueError(f"y must be 1-D with {a_sub.shape[0]} * {C.HOP_SIZE} samples; got {y.shape}")
        x = self._pitch(y)
        z = self._formant(x, a_sub[:, _MID])
        if self.tilt > 0.0:
            z = self._tilt(z, a_sub[:, _MID])
        return self._gain_control(x, z)

    def _tilt(self, z: np.ndarray, a_hop: np.ndarray) -> np.ndarray:
        """Tilt compensation (G.729's): per hop, 1 + tilt * k1 z^-1 with k1 = -r_h(1) / r_h(0) of
        the formant filter's impulse response h (20 samples), applied only where k1 < 0 (the
        formant stage tilted the spectrum down), input history carried across hops and calls."""
        k = np.arange(_P + 1)
        imp = np.zeros(_IMP)
        imp[0] = 1.0
        mu = np.empty(len(a_hop))
        for t in range(len(a_hop)):
            h = scipy.signal.lfilter(a_hop[t] * self.gamma_num ** k, a_hop[t] * self.gamma_den ** k, imp)
            k1 = -np.dot(h[:-1], h[1:]) / max(np.dot(h, h), 1e-30)
            mu[t] = self.tilt * k1 if k1 < 0 else 0.0
        prev = np.concatenate([[self._th], z[:-1]])
        self._th = float(z[-1]) if len(z) else self._th
        return z + np.repeat(mu, C.HOP_SIZE)[: len(z)] * prev

    def _formant(self, x: np.ndarray, a_hop: np.ndarray) -> np.ndarray:
        """A(z / gamma_num) / A(z / gamma_den), one filter per hop (the mid-hop interpolation:
        one scipy call per hop), direct-form history carried across hops and calls."""
        if self.gamma_num == self.gamma_den:
            return x
        k = np.arange(_P + 1)
        xin = np.concatenate([self._xh, x])
        bs, ds = a_hop * self.gamma_num ** k, a_hop * self.gamma_den ** k
        if compiled():
            from lpc import _kernels
            out = _kernels.pole_zero(xin, self._yh, np.ascontiguousarray(bs), np.ascontiguousarray(ds), C.HOP_SIZE)
            self._xh, self._yh = xin[-_P:].copy(), out[-_P:].copy()
            return out[_P:]
        out = np.concatenate([self._yh, np.zeros(len(x))])
        for t in range(len(a_hop)):
            b, d = bs[t], ds[t]
            s = t * C.HOP_SIZE                                    # x[s] is xin[s + P]
            # Transposed-DF-II state reproducing the direct-form history, what
            # scipy.signal.lfiltic computes (its Python loops made the postfilter 4x slower):
            # zi[m] = sum_j b[m+1+j] x[n-1-j] - d[m+1+j] y[n-1-j]
            zi = (np.correlate(b[1:], xin[s:s + _P][::-1], mode="full")[_P - 1:]
                  - np.correlate(d[1:], out[s:s + _P][::-1], mode="full")[_P - 1:])
            out[s + _P:s + _P + C.HOP_SIZE] = lfilter_with_state(b, d, xin[s + _P:s + _P + C.HOP_SIZE], zi)[0]
        self._xh, self._yh = xin[-_P:].copy(), out[-_P:].copy()
        return out[_P:]

    def _pitch(self, y: np.ndarray) -> np.ndarray:
        buf = np.concatenate([self._hist, y])
        self._hist = buf[-_HIST:].copy()
        n_sub = len(y) // _SUB
        if self.pitch_gain == 0.0 or n_sub == 0:
            return y
        # Sub-frame s starts at buf[_HIST + s SUB]; candidate i (lag PITCH_MAX - i) is
        # buf[SUB + s SUB + i : + SUB] (first_s = start_s - PITCH_MAX = SUB + s SUB), so the
        # candidates of sub-frame s span buf[SUB + s SUB : + span]: strided views, no copies.
        # Blocks of _BLOCK sub-frames (each row's arithmetic does not depend on the block): the
        # temporaries stay small, in cache and in malloc's heap (a whole chunk's, ~2 MB each, were
        # fresh mmaps, and their page faults cost as much as the arithmetic).
        out = np.empty(n_sub * _SUB)
        for s0 in range(0, n_sub, _BLOCK):
            s1 = min(n_sub, s0 + _BLOCK)
            out[s0 * _SUB:s1 * _SUB] = self._pitch_block(buf, s0, s1).reshape(-1)
        return np.concatenate([out, y[n_sub * _SUB:]])

    def _pitch_block(self, buf: np.ndarray, s0: int, s1: int) -> np.ndarray:
        """Sub-frames s0..s1 - 1 of the pitch postfilter -> [s1 - s0, SUB]."""
        n = s1 - s0
        n_lags = PITCH_MAX - PITCH_MIN + 1
        span = n_lags + _SUB - 1
        segs = np.lib.stride_tricks.sliding_window_view(buf[_SUB * (s0 + 1):], span)[::_SUB][:n]   # [n, span]
        cur = buf[_HIST + s0 * _SUB:_HIST + s1 * _SUB].reshape(n, _SUB)                           # [n, SUB]
        # cross-correlations by FFT, in float32 (only compared with each other and a threshold);
        # zero-padded here, not by rfft's n= (its padding copy cost as much as the transform)
        seg32, cur32 = np.zeros((n, _NFFT), np.float32), np.zeros((n, _NFFT), np.float32)
        seg32[:, :span], cur32[:, :_SUB] = segs, cur
        spec = scipy.fft.rfft(seg32) * np.conj(scipy.fft.rfft(cur32))
        num = scipy.fft.irfft(spec, _NFFT)[:, :n_lags].astype(np.float64)
        # candidate energies from each segment's own running sum (chunking-exact)
        # (accumulated in the transposed layout [span, n]: the same sequential sums as np.cumsum
        # along each row, which numpy runs one row at a time)
        run = np.empty((span + 1, n))
        run[0] = 0.0
        np.square(segs.T, out=run[1:])
        np.cumsum(run[1:], axis=0, out=run[1:])
        den = np.subtract(run[_SUB:], run[:-_SUB]).T                          # [n, n_lags]
        den *= np.sum(np.square(cur), axis=1)[:, None]
        corr = np.divide(num, np.sqrt(np.maximum(den, 1e-30, out=den), out=den), out=num)
        best = n_lags - 1 - np.argmax(corr[:, ::-1], axis=1)               # ties: shortest lag
        c = corr[np.arange(n), best]
        g = np.where(c > self.pitch_threshold, self.pitch_gain * np.minimum(c, 1.0), 0.0)
        past = np.lib.stride_tricks.sliding_window_view(buf, _SUB)[_SUB * np.arange(s0 + 1, s1 + 1) + best]
        return (cur + g[:, None] * past) / (1.0 + g[:, None])

    def _gain_control(self, ref: np.ndarray, z: np.ndarray) -> np.ndarray:
        n_sub = len(z) // _SUB
        e_ref = np.sum(ref.reshape(n_sub, _SUB) ** 2, axis=1)
        e_out = np.sum(z.reshape(n_sub, _SUB) ** 2, axis=1)
        target = np.where(e_out > 0, np.sqrt(e_ref / np.maximum(e_out, 1e-30)), 1.0)
        gains, _ = scipy.signal.lfilter([1.0 - self.agc], [1.0, -self.agc], np.repeat(target, _SUB),
                                        zi=[self.agc * self._gain])
        self._gain = float(gains[-1])
        return z * gains
