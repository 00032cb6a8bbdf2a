"""constriction's range coder, compiled with numba: the same words, a loop per chunk, not per symbol.

`cq_codec.bitstream.entropy` codes with constriction's queue `RangeEncoder` / `RangeDecoder`
(32-bit words, 64-bit state, 24-bit probabilities). A context model must go symbol by symbol
(each symbol's table depends on the previous one), so there it made one Python call per symbol:
about 60 ns of loop per symbol plus ~140 ns of call, which was a quarter of decoding time.
`RangeEncoder` / `RangeDecoder` here are the same algorithm (constriction 0.5.0,
`src/stream/queue.rs`: `encode_symbol`, `seal_words`, `decode_symbol`, `read_point`,
`maybe_exhausted`) in integer arithmetic only, run by one numba call per group of rows. They
produce and accept exactly constriction's words: tests/test_rangecoder.py checks both directions
against constriction on random tables, symbols and damaged payloads, including the carry
("inverted") cases.

A model enters as cumulative tables `cdf [K, C, A_max + 1]` (uint64): stream k, context c,
`cdf[k, c, a]` the sum of the frequencies of the symbols below a (`cdf[..., 0] == 0`, then up
to 2**24 at the alphabet size and 2**24 after it), C = 1 for context-free streams. Order:
`contextual` rows are coded row by row (streams in order within a row, context = the previous
row's symbol + 1, 0 in row 0), otherwise stream by stream (all rows of stream 0 first), as
`ContextModel` / `CategoricalModel` do.

`available()` is False when numba cannot be imported; the callers then use constriction.
"""

from __future__ import annotations

import numpy as np

__all__ = ["available", "RangeEncoder", "RangeDecoder", "cdf_tables", "CorruptPayload"]

PRECISION = 24

try:
    import numba
except ImportError:  # pragma: no cover - numba comes with librosa (requirements.txt pins it)
    numba = None


def available() -> bool:
    return numba is not None


class CorruptPayload(ValueError):
    """The words cannot be a range-coded payload of these rows (a quantile outside the table)."""


def cdf_tables(freq_tables, contextual: bool) -> np.ndarray:
    """Frequency tables (one per coded stream: `[A]`, or `[A + 1, A]` per context) -> the
    padded cumulative tables `[K, C, A_max + 1]` uint64 the kernels take."""
    tabs = [np.asarray(t, np.int64).reshape((-1, np.shape(t)[-1]) if contextual else (1, -1)) for t in freq_tables]
    a_max = max(t.shape[-1] for t in tabs)
    c_max = max(t.shape[0] for t in tabs)
    out = np.full((len(tabs), c_max, a_max + 1), 1 << PRECISION, np.uint64)
    for k, t in enumerate(tabs):
        out[k, : t.shape[0], 0] = 0
        out[k, : t.shape[0], 1: t.shape[1] + 1] = np.cumsum(t, axis=1)
    return out


if numba is not None:
    _U = numba.uint64

    @numba.njit(cache=True, nogil=True)
    def _encode_kernel(symbols, cdf, contextual, state, out, n_out):
        """Encodes symbols [R, K]; state = [lower, range, inverted count, first inverted word];
        appends words to out from n_out; returns the new n_out (-1: out is full)."""
        rows, k_streams = symbols.shape
        shift_p = _U(PRECISION)
        w32 = _U(32)
        low_bound = _U(1) << w32
        lower, rng, n_inv, first_inv = state[0], state[1], np.int64(state[2]), state[3]
        for outer in range(k_streams if not contextual else rows):
            for inner in range(rows if not contextual else k_streams):
                i, k = (inner, outer) if not contextual else (outer, inner)
                s = symbols[i, k]
                ctx = 0
                if contextual and i > 0:
                    ctx = symbols[i - 1, k] + 1
                left = cdf[k, ctx, s]
                prob = cdf[k, ctx, s + 1] - left
                scale = rng >> shift_p
                rng = scale * prob
                new_lower = lower + scale * left
                if n_inv > 0 and new_lower + rng > new_lower:
                    if n_out + n_inv > out.shape[0]:
                        return -1
                    if new_lower < lower:
                        out[n_out] = (first_inv + _U(1)) & _U(0xFFFFFFFF)
                        fill = _U(0)
                    else:
                        out[n_out] = first_inv
                        fill = _U(0xFFFFFFFF)
                    n_out += 1
                    for _ in range(1, n_inv):
                        out[n_out] = fill
                        n_out += 1
                    n_inv = 0
                lower = new_lower
                if rng < low_bound:
                    rng = rng << w32
                    lower_word = lower >> w32
                    lower = lower << w32
                    if n_inv > 0:
                        n_inv += 1
                    elif lower + rng > lower:
                        if n_out >= out.shape[0]:
                            return -1
                        out[n_out] = lower_word
                        n_out += 1
                    else:
                        n_inv = 1
                        first_inv = lower_word
        state[0], state[1], state[2], state[3] = lower, rng, _U(n_inv), first_inv
        return n_out

    @numba.njit(cache=True, nogil=True)
    def _decode_kernel(words, cdf, contextual, rows, state, out):
        """Decodes rows [rows, K] into out; state = [lower, range, point, next word position].
        Returns -1, or the flat index of the first symbol whose quantile is out of range."""
        k_streams = cdf.shape[0]
        a_max = cdf.shape[2] - 1
        shift_p = _U(PRECISION)
        w32 = _U(32)
        low_bound = _U(1) << w32
        total = _U(1) << shift_p
        n_words = words.shape[0]
        lower, rng, point, pos = state[0], state[1], state[2], np.int64(state[3])
        for outer in range(k_streams if not contextual else rows):
            for inner in range(rows if not contextual else k_streams):
                i, k = (inner, outer) if not contextual else (outer, inner)
                ctx = 0
                if contextual and i > 0:
                    ctx = out[i - 1, k] + 1
                scale = rng >> shift_p
                quantile = (point - lower) // scale
                if quantile >= total:
                    state[0], state[1], state[2], state[3] = lower, rng, point, _U(pos)
                    return outer * (rows if not contextual else k_streams) + inner
                lo, hi = 0, a_max          # cdf[lo] <= quantile < cdf[hi]
                while hi - lo > 1:
                    mid = (lo + hi) >> 1
                    if cdf[k, ctx, mid] <= quantile:
                        lo = mid
                    else:
                        hi = mid
                left = cdf[k, ctx, lo]
                lower = lower + scale * left
                rng = scale * (cdf[k, ctx, lo + 1] - left)
                out[i, k] = lo
                if rng < low_bound:
                    lower = lower << w32
                    rng = rng << w32
                    point = point << w32
                    if pos < n_words:
                        point = point | _U(words[pos])
                        pos += 1
        state[0], state[1], state[2], state[3] = lower, rng, point, _U(pos)
        return -1


