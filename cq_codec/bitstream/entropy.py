"""Entropy coding of quantizer codes with fixed-point categorical models (constriction).

Codes are integer arrays `[N, S]`: N rows (codec frames / time steps), S parallel streams, stream
s over the alphabet `{0, ..., A_s - 1}`. A model holds, per stream, probability tables in 24-bit
fixed point: integer frequencies `f >= 1` with `sum(f) == 2**24`, so p(x) = f[x] / 2**24 exactly.

Bit-exactness across machines: constriction's fast ("leaky") quantization maps float weights w
to the cumulative table `cdf[i] = floor(sum(w[:i]) * (2**24 - A) / sum(w)) + i`. We hand it the
integer weights `w = f - 1` (which sum to exactly `2**24 - A`), so every float in that
computation is an exact integer (< 2**24), the scale is exactly 1.0, and constriction's table is
exactly `f`: no rounding anywhere, on any IEEE machine. `tests/test_bitstream.py` probes
constriction's decoder to check this. Hence `estimate_bits` (the sum of -log2 f[x] / 2**24) is
the exact information content, and the range coder adds only a few bytes of overhead.

Two model kinds (same interface; `encode`/`decode`/`estimate_bits` take either):
- `CategoricalModel`: one table per stream, symbols i.i.d. Payload order: stream 0's N symbols,
  then stream 1's, ... Each stream is coded by one vectorised constriction call.
- `ContextModel`: per stream, a table for each previous symbol of the same stream (row t - 1),
  plus a table for row 0 (the unconditional table). Fitted counts are smoothed toward the
  unconditional distribution (interpolated smoothing with the Witten-Bell escape weight,
  Witten & Bell, IEEE Trans. Inf. Theory 1991, or a fixed Dirichlet prior strength).
  Payload order: row by row, streams in order within a row. Decoding needs the previous row,
  so the coder goes symbol by symbol: one constriction call per symbol with the context's
  precomputed model (~60 ns a symbol on a quiet core, most of it the Python call), or, with
  `$CQ_CODEC_RANGE_CODER=numba`, `cq_codec.bitstream.rangecoder`: constriction's algorithm
  compiled with numba, one call per group of rows (the same words; ~15 ns a symbol).

`new_encoder()` / `new_decoder(words)` give the coder `range_coder()` names; both kinds of
model code with either, to the same words.

Alphabet size 1 streams carry no information: they take no bits and decode to 0.
The payload is the range coder's 32-bit words in network byte order (a multiple of 4 bytes).
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
from typing import Sequence, Union

import constriction
import numpy as np

from cq_codec.bitstream import rangecoder

__all__ = [
    "PRECISION", "MAX_ALPHABET", "quantize_weights", "CategoricalModel", "ContextModel",
    "EntropyModel", "encode", "decode", "estimate_bits", "RANGE_CODERS", "range_coder", "new_encoder", "new_decoder", "model_from_dict", "model_from_bytes",
]

PRECISION = 24                      # constriction's default coders use 24-bit probabilities
_TOTAL = 1 << PRECISION
MAX_ALPHABET = 1 << 16
_FORMAT = "cq_codec.entropy_model"
_FORMAT_VERSION = 1


def quantize_weights(weights) -> np.ndarray:
    """Nonnegative weights `[..., A]` -> fixed-point frequencies uint32 `[..., A]`.

    Each row gets `f >= 1` summing to exactly `2**24`: one unit per symbol plus a
    largest-remainder split of the other `2**24 - A` units proportional to the weights.
    """
    w = np.asarray(weights, dtype=np.float64)
    if w.ndim < 1 or w.shape[-1] < 1 or w.shape[-1] > MAX_ALPHABET:
        raise ValueError(f"weights need a last axis of size 1..{MAX_ALPHABET}, got {w.shape}")
    if not np.all(np.isfinite(w)) or np.any(w < 0) or np.any(w.sum(-1) <= 0):
        raise ValueError("weights must be finite, nonnegative, with a positive sum per row")
    size = w.shape[-1]
    free = _TOTAL - size
    scaled = w / w.sum(-1, keepdims=True) * free
    alloc = np.floor(scaled).astype(np.int64)
    short = free - alloc.sum(-1)                                 # [...], 0 <= short < A
    order = np.argsort(-(scaled - alloc), axis=-1, kind="stable")
    rank = np.empty_like(order)
    np.put_along_axis(rank, order, np.arange(size), axis=-1)
    alloc += rank < short[..., None]
    return (alloc + 1).astype(np.uint32)


def _check_freqs(freqs, shape: tuple, what: str) -> np.ndarray:
    f = np.asarray(freqs)
    if f.shape != shape or not np.issubdtype(f.dtype, np.integer):
        raise ValueError(f"{what}: expected integer table of shape {shape}, got {f.dtype} {f.shape}")
    f = f.astype(np.int64)
    if np.any(f < 1) or np.any(f.sum(-1) != _TOTAL):
        raise ValueError(f"{what}: frequencies must be >= 1 and sum to 2**{PRECISION} per table")
    return f.astype(np.uint32)


def _as_codes(codes, alphabet_sizes: Sequence[int]) -> np.ndarray:
    """Validate codes `[N, S]` (or `[N]` for one stream) against the alphabets -> int32 [N, S]."""
    c = np.asarray(codes)
    if c.ndim == 1 and len(alphabet_sizes) == 1:
        c = c[:, None]
    if c.ndim != 2 or c.shape[1] != len(alphabet_sizes):
        raise ValueError(f"codes must have shape [N, {len(alphabet_sizes)}], got {c.shape}")
    if c.size and not np.issubdtype(c.dtype, np.integer):
        raise TypeError(f"codes must be integers, got dtype {c.dtype}")
    c = c.astype(np.int64)
    bad = (c < 0) | (c >= np.asarray(alphabet_sizes, dtype=np.int64)[None, :])
    if bad.any():
        row, stream = np.argwhere(bad)[0]
        raise ValueError(f"code {c[row, stream]} at row {row}, stream {stream} is outside the "
                         f"alphabet [0, {alphabet_sizes[stream]})")
    return c.astype(np.int32)


def _check_alphabets(alphabet_sizes) -> list[int]:
    sizes = [int(a) for a in alphabet_sizes]
    if not sizes or any(a < 1 or a > MAX_ALPHABET for a in sizes):
        raise ValueError(f"alphabet_sizes must be a non-empty list of ints in 1..{MAX_ALPHABET}, "
                         f"got {list(alphabet_sizes)}")
    return sizes


def _b64(a: np.ndarray) -> str:
    return base64.b64encode(a.astype(">u4").tobytes()).decode("ascii")


def _unb64(text: str) -> np.ndarray:
    return np.frombuffer(base64.b64decode(text, validate=True), dtype=">u4").astype(np.int64)


RANGE_CODERS = ("constriction", "numba")
_RANGE_CODER_ENV = "CQ_CODEC_RANGE_CODER"


def range_coder() -> str:
    """The range coder in use: `$CQ_CODEC_RANGE_CODER`, "numba" or "constriction"; unset, "numba"
    where numba can be imported, else "constriction". Both write the same words; "numba"
    (`rangecoder`) codes 5-10x faster, and importing numba costs a process about 100 MB, which the
    decoder's compiled filters (`lpc.filters.kernels`) pay anyway (docs/DESIGN.md "Speed")."""
    name = os.environ.get(_RANGE_CODER_ENV, "").strip().lower() or (
        "numba" if rangecoder.loads() else "constriction")
    if name not in RANGE_CODERS:
        raise ValueError(f"${_RANGE_CODER_ENV} must be one of {', '.join(RANGE_CODERS)}; got {name!r}")
    if name == "numba" and not rangecoder.available():
        raise ValueError(f"${_RANGE_CODER_ENV}=numba, but numba cannot be imported")
    return name


