"""Open-loop long-term (pitch) prediction of the LPC residual, with coded lag and gain (numpy).

Adaptive predictive coding in the manner of Atal and Schroeder (1970): per 120-sample sub-frame
the encoder finds the lag T in [MIN_LAG, MAX_LAG] and the gain b whose delayed residual best
predicts the sub-frame, quantizes b on a uniform grid, and hands the cascade the pitch residual
e2[n] = e[n] - b e[n - T] (from the *original* residual: open loop). The decoder inverts it with
the pitch synthesis filter y[n] = e2^[n] + b y[n - T] on its decoded residual, before 1/A(z).
The cascade's coding noise therefore leaves the decoder shaped by 1/(1 - b z^-T) as well as by
1/A(z): it piles up under the harmonics, where the speech masks it, instead of filling the
valleys between them (issue 14: error following the spectrogram bin by bin was the oracle's
best case), and the cascade no longer spends bits on the pitch pulses. Unvoiced sub-frames
(normalised correlation below `threshold`) get b = 0 and repeat the previous lag code, which a
context model codes in a fraction of a bit.

Codes per sub-frame: [lag - MIN_LAG, gain index]. Both directions carry MAX_LAG samples of
history across calls, so chunked processing equals whole-signal processing; the synthesis is
one float64 multiply-add per sample in a fixed order, so it is bit-exact for any split.
"""

from __future__ import annotations

import numpy as np

import constants as C
from lpc.filters import compiled

__all__ = ["MIN_LAG", "MAX_LAG", "LongTermPredictor"]

MIN_LAG = 32     # 500 Hz
MAX_LAG = 320    # 50 Hz
_BLOCK = 64      # sub-frames per block of the analysis (small temporaries)


