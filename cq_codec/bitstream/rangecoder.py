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

numba is imported (and the kernels loaded, from its on-disk cache after the first run) only when
a coder here is first made: importing it costs a process about 100 MB. `cq_codec.bitstream.entropy`
uses these coders wherever numba can be imported (the decoder's compiled filters, `lpc._kernels`,
import it anyway) and constriction otherwise or with `$CQ_CODEC_RANGE_CODER=constriction`.
"""

from __future__ import annotations

import functools
import importlib.util
import warnings

import numpy as np

__all__ = ["available", "RangeEncoder", "RangeDecoder", "cdf_tables", "CorruptPayload"]

PRECISION = 24


def available() -> bool:
    """Whether numba can be imported (without importing it)."""
    return importlib.util.find_spec("numba") is not None


@functools.lru_cache(maxsize=None)
def loads() -> bool:
    """Whether the compiled coder can be used here: numba installed and the kernels loaded (numba
    refuses to define cached functions where it finds no writable cache directory). Imports
    numba; a failure is reported once as a warning."""
    if not available():
        return False
    try:
        _kernels()
    except Exception as err:   # noqa: BLE001 - any failure to load means: use constriction
        warnings.warn(f"the compiled range coder did not load ({type(err).__name__}: {err}); using constriction "
                      "(set CQ_CODEC_RANGE_CODER=constriction to silence this)")
        return False
    return True


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


@functools.lru_cache(maxsize=None)
def _kernels():
    """(encode kernel, decode kernel): imports numba and loads (first time: compiles) them."""
    from cq_codec.bitstream import _rangecoder_kernels as k
    return k.encode_kernel, k.decode_kernel


_MAX64 = (1 << 64) - 1


class RangeEncoder:
    """constriction's `stream.queue.RangeEncoder()` (u32 words, u64 state) for whole groups of
    rows: `encode(symbols, cdf, contextual)`, then `get_compressed()` (uint32 words)."""

    def __init__(self):
        self._kernel = _kernels()[0]
        self._state = np.array([0, _MAX64, 0, 0], np.uint64)
        self._words = np.zeros(1024, np.uint64)
        self._n = 0

    def encode(self, symbols: np.ndarray, cdf: np.ndarray, contextual: bool) -> None:
        """symbols int [R, K] (validated by the caller: 0 <= s < A_k) under `cdf [K, C, A+1]`."""
        symbols = np.ascontiguousarray(symbols)
        if symbols.dtype != np.int32:
            symbols = symbols.astype(np.int64, copy=False)
        if symbols.size == 0:
            return
        # First a buffer for 8 bits per symbol (the codes here cost 1-5; the worst case, one word
        # per symbol, would make every chunk's buffer several times its output); on overflow the
        # group is coded again from the saved state into a worst-case buffer.
        saved = self._state.copy()
        for need in (self._n + symbols.size // 4 + 16, self._n + symbols.size + 2):
            if need > len(self._words):
                self._words = np.concatenate([self._words[: self._n], np.zeros(max(need, 2 * len(self._words)) - self._n, np.uint64)])
            n = self._kernel(symbols, cdf, bool(contextual), self._state, self._words, self._n)
            if n >= 0:
                self._n = int(n)
                return
            self._state[:] = saved
        raise RuntimeError("range encoder: word buffer overflow")  # pragma: no cover - the worst case fits

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
        self._kernel = _kernels()[1]
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
            bad = self._kernel(self._words, cdf, bool(contextual), int(rows), self._state, out)
            if bad >= 0:
                raise CorruptPayload(f"invalid range-coded data at symbol {bad} of {out.size}")
        return out.astype(np.int32)

    def maybe_exhausted(self) -> bool:
        lower, rng, point, pos = (int(v) for v in self._state)
        return pos >= len(self._words) and (rng == _MAX64 or ((point - lower) & _MAX64) < (1 << 33) - 1)