def new_encoder(compiled: bool | None = None):
    """A range encoder: the compiled one (`rangecoder.RangeEncoder`) for `compiled=True`, or with
    None when `range_coder()` is "numba"; else constriction's `stream.queue.RangeEncoder`.
    Both write the same words."""
    if compiled if compiled is not None else range_coder() == "numba":
        return rangecoder.RangeEncoder()
    return constriction.stream.queue.RangeEncoder()


def new_decoder(words: np.ndarray, compiled: bool | None = None):
    """A range decoder of uint32 words (see `new_encoder`)."""
    if compiled if compiled is not None else range_coder() == "numba":
        return rangecoder.RangeDecoder(words)
    return constriction.stream.queue.RangeDecoder(words)


class _ModelBase:
    """Shared serialisation; subclasses define `kind`, `alphabet_sizes`, `tables`."""

    kind = ""
    alphabet_sizes: list[int]
    tables: list[np.ndarray]

    @property
    def num_streams(self) -> int:
        return len(self.alphabet_sizes)

    def _extra(self) -> dict:
        return {}

    def to_dict(self) -> dict:
        """JSON-friendly dict (tables as base64 of big-endian uint32)."""
        return {"format": _FORMAT, "version": _FORMAT_VERSION, "kind": self.kind,
                "precision": PRECISION, "alphabet_sizes": list(self.alphabet_sizes),
                "tables": [_b64(t) for t in self.tables], **self._extra()}

    def to_bytes(self) -> bytes:
        """Canonical bytes: sorted-key compact JSON of `to_dict()`, UTF-8."""
        return json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":")).encode()

    @property
    def sha256(self) -> str:
        """Stable identity: hex sha256 of `to_bytes()`."""
        return hashlib.sha256(self.to_bytes()).hexdigest()

    def __eq__(self, other) -> bool:
        return type(self) is type(other) and self.to_bytes() == other.to_bytes()

    def __repr__(self) -> str:
        return f"{type(self).__name__}(alphabet_sizes={self.alphabet_sizes}, sha256={self.sha256[:12]})"


