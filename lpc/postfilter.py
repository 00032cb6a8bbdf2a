"""Adaptive decoder postfilter (numpy): pitch comb, formant shaping, gain control.

The classic CELP postfilter (Chen and Gersho, 1995; G.729 / AMR-WB in spirit), run on the
decoder's synthesised, still pre-emphasised signal before de-emphasis, with the decoder's own
quantized LPC filters, so it costs no bits and needs no look-ahead:

1. long-term (pitch): per sub-frame, the lag T in [PITCH_MIN, PITCH_MAX] whose past segment of
   the decoded signal correlates best with the sub-frame; if the normalised correlation c
   exceeds `pitch_threshold`, x <- (x + g x[n - T]) / (1 + g) with g = `pitch_gain` * c, which
   deepens the valleys between the harmonics where the coding noise is heard;
2. short-term (formant): H(z) = A(z / gamma_num) / A(z / gamma_den), attenuating the formant
   valleys (the same sub-frame filters as the synthesis);
3. gain control: per sub-frame gain G = rms(input) / rms(output), smoothed sample by sample
   (g[n] = agc * g[n-1] + (1 - agc) * G), so the loudness is kept.

Everything carries state across calls: chunked processing equals whole-signal processing.
Parameters were chosen on the demo corpus's validation split (docs/DESIGN.md, "Postfilter").
"""

from __future__ import annotations

import numpy as np
import scipy.signal

import constants as C
from lpc.filters import residual, synthesis

__all__ = ["PITCH_MIN", "PITCH_MAX", "Postfilter"]

PITCH_MIN = 32    # 500 Hz
PITCH_MAX = 320   # 50 Hz
_SUB = C.SUBFRAME_SIZE
_HIST = PITCH_MAX + _SUB


class Postfilter:
    """Streaming postfilter: `__call__(y, a_sub)` -> postfiltered y (float64, same length).

    Args:
      gamma_num, gamma_den: formant weighting, 0 <= gamma_num <= gamma_den <= 1 (equal: off).
      pitch_gain: long-term gain in [0, 1] (0: off).
      pitch_threshold: normalised correlation in [0, 1) below which a sub-frame is left alone.
      agc: gain smoothing in [0, 1).
    """

    def __init__(self, gamma_num: float = 0.6, gamma_den: float = 0.8, pitch_gain: float = 0.5,
                 pitch_threshold: float = 0.5, agc: float = 0.9):
        if not 0.0 <= gamma_num <= gamma_den <= 1.0:
            raise ValueError(f"postfilter needs 0 <= gamma_num <= gamma_den <= 1; got {gamma_num}, {gamma_den}")
        if not 0.0 <= pitch_gain <= 1.0:
            raise ValueError(f"pitch_gain must be in [0, 1]; got {pitch_gain}")
        if not 0.0 <= pitch_threshold < 1.0:
            raise ValueError(f"pitch_threshold must be in [0, 1); got {pitch_threshold}")
        if not 0.0 <= agc < 1.0:
            raise ValueError(f"agc must be in [0, 1); got {agc}")
        self.gamma_num, self.gamma_den = float(gamma_num), float(gamma_den)
        self.pitch_gain, self.pitch_threshold, self.agc = float(pitch_gain), float(pitch_threshold), float(agc)
        self._hist = np.zeros(_HIST)      # last decoded samples (pitch search)
        self._fir = self._iir = None      # formant filter states
        self._gain = 1.0

    def __call__(self, y, a_sub) -> np.ndarray:
        y = np.asarray(y, np.float64)
        a_sub = np.asarray(a_sub, np.float64)
        if y.ndim != 1 or len(y) != a_sub.shape[0] * C.HOP_SIZE:
            raise ValueError(f"y must be 1-D with {a_sub.shape[0]} * {C.HOP_SIZE} samples; got {y.shape}")
        x = self._pitch(y)
        k = np.arange(C.LPC_ORDER + 1)
        r, self._fir = residual(x, a_sub * self.gamma_num ** k, self._fir)
        z, self._iir = synthesis(r, a_sub * self.gamma_den ** k, self._iir)
        return self._gain_control(x, z)

    def _pitch(self, y: np.ndarray) -> np.ndarray:
        buf = np.concatenate([self._hist, y])
        self._hist = buf[-_HIST:].copy()
        if self.pitch_gain == 0.0:
            return y
        windows = np.lib.stride_tricks.sliding_window_view(buf, _SUB)
        lags = np.arange(PITCH_MIN, PITCH_MAX + 1)
        out = y.copy()
        for s in range(len(y) // _SUB):
            start = _HIST + s * _SUB
            cur = buf[start:start + _SUB]
            past = windows[start - lags]                                  # [lags, SUB]
            energy = np.einsum("ij,ij->i", past, past) * np.dot(cur, cur)
            corr = (past @ cur) / np.sqrt(np.maximum(energy, 1e-30))
            j = int(np.argmax(corr))
            if corr[j] > self.pitch_threshold:
                g = self.pitch_gain * min(float(corr[j]), 1.0)
                out[s * _SUB:(s + 1) * _SUB] = (cur + g * past[j]) / (1.0 + g)
        return out

    def _gain_control(self, ref: np.ndarray, z: np.ndarray) -> np.ndarray:
        n_sub = len(z) // _SUB
        e_ref = np.sum(ref.reshape(n_sub, _SUB) ** 2, axis=1)
        e_out = np.sum(z.reshape(n_sub, _SUB) ** 2, axis=1)
        target = np.where(e_out > 0, np.sqrt(e_ref / np.maximum(e_out, 1e-30)), 1.0)
        gains, _ = scipy.signal.lfilter([1.0 - self.agc], [1.0, -self.agc], np.repeat(target, _SUB),
                                        zi=[self.agc * self._gain])
        self._gain = float(gains[-1])
        return z * gains