class LongTermPredictor:
    """Open-loop pitch predictor with a uniform gain grid. No trainable state.

    Args:
      gain_levels: number of gain levels; gain index k means b = k * gain_step (k = 0: off).
      gain_step: spacing of the gain grid.
      threshold: normalised correlation below which a sub-frame is not predicted.
      hold: after a predicted sub-frame, its lag is kept while it scores at least `hold` times
        the best lag's prediction gain (0: always the best lag); a kept lag costs almost nothing
        under the context model, and pitch moves slowly.
    """

    subframe = C.SUBFRAME_SIZE                 # 120: four per hop, the LPC interpolation's sub-frames
    per_hop = C.HOP_SIZE // C.SUBFRAME_SIZE

    def __init__(self, gain_levels: int = 8, gain_step: float = 0.125, threshold: float = 0.3, hold: float = 0.0):
        if isinstance(gain_levels, bool) or int(gain_levels) != gain_levels or not 2 <= gain_levels <= 64:
            raise ValueError(f"ltp gain_levels must be an int in [2, 64]; got {gain_levels!r}")
        if not 0.0 < gain_step or (gain_levels - 1) * gain_step >= 1.0:
            raise ValueError(f"ltp gains must stay below 1 (stable synthesis): {gain_levels} levels of {gain_step}")
        if not 0.0 <= threshold < 1.0:
            raise ValueError(f"ltp threshold must be in [0, 1); got {threshold}")
        if not 0.0 <= hold <= 1.0:
            raise ValueError(f"ltp hold must be in [0, 1]; got {hold}")
        self.gain_levels, self.gain_step, self.threshold = int(gain_levels), float(gain_step), float(threshold)
        self.hold = float(hold)
        self.alphabet_sizes = [MAX_LAG - MIN_LAG + 1, self.gain_levels]

    def get_config(self) -> dict:
        out = {"gain_levels": self.gain_levels, "gain_step": self.gain_step, "threshold": self.threshold}
        if self.hold:   # only when set: configs written before the option keep their identity
            out["hold"] = self.hold
        return out

    @staticmethod
    def initial_history() -> np.ndarray:
        return np.zeros(MAX_LAG)

    def _check(self, history, x, what: str):
        h = np.asarray(history, np.float64)
        x = np.asarray(x, np.float64)
        if h.shape != (MAX_LAG,):
            raise ValueError(f"ltp {what}: history must hold the last {MAX_LAG} samples; got shape {h.shape}")
        if x.ndim != 1 or len(x) % self.subframe:
            raise ValueError(f"ltp {what}: expected whole {self.subframe}-sample sub-frames; got shape {x.shape}")
        return h, x

    def check_codes(self, codes, num_subframes: int) -> np.ndarray:
        c = np.asarray(codes)
        if c.shape != (num_subframes, 2) or not np.issubdtype(c.dtype, np.integer):
            raise ValueError(f"ltp codes must be an int array [{num_subframes}, 2]; got {c.dtype} {c.shape}")
        if c.size and (c.min() < 0 or c[:, 0].max() > MAX_LAG - MIN_LAG or c[:, 1].max() >= self.gain_levels):
            raise ValueError("ltp codes outside their alphabets (lag 0..288, gain 0..levels-1)")
        return c.astype(np.int64)

    # ------------------------------------------------------------------ encoder
    def analyze(self, history, e, prev_lag: int = 0) -> np.ndarray:
        """Residual `e` (whole sub-frames) after `history` (its MAX_LAG preceding samples) ->
        int32 codes [sub-frames, 2]. `prev_lag`: the lag code before the first sub-frame.

        Every sub-frame's correlations with all lags come from one batched FFT (row by row, the
        same arithmetic whatever the batch, so chunked calls give the same codes); only the
        choice per sub-frame (threshold, hold) is a Python loop over scalars."""
        h, e = self._check(history, e, "analyze")
        ext = np.concatenate([h, e])
        n, sub = len(e) // self.subframe, self.subframe
        out = np.zeros((n, 2), np.int32)
        if n == 0:
            return out
        rows = np.lib.stride_tricks.sliding_window_view(ext, MAX_LAG + sub)[::sub][:n]
        # Blocks of _BLOCK sub-frames: each row's arithmetic is the same whatever the block, and
        # the temporaries stay small (a whole chunk's, ~4 MB each, were fresh mmaps whose page
        # faults cost as much as the arithmetic).
        voiced = False
        for s0 in range(0, n, _BLOCK):
            prev_lag, voiced = self._analyze_block(rows[s0:s0 + _BLOCK], out[s0:s0 + _BLOCK], prev_lag, voiced)
        return out

    def _analyze_block(self, rows: np.ndarray, out: np.ndarray, prev_lag: int, voiced: bool) -> tuple:
        """Codes of the sub-frames whose [MAX_LAG history + sub-frame] are `rows`, into `out`;
        `prev_lag` / `voiced`: the lag code and voicing of the sub-frame before. Returns those
        of the block's last sub-frame."""
        n, sub = len(rows), self.subframe
        span = MAX_LAG - MIN_LAG + sub                       # 408: every candidate's samples
        seg, target = rows[:, :span], rows[:, MAX_LAG:]
        nfft = 512                                           # >= span: the valid lags see no wrap-around
        dot = np.fft.irfft(np.fft.rfft(seg, nfft) * np.conj(np.fft.rfft(target, nfft)), nfft)[:, : span - sub + 1]
        # each row's running sum of squares, accumulated in the transposed layout [span, n] (the
        # same sequential sums as np.cumsum along each row, which numpy runs one row at a time)
        cs = np.empty((span + 1, n))
        cs[0] = 0.0
        np.multiply(seg.T, seg.T, out=cs[1:])
        np.cumsum(cs[1:], axis=0, out=cs[1:])
        energy = np.maximum(cs[sub:] - cs[: span - sub + 1], 1e-30).T     # row j: lag MAX_LAG - j
        score = np.where(dot > 0, dot * dot / energy, 0.0)
        best = np.argmax(score, axis=1)
        t_energy = np.einsum("ij,ij->i", target, target)

        def gain_index(d, en, te):
            """Quantized gain (0: not predicted) of lag rows with correlation d, energy en."""
            corr = np.where(d > 0, d / np.sqrt(np.maximum(en * te, 1e-60)), 0.0)
            k = np.clip(np.rint(d / en / self.gain_step), 0, self.gain_levels - 1)
            return np.where(corr >= self.threshold, k, 0).astype(np.int64)

        rows_ = np.arange(n)
        k_best = gain_index(dot[rows_, best], energy[rows_, best], t_energy).tolist()
        best_l, s_best = best.tolist(), score[rows_, best].tolist()
        for s in range(n):
            j, k = best_l[s], k_best[s]
            if self.hold and voiced:
                held = MAX_LAG - MIN_LAG - prev_lag      # the previous lag's row
                if held != j and score[s, held] >= self.hold * s_best[s]:
                    j, k = held, int(gain_index(dot[s, held], energy[s, held], t_energy[s]))
            lag_code = MAX_LAG - j - MIN_LAG if k else prev_lag
            out[s] = lag_code, k
            prev_lag, voiced = lag_code, k > 0
        return prev_lag, voiced

    def _per_sample(self, codes: np.ndarray):
        lag = np.repeat(codes[:, 0] + MIN_LAG, self.subframe)
        gain = np.repeat(codes[:, 1] * self.gain_step, self.subframe)
        return lag, gain

    def analysis_filter(self, history, e, codes) -> np.ndarray:
        """e2[n] = e[n] - b e[n - T] per sub-frame (open loop: the original residual)."""
        h, e = self._check(history, e, "analysis_filter")
        c = self.check_codes(codes, len(e) // self.subframe)
        ext = np.concatenate([h, e])
        lag, gain = self._per_sample(c)
        idx = np.arange(len(e)) + MAX_LAG - lag
        return e - gain * ext[idx]

    # ------------------------------------------------------------------ decoder
    def synthesis_filter(self, history, e2, codes) -> np.ndarray:
        """y[n] = e2[n] + b y[n - T] per sub-frame; `history`: the last MAX_LAG outputs before."""
        h, e2 = self._check(history, e2, "synthesis_filter")
        c = self.check_codes(codes, len(e2) // self.subframe)
        y = np.concatenate([h, e2])                       # unpredicted sub-frames: y = e2
        voiced = np.flatnonzero(c[:, 1])
        if compiled():   # the same operations in the same order, compiled (bit-identical)
            from lpc import _kernels
            _kernels.pitch_synthesis(y, np.ascontiguousarray(e2, np.float64),
                                     (MAX_LAG + voiced * self.subframe).astype(np.int64),
                                     (c[voiced, 0] + MIN_LAG).astype(np.int64),
                                     c[voiced, 1] * self.gain_step, self.subframe, MAX_LAG)
            return y[MAX_LAG:]
        for s, lag_code, k in zip(voiced.tolist(), c[voiced, 0].tolist(), c[voiced, 1].tolist()):
            p = MAX_LAG + s * self.subframe
            end = p + self.subframe
            lag, b = lag_code + MIN_LAG, k * self.gain_step
            for q in range(p, end, lag):                  # blocks no longer than the lag
                r = min(q + lag, end)
                y[q:r] = e2[q - MAX_LAG: r - MAX_LAG] + b * y[q - lag: r - lag]
        return y[MAX_LAG:]