class CategoricalModel(_ModelBase):
    """Independent fixed-point table per stream: `tables[s]` uint32 `[A_s]`, sums 2**24."""

    kind = "categorical"

    def __init__(self, tables: Sequence[np.ndarray]):
        self.alphabet_sizes = _check_alphabets([np.shape(t)[-1] if np.ndim(t) else 0 for t in tables])
        self.tables = [_check_freqs(t, (a,), f"stream {s}")
                       for s, (t, a) in enumerate(zip(tables, self.alphabet_sizes))]
        self._models = [None if a < 2 else constriction.stream.model.Categorical(
            t.astype(np.float64) - 1.0, perfect=False) for t, a in zip(self.tables, self.alphabet_sizes)]

    @classmethod
    def fit(cls, codes, alphabet_sizes: Sequence[int]) -> "CategoricalModel":
        """Laplace (add-one) smoothed tables from training codes `[N, S]` (or `[N]`)."""
        sizes = _check_alphabets(alphabet_sizes)
        c = _as_codes(codes, sizes)
        return cls([quantize_weights(np.bincount(c[:, s], minlength=a) + 1.0)
                    for s, a in enumerate(sizes)])

    @classmethod
    def uniform(cls, alphabet_sizes: Sequence[int]) -> "CategoricalModel":
        return cls([quantize_weights(np.ones(a)) for a in _check_alphabets(alphabet_sizes)])

    def symbol_bits(self, codes) -> np.ndarray:
        """-log2 p of each code under the quantized tables: float64 `[N, S]`."""
        c = _as_codes(codes, self.alphabet_sizes)
        out = np.zeros(c.shape)
        for s, t in enumerate(self.tables):
            out[:, s] = PRECISION - np.log2(t[c[:, s]].astype(np.float64))
        return out

    def _cdf(self):
        """(coded streams, their cumulative tables for `rangecoder`), built once."""
        if getattr(self, "_cdf_cache", None) is None:
            keep = [s for s, a in enumerate(self.alphabet_sizes) if a >= 2]
            self._cdf_cache = (keep, rangecoder.cdf_tables([self.tables[s] for s in keep], False) if keep else None)
        return self._cdf_cache

    def _encode(self, encoder, c: np.ndarray) -> None:
        if isinstance(encoder, rangecoder.RangeEncoder):
            keep, cdf = self._cdf()
            if keep and len(c):
                encoder.encode(c[:, keep], cdf, contextual=False)
            return
        for s, m in enumerate(self._models):
            if m is not None and len(c):
                encoder.encode(np.ascontiguousarray(c[:, s]), m)

    def _decode(self, decoder, num_rows: int) -> np.ndarray:
        out = np.zeros((num_rows, self.num_streams), dtype=np.int32)
        if isinstance(decoder, rangecoder.RangeDecoder):
            keep, cdf = self._cdf()
            if keep and num_rows:
                out[:, keep] = decoder.decode(num_rows, cdf, contextual=False)
            return out
        for s, m in enumerate(self._models):
            if m is not None and num_rows:
                out[:, s] = decoder.decode(m, num_rows)
        return out