_MAX64 = (1 << 64) - 1


class RangeEncoder:
    """constriction's `stream.queue.RangeEncoder()` (u32 words, u64 state) for whole groups of
    rows: `encode(symbols, cdf, contextual)`, then `get_compressed()` (uint32 words)."""

    def __init__(self):
        if numba is None:  # pragma: no cover
            raise RuntimeError("the compiled range coder needs numba")
        self._state = np.array([0, _MAX64, 0, 0], np.uint64)
        self._words = np.zeros(1024, np.uint64)
        self._n = 0

    def encode(self, symbols: np.ndarray, cdf: np.ndarray, contextual: bool) -> None:
        """symbols int [R, K] (validated by the caller: 0 <= s < A_k) under `cdf [K, C, A+1]`."""
        symbols = np.ascontiguousarray(symbols, np.int64)
        if symbols.size == 0:
            return
        while True:
            need = self._n + 2 * symbols.size + 8   # at most one word per symbol, plus a carry run
            if need > len(self._words):
                self._words = np.concatenate([self._words[: self._n], np.zeros(need, np.uint64)])
            saved = self._state.copy()
            n = _encode_kernel(symbols, cdf, bool(contextual), self._state, self._words, self._n)
            if n >= 0:
                self._n = int(n)
                return
            self._state[:] = saved  # pragma: no cover - cannot happen with the sizing above
            self._words = np.concatenate([self._words, np.zeros(len(self._words), np.uint64)])

    def get_compressed(self) -> np.ndarray:
        """The words so far plus constriction's seal (`seal_words`), uint32."""
        lower, rng, n_inv, first_inv = (int(v) for v in self._state)
        seal = []
        if rng != _MAX64:
            point = (lower + (1 << 32) - 1) & _MAX64
            if n_inv:
                if point >= lower:
                    seal += [first_inv] + [0xFFFFFFFF] * (n_inv - 1)
                else:
                    seal += [(first_inv + 1) & 0xFFFFFFFF] + [0] * (n_inv - 1)
            point_word = point >> 32
            upper_word = ((lower + rng) & _MAX64) >> 32
            seal.append(point_word)
            if upper_word == point_word:
                seal.append(0)
        return np.concatenate([self._words[: self._n], np.asarray(seal, np.uint64)]).astype(np.uint32)


class RangeDecoder:
    """constriction's `stream.queue.RangeDecoder(words)`: `decode(rows, cdf, contextual)` ->
    int32 [rows, K], `maybe_exhausted()`. Raises `CorruptPayload` where constriction raises."""

    def __init__(self, words):
        if numba is None:  # pragma: no cover
            raise RuntimeError("the compiled range coder needs numba")
        self._words = np.ascontiguousarray(words, np.uint32)
        point, n = 0, min(2, len(self._words))
        for w in self._words[:n]:
            point = (point << 32) | int(w)
        if n == 1:
            point <<= 32
        self._state = np.array([0, _MAX64, point, n], np.uint64)

    def decode(self, rows: int, cdf: np.ndarray, contextual: bool) -> np.ndarray:
        out = np.zeros((int(rows), cdf.shape[0]), np.int64)
        if out.size:
            bad = _decode_kernel(self._words, cdf, bool(contextual), int(rows), self._state, out)
            if bad >= 0:
                raise CorruptPayload(f"invalid range-coded data at symbol {bad} of {out.size}")
        return out.astype(np.int32)

    def maybe_exhausted(self) -> bool:
        lower, rng, point, pos = (int(v) for v in self._state)
        return pos >= len(self._words) and (rng == _MAX64 or ((point - lower) & _MAX64) < (1 << 33) - 1)