_FAMILY = constriction.stream.model.Categorical(perfect=False)   # per-symbol weights, leaky quantization
_BATCH = 2048                       # symbols per call of the batched context encoder


class ContextModel(_ModelBase):
    """Per stream, tables conditioned on the previous symbol of that stream.

    `tables[s]` is uint32 `[A_s + 1, A_s]`: row 0 codes row 0 of the codes (no previous symbol;
    the unconditional table), row k + 1 codes a symbol that follows symbol k.
    """

    kind = "context"

    def __init__(self, tables: Sequence[np.ndarray], prior_strength: float | None = None):
        self.alphabet_sizes = _check_alphabets([np.shape(t)[-1] if np.ndim(t) == 2 else 0 for t in tables])
        self.tables = [_check_freqs(t, (a + 1, a), f"stream {s}")
                       for s, (t, a) in enumerate(zip(tables, self.alphabet_sizes))]
        self.prior_strength = None if prior_strength is None else float(prior_strength)
        self._models: list | None = None

    def _extra(self) -> dict:
        return {"prior_strength": self.prior_strength}

    @classmethod
    def fit(cls, codes, alphabet_sizes: Sequence[int],
            prior_strength: float | None = None) -> "ContextModel":
        """Tables from training codes `[N, S]` (rows in time order; or `[N]`).

        p(x | k) = (count(k -> x) + a_k p(x)) / (count(k) + a_k), p the Laplace-smoothed
        unconditional distribution. a_k = prior_strength if given, else Witten-Bell's
        a_k = number of distinct symbols seen after k (>= 1): contexts with few, repeated
        followers trust their counts, sparse or diffuse ones back off to p.
        """
        if prior_strength is not None and not (np.isfinite(prior_strength) and prior_strength > 0):
            raise ValueError(f"prior_strength must be positive or None, got {prior_strength}")
        sizes = _check_alphabets(alphabet_sizes)
        c = _as_codes(codes, sizes)
        tables = []
        for s, a in enumerate(sizes):
            marginal = np.bincount(c[:, s], minlength=a) + 1.0
            marginal /= marginal.sum()
            pairs = np.bincount(c[:-1, s].astype(np.int64) * a + c[1:, s],
                                minlength=a * a).reshape(a, a).astype(np.float64)
            alpha = (np.maximum(1.0, (pairs > 0).sum(1)) if prior_strength is None
                     else np.full(a, float(prior_strength)))
            cond = pairs + alpha[:, None] * marginal[None, :]
            tables.append(quantize_weights(np.concatenate([marginal[None, :], cond], axis=0)))
        return cls(tables, prior_strength)

    def _contexts(self, c: np.ndarray) -> np.ndarray:
        return np.concatenate([np.zeros((1, c.shape[1]), np.int32), c[:-1] + 1])[: len(c)]

    def symbol_bits(self, codes) -> np.ndarray:
        """-log2 p of each code given its context, under the quantized tables: `[N, S]`."""
        c = _as_codes(codes, self.alphabet_sizes)
        ctx = self._contexts(c)
        out = np.zeros(c.shape)
        for s, t in enumerate(self.tables):
            out[:, s] = PRECISION - np.log2(t[ctx[:, s], c[:, s]].astype(np.float64))
        return out

    def _coder_models(self) -> list:
        """Per stream, one concrete constriction model per context (None for A = 1); built once."""
        if self._models is None:
            self._models = [None if a < 2 else [constriction.stream.model.Categorical(
                row.astype(np.float64) - 1.0, perfect=False) for row in t]
                for t, a in zip(self.tables, self.alphabet_sizes)]
        return self._models

    def _cdf(self):
        """(coded streams, their cumulative tables per context for `rangecoder`), built once."""
        if getattr(self, "_cdf_cache", None) is None:
            keep = [s for s, a in enumerate(self.alphabet_sizes) if a >= 2]
            self._cdf_cache = (keep, rangecoder.cdf_tables([self.tables[s] for s in keep], True) if keep else None)
        return self._cdf_cache

    def _encode(self, encoder, c: np.ndarray) -> None:
        if isinstance(encoder, rangecoder.RangeEncoder):
            keep, cdf = self._cdf()
            if keep and len(c):
                encoder.encode(c[:, keep], cdf, contextual=True)
            return
        # One call per symbol with the context's precomputed model: faster than constriction's
        # per-symbol-table model family (measured), and the decoder must go symbol by symbol.
        keep = [s for s, a in enumerate(self.alphabet_sizes) if a >= 2]
        if not keep or not len(c):
            return
        if len(keep) == 1:   # the common case (scalar codes): batches of symbols, one call each
            self._encode_batched(encoder, c[:, keep[0]], self._contexts(c)[:, keep[0]], keep[0])
            return
        models = self._coder_models()
        symbols = c[:, keep].reshape(-1).tolist()
        contexts = self._contexts(c)[:, keep].reshape(-1).tolist()
        coder_models = map(lambda m, k: m[k], [models[s] for s in keep] * len(c), contexts)
        for _ in map(encoder.encode, symbols, coder_models):
            pass

    def _encode_batched(self, encoder, symbols: np.ndarray, contexts: np.ndarray, s: int) -> None:
        """Stream s's symbols [N] with their contexts [N], coded through constriction's
        categorical model family, each symbol with its context's row of integer weights f - 1:
        the same leaky quantization of the same exact integers as the per-context models, so the
        same words (tests/test_speed_numpy.py), at ~55 instead of ~100-130 ns a symbol (one
        Python call per _BATCH symbols, not per symbol)."""
        if getattr(self, "_weights", None) is None:
            self._weights = [t.astype(np.float64) - 1.0 for t in self.tables]
        weights, family = self._weights[s], _FAMILY
        symbols = np.ascontiguousarray(symbols, np.int32)
        for i in range(0, len(symbols), _BATCH):   # batches: the per-symbol rows stay small
            encoder.encode(symbols[i:i + _BATCH], family, weights[contexts[i:i + _BATCH]])

    def _decode(self, decoder, num_rows: int) -> np.ndarray:
        out = np.zeros((num_rows, self.num_streams), dtype=np.int32)
        keep = [s for s, a in enumerate(self.alphabet_sizes) if a >= 2]
        if not keep or not num_rows:
            return out
        if isinstance(decoder, rangecoder.RangeDecoder):
            out[:, keep] = decoder.decode(num_rows, self._cdf()[1], contextual=True)
            return out
        models = [self._coder_models()[s] for s in keep]
        decode_one = decoder.decode
        if len(keep) == 1:   # the common case: a tight loop over one stream
            table, prev, flat = models[0], 0, [0] * num_rows
            for i in range(num_rows):
                prev = flat[i] = decode_one(table[prev]) + 1
            out[:, keep[0]] = np.asarray(flat, dtype=np.int32) - 1
            return out
        flat, prev = [], [0] * len(keep)
        append = flat.append
        for _ in range(num_rows):
            for j, m in enumerate(models):
                x = decode_one(m[prev[j]])
                append(x)
                prev[j] = x + 1
        out[:, keep] = np.asarray(flat, dtype=np.int32).reshape(num_rows, len(keep))
        return out


EntropyModel = Union[CategoricalModel, ContextModel]
_KINDS = {cls.kind: cls for cls in (CategoricalModel, ContextModel)}


def model_from_dict(d: dict) -> EntropyModel:
    """Inverse of `model.to_dict()` for either model kind (validates format and tables)."""
    if not isinstance(d, dict) or d.get("format") != _FORMAT:
        raise ValueError(f"not an entropy model dict (format must be {_FORMAT!r})")
    if d.get("version") != _FORMAT_VERSION or d.get("precision") != PRECISION:
        raise ValueError(f"unsupported entropy model version {d.get('version')} / precision "
                         f"{d.get('precision')} (supported: {_FORMAT_VERSION} / {PRECISION})")
    if d.get("kind") not in _KINDS:
        raise ValueError(f"unknown entropy model kind {d.get('kind')!r}; known: {sorted(_KINDS)}")
    try:
        sizes = _check_alphabets(d["alphabet_sizes"])
        raw = [_unb64(t) for t in d["tables"]]
    except (KeyError, TypeError, ValueError) as e:
        raise ValueError(f"malformed entropy model dict: {e}") from e
    if len(raw) != len(sizes):
        raise ValueError(f"{len(raw)} tables for {len(sizes)} alphabet sizes")
    if d["kind"] == "categorical":
        return CategoricalModel(raw)
    tables = []
    for s, (t, a) in enumerate(zip(raw, sizes)):
        if t.size != (a + 1) * a:
            raise ValueError(f"stream {s}: context table has {t.size} entries, expected {(a + 1) * a}")
        tables.append(t.reshape(a + 1, a))
    strength = d.get("prior_strength")
    return ContextModel(tables, None if strength is None else float(strength))


def model_from_bytes(data: bytes) -> EntropyModel:
    """Inverse of `model.to_bytes()`."""
    try:
        d = json.loads(bytes(data).decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"entropy model bytes are not UTF-8 JSON: {e}") from e
    return model_from_dict(d)


def _check_model(model) -> None:
    if not isinstance(model, (CategoricalModel, ContextModel)):
        raise TypeError(f"model must be a CategoricalModel or ContextModel, got {type(model).__name__}")


def encode(codes, model: EntropyModel) -> bytes:
    """Codes int `[N, S]` -> payload bytes (range coder words, big-endian)."""
    _check_model(model)
    c = _as_codes(codes, model.alphabet_sizes)
    encoder = new_encoder()
    model._encode(encoder, c)
    return encoder.get_compressed().astype(">u4").tobytes()


def decode(data: bytes, num_rows: int, model: EntropyModel) -> np.ndarray:
    """Payload bytes -> codes int32 `[num_rows, S]`; the exact inverse of `encode`.

    Raises ValueError when the payload is not whole 32-bit words or is not fully consumed.
    """
    _check_model(model)
    if isinstance(num_rows, bool) or not isinstance(num_rows, (int, np.integer)) or num_rows < 0:
        raise ValueError(f"num_rows must be a nonnegative int, got {num_rows!r}")
    data = bytes(data)
    if len(data) % 4:
        raise ValueError(f"payload length {len(data)} is not a multiple of 4 bytes")
    words = np.frombuffer(data, dtype=">u4").astype(np.uint32)
    try:
        decoder = new_decoder(words)
        codes = model._decode(decoder, int(num_rows))
        exhausted = decoder.maybe_exhausted()
    except (ValueError, RuntimeError, AssertionError) as e:
        raise ValueError(f"corrupt entropy-coded payload: {e}") from e
    if not exhausted:
        raise ValueError(f"payload has data left after decoding {num_rows} rows (wrong num_rows "
                         "or model?)")
    return codes


def estimate_bits(codes, model: EntropyModel) -> float:
    """Information content of `codes [N, S]` under the model's quantized tables, in bits."""
    _check_model(model)
    return float(model.symbol_bits(codes).sum())
