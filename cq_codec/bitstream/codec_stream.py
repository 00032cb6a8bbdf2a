"""Glue between the codec's codes and the `.nac` bytes: entropy tables, chunks, metadata.

- `fit_tables(model, codes)`: after training, from the codes of some utterances
  (`cq_codec.inference.fit_entropy_tables(model, wavs)` encodes them), fit per code group
  (the 16 LSF streams; each module's S streams) a `CategoricalModel` and a `ContextModel`, keep
  the one with fewer bits on held-out utterances, refit it on everything and store the tables
  (with the expected bits per frame of each group) in `model.entropy_tables`, so they are saved
  inside the `.keras` file.
- `encode_chunk` / `decode_chunk`: one `CodeChunk` <-> one payload. All groups of a chunk go
  through ONE range coder (LSF rows, then the side information of models that have it: gain
  codes as `[n * subframes, 1]` rows, pitch codes as `[n * 4, 2]` (lag, gain) rows; then module
  1's `[n * P, S]` rows, ...), so a chunk pays
  the coder's flush once; each chunk starts afresh, so chunks decode independently.
- `stream_metadata` / `check_metadata`: what a file says about its model and stream, and the
  decoder's checks (model hash, layout of version-1 files, counts, limits), failing with a
  `NacError` that says which.
- `payload_bounds`: the fewest and most payload bytes a chunk of n hops can take under the
  model's tables, so a decoder refuses a chunk whose size cannot carry its hops (a
  decompression bomb: many hops, no bytes) before decoding anything.
"""

from __future__ import annotations

import hashlib
import json
import math
from typing import NamedTuple, Sequence

import numpy as np

import constants as C
from cq_codec.bitstream import entropy
from cq_codec.bitstream.container import (MAX_FRAMES_PER_CHUNK, MAX_NUM_SAMPLES, NacError, NacFormatError,
                                          build_metadata, stream_counts)
from cq_codec.codes import SIDE_STREAMS, CodeChunk, Codes

__all__ = ["STREAM_FORMAT", "ModelMismatchError", "EntropyModels", "model_sha256", "code_layout",
           "fit_tables", "check_kinds", "entropy_models", "operating_points", "operating_combinations",
           "prefix_model", "encode_chunk",
           "decode_chunk", "chunk_bits", "PayloadBounds", "payload_bounds", "check_stream_size",
           "stream_metadata", "check_metadata"]

STREAM_FORMAT = 1            # layout of a chunk payload (header byte / metadata key "stream_format")
_TABLES_FORMAT = "cq_codec.entropy_tables"


class ModelMismatchError(NacError):
    """The file was written with another model (or another code layout) than the one given."""


class EntropyModels(NamedTuple):
    """lsf: model of the 16 LSF streams; modules: one model per module (streams S);
    bits_per_frame: expected bits per frame [side information (LSFs + gains), module 1, ...]
    measured when fitting; gain / pitch: models of the side streams (`cq_codec.codes.SIDE_STREAMS`),
    or None for a model without them."""

    lsf: entropy.EntropyModel
    modules: list
    bits_per_frame: list
    gain: entropy.EntropyModel | None = None
    pitch: entropy.EntropyModel | None = None


def _json_copy(obj):
    """Plain JSON types (Keras wraps dict attributes in tracking containers)."""
    return json.loads(json.dumps(obj))


def model_sha256(model) -> str:
    """Identity of a model: sha256 over its config (JSON, sorted keys, including the entropy
    tables) and every weight's shape, dtype and bytes, in order (not the weights' paths: Keras
    numbers auto-named layers per process, so a reloaded model's paths differ)."""
    h = hashlib.sha256()
    h.update(json.dumps(_json_copy(model.get_config()), sort_keys=True, separators=(",", ":")).encode())
    for w in model.weights:
        v = np.ascontiguousarray(np.asarray(w.numpy()))
        h.update(f"{v.shape}|{v.dtype}".encode())
        h.update(v.tobytes())
    return h.hexdigest()


def code_layout(model) -> dict:
    """{"lsf": [16 alphabet sizes], "modules": [{"positions": P, "alphabet_sizes": [S sizes]}]},
    plus "gain": {"subframes": G, "alphabet_size": L} for a model with gain-shape coding and
    "pitch": {"subframes": 4, "alphabet_sizes": [lags, gains]} for one with long-term prediction."""
    out = {"lsf": [int(a) for a in model.lsf_quantizer.codebook_sizes],
           "modules": [{"positions": int(m.num_positions), "alphabet_sizes": [int(a) for a in m.quantizer.codebook_sizes]}
                       for m in model.codec_modules]}
    gq = getattr(model, "gain_quantizer", None)
    if gq is not None:
        out["gain"] = {"subframes": gq.subframes, "alphabet_size": gq.alphabet_size}
    ltp = getattr(model, "ltp", None)
    if ltp is not None:
        out["pitch"] = {"subframes": ltp.per_hop, "alphabet_sizes": [int(a) for a in ltp.alphabet_sizes]}
    return out


def _side_sizes(layout: dict, name: str) -> list:
    """Alphabet sizes of side stream `name`'s rows."""
    g = layout[name]
    return [g["alphabet_size"]] if name == "gain" else list(g["alphabet_sizes"])


def _side_rows(codes, sizes: list) -> np.ndarray:
    """[n, sub-frames(, streams)] side codes -> [n * sub-frames, streams] rows in time order (a
    context model conditions each on the previous sub-frame's)."""
    return np.asarray(codes).reshape(-1, len(sizes))


def _sides(layout: dict) -> list:
    return [k for k in SIDE_STREAMS if k in layout]


def _rows(module_codes: np.ndarray) -> np.ndarray:
    """[n, P, S] -> [n * P, S] (positions in time order, the rows a ContextModel conditions on)."""
    c = np.asarray(module_codes)
    return c.reshape(-1, c.shape[-1])


def _fit_group(fit_rows: list, held_rows: list, all_rows: list, sizes: list, kinds: Sequence[str]) -> tuple:
    """Best entropy model kind on held-out rows -> (model refit on all rows, report)."""
    classes = {"categorical": entropy.CategoricalModel, "context": entropy.ContextModel}
    fit, held = np.concatenate(fit_rows), (np.concatenate(held_rows) if held_rows else None)
    report = {}
    for kind in kinds:
        if held is None:
            report[kind] = None
            continue
        report[kind] = entropy.estimate_bits(held, classes[kind].fit(fit, sizes)) / max(len(held), 1)
    scored = {k: v for k, v in report.items() if v is not None}
    best = min(scored, key=scored.get) if scored else kinds[0]
    return classes[best].fit(np.concatenate(all_rows), sizes), {"kind": best, "held_out_bits_per_row": report}


def check_kinds(kinds: Sequence[str]) -> None:
    unknown = set(kinds) - {"categorical", "context"}
    if unknown or not kinds:
        raise ValueError(f"kinds must be a subset of ('categorical', 'context'), got {list(kinds)}")


def fit_tables(model, codes: Sequence[Codes], held_out_every: int = 5,
               kinds: Sequence[str] = ("categorical", "context")) -> dict:
    """Fit the bitstream's probability tables on the codes of training utterances (every
    module's) and store them (`cq_codec.inference.fit_entropy_tables` encodes the utterances).

    Every `held_out_every`-th utterance (at least one when there are two or more) is held out to
    choose, per group, between the kinds; the chosen kind is then refit on all utterances.
    Returns the tables dict (also assigned to `model.entropy_tables`), whose "report" holds the
    held-out bits per row of each kind.
    """
    check_kinds(kinds)
    if not codes:
        raise ValueError("fit_tables needs the codes of at least one utterance")
    layout = code_layout(model)
    n_mod = len(model.codec_modules)
    if any(len(c.modules) != n_mod for c in codes):
        raise ValueError(f"fit_tables needs the codes of all {n_mod} modules of every utterance")
    held = {i for i in range(len(codes)) if len(codes) > 1 and i % held_out_every == held_out_every - 1}
    held = held or ({len(codes) - 1} if len(codes) > 1 else set())
    groups = [("lsf", [c.lsf for c in codes], layout["lsf"])]
    for k in _sides(layout):
        if any(getattr(c, k) is None for c in codes):
            raise ValueError(f"fit_tables: this model codes {k} side information; every utterance's codes need it")
        sizes = _side_sizes(layout, k)
        groups.append((k, [_side_rows(getattr(c, k), sizes) for c in codes], sizes))
    groups += [(f"module_{i}", [_rows(c.modules[i]) for c in codes], layout["modules"][i]["alphabet_sizes"])
               for i in range(n_mod)]
    num_frames = sum(c.lsf.shape[0] for c in codes)
    tables, report, bits = {}, {}, []
    for name, rows, sizes in groups:
        fit_rows = [r for i, r in enumerate(rows) if i not in held]
        model_, report[name] = _fit_group(fit_rows, [rows[i] for i in held], rows, sizes, kinds)
        tables[name] = model_.to_dict()
        # Expected bits per frame: the refit model on all fitting utterances, chunk by chunk as coded.
        bits.append(sum(entropy.estimate_bits(r, model_) for r in rows) / num_frames)
    side = len(_sides(layout))   # side information: the LSFs' and the side streams' bits together
    bits = [sum(bits[: side + 1])] + bits[side + 1:]
    out = {"format": _TABLES_FORMAT, "version": 1, "layout": layout, "lsf": tables.pop("lsf"),
           "modules": [tables[f"module_{i}"] for i in range(n_mod)], "bits_per_frame": bits,
           "num_frames": num_frames, "report": report}
    for k in _sides(layout):
        out[k] = tables.pop(k)
    model.entropy_tables = out
    return out


def entropy_models(model) -> EntropyModels:
    """The model's stored entropy models (raises ValueError when it has none or they don't fit)."""
    tables = getattr(model, "entropy_tables", None)
    if not tables:
        raise ValueError("this model has no entropy tables: run "
                         "cq_codec.inference.fit_entropy_tables(model, wavs) after training")
    cached = getattr(model, "_cq_entropy_cache", None)
    key = id(tables)
    if cached is not None and cached[0] == key:
        return cached[1]
    t = _json_copy(tables)
    if t.get("format") != _TABLES_FORMAT or t.get("version") != 1:
        raise ValueError(f"unsupported entropy tables (format {t.get('format')!r}, version {t.get('version')!r})")
    if t["layout"] != code_layout(model):
        raise ValueError("the entropy tables were fitted for another code layout than this model's")
    if any((k in t) != (k in t["layout"]) for k in SIDE_STREAMS):
        raise ValueError("the entropy tables' side-information tables do not match the model's layout")
    models = EntropyModels(entropy.model_from_dict(t["lsf"]), [entropy.model_from_dict(d) for d in t["modules"]],
                           [float(b) for b in t["bits_per_frame"]],
                           *(entropy.model_from_dict(t[k]) if k in t else None for k in SIDE_STREAMS))
    model.__dict__["_cq_entropy_cache"] = (key, models)
    return models


def operating_points(model) -> list[tuple[int, float]]:
    """[(num_modules, expected kbps)] for 1..num_modules, from the tables' bits per frame."""
    bpf = entropy_models(model).bits_per_frame
    return [(k, float(sum(bpf[: k + 1]) * C.FRAMES_PER_SECOND / C.BITS_PER_KBIT)) for k in range(1, len(bpf))]


def prefix_model(model: entropy.EntropyModel, num_streams: int | None) -> entropy.EntropyModel:
    """The model of the first `num_streams` streams (None or 0: all). Tables are per stream, so
    the codes of an RVQ module run with fewer codebooks are coded with the first streams' tables."""
    if not num_streams or num_streams == model.num_streams:
        return model
    if not 1 <= num_streams <= model.num_streams:
        raise ValueError(f"{num_streams} code streams requested, the tables have {model.num_streams}")
    if isinstance(model, entropy.ContextModel):
        return entropy.ContextModel(model.tables[:num_streams], model.prior_strength)
    return entropy.CategoricalModel(model.tables[:num_streams])


def _stream_entropies(model: entropy.EntropyModel) -> np.ndarray:
    """Entropy (bits) of each stream's unconditional table (a context model's row 0)."""
    out = []
    for t in model.tables:
        f = np.asarray(t, np.float64)
        f = f[0] if f.ndim == 2 else f
        p = f / f.sum()
        out.append(float(-(p * np.log2(p)).sum()))
    return np.asarray(out)


def operating_combinations(model) -> list[tuple[int, tuple, float]]:
    """Every (modules k, codebooks per module (c_1..c_k), expected kbps): c_i ranges over 1..S_i for
    modules whose quantizer is an RVQ (any number of its first codebooks is a valid code) and is
    S_i otherwise. Expected kbps: the fitted bits per frame of the LSFs and of each module, a
    module cut to c of its S codebooks costing the share of its first c streams in the entropies
    of their tables (exact for full modules, an estimate for cut ones)."""
    import itertools
    models = entropy_models(model)
    bpf = models.bits_per_frame
    per_module = []
    for i, m in enumerate(model.codec_modules):
        full = m.quantizer.num_streams
        h = _stream_entropies(models.modules[i])
        share = np.cumsum(h) / max(h.sum(), 1e-12)
        counts = range(1, full + 1) if _is_rvq(m) else [full]
        per_module.append([(c, float(bpf[i + 1] * share[c - 1])) for c in counts])
    out = []
    for k in range(1, len(per_module) + 1):
        for combo in itertools.product(*per_module[:k]):
            bits = bpf[0] + sum(b for _, b in combo)
            out.append((k, tuple(c for c, _ in combo), float(bits * C.FRAMES_PER_SECOND / C.BITS_PER_KBIT)))
    return out


def _is_rvq(module) -> bool:
    return type(module.quantizer).__name__ == "ResidualVectorQuantizer"


def _groups(chunk, models: EntropyModels):
    yield chunk.lsf, models.lsf
    for k in SIDE_STREAMS:
        m, c = getattr(models, k), getattr(chunk, k)
        if (m is None) != (c is None):
            raise ValueError(f"the chunk's {k} codes do not match the model's side information "
                             f"(model codes {k}: {m is not None}, chunk has them: {c is not None})")
        if m is not None:
            yield _side_rows(c, m.alphabet_sizes), m
    for codes, m in zip(chunk.modules, models.modules):
        yield _rows(codes), prefix_model(m, np.shape(codes)[-1])   # an RVQ module may carry fewer codebooks


def encode_chunk(chunk, models: EntropyModels) -> bytes:
    """CodeChunk -> payload bytes (one range coder: LSF rows, then each module's rows)."""
    if len(chunk.modules) > len(models.modules):
        raise ValueError(f"chunk has {len(chunk.modules)} modules' codes, the tables {len(models.modules)}")
    encoder = entropy.new_encoder()
    for codes, m in _groups(chunk, models):
        m._encode(encoder, entropy._as_codes(codes, m.alphabet_sizes))   # same package: shared coder
    return encoder.get_compressed().astype(">u4").tobytes()


def decode_chunk(data: bytes, num_frames: int, num_active: int, models: EntropyModels, layout: dict,
                 codebooks=None):
    """Payload bytes -> CodeChunk with `num_frames` hops of the first `num_active` modules
    (`codebooks`: streams of each, from the header; 0 or None = all).

    Raises NacFormatError when the payload does not decode to exactly that (damaged data)."""
    data = bytes(data)
    if len(data) % 4:
        raise NacFormatError(f"chunk payload length {len(data)} is not a multiple of 4 bytes")
    try:
        decoder = entropy.new_decoder(np.frombuffer(data, ">u4").astype(np.uint32))
        lsf = models.lsf._decode(decoder, num_frames)
        side = {}
        for k in _sides(layout):
            g = layout[k]["subframes"]
            rows = getattr(models, k)._decode(decoder, num_frames * g)
            side[k] = rows.reshape(num_frames, g) if k == "gain" else rows.reshape(num_frames, g, -1)
        mods = []
        for i in range(num_active):
            p = layout["modules"][i]["positions"]
            m = prefix_model(models.modules[i], codebooks[i] if codebooks else None)
            rows = m._decode(decoder, num_frames * p)
            mods.append(rows.reshape(num_frames, p, -1))
        exhausted = decoder.maybe_exhausted()
    except (ValueError, RuntimeError, AssertionError) as e:
        raise NacFormatError(f"corrupt chunk payload: {e}") from e
    if not exhausted:
        raise NacFormatError("chunk payload has data left after its codes (damaged or wrong model)")
    return CodeChunk(lsf, mods, **side)


class PayloadBounds(NamedTuple):
    """Bits per hop a payload must carry at least / can carry at most under the tables."""

    min_bits_per_hop: float
    max_bits_per_hop: float

    def check(self, payload_bytes: int, num_frames: int, where: str) -> None:
        """Refuse (NacFormatError) a payload too short or too long for `num_frames` hops."""
        bits = 8 * payload_bytes
        low = num_frames * self.min_bits_per_hop - _CODER_SLACK_BELOW
        high = num_frames * self.max_bits_per_hop + _CODER_SLACK_ABOVE
        if not low <= bits <= high:
            raise NacFormatError(f"{where}: a {payload_bytes}-byte payload cannot hold {num_frames} hops "
                                 f"(the model's tables need {max(0, math.ceil(low / 8))} to "
                                 f"{math.floor(high / 8)} bytes): damaged or hostile file")

    def min_bytes(self, num_frames: int) -> int:
        return max(0, math.ceil((num_frames * self.min_bits_per_hop - _CODER_SLACK_BELOW) / 8))


# The range coder emits at least the information content minus a fraction of a word and at most
# it plus two 32-bit words (measured: bits - information in [1.2, 32.9] over 300 extreme
# tables); the bounds keep a word of margin each way.
_CODER_SLACK_BELOW = 32
_CODER_SLACK_ABOVE = 96


def _table_bits(model: entropy.EntropyModel) -> tuple[float, float]:
    """(min, max) over rows of the bits one row of codes costs: per stream -log2 of its most /
    least probable symbol over all of the stream's tables (contexts)."""
    lo = hi = 0.0
    for t, a in zip(model.tables, model.alphabet_sizes):
        if a < 2:
            continue
        f = np.asarray(t, np.float64)
        lo += entropy.PRECISION - math.log2(f.max())
        hi += entropy.PRECISION - math.log2(f.min())
    return lo, hi


def payload_bounds(models: EntropyModels, layout: dict, num_active: int, codebooks=None) -> PayloadBounds:
    """PayloadBounds of a chunk with the first `num_active` modules (`codebooks`: streams of each,
    0 or None = all): one LSF row and P_i rows of module i per hop."""
    lo, hi = _table_bits(models.lsf)
    for k in _sides(layout):
        g_lo, g_hi = _table_bits(getattr(models, k))
        g = layout[k]["subframes"]
        lo, hi = lo + g * g_lo, hi + g * g_hi
    for i in range(num_active):
        m_lo, m_hi = _table_bits(prefix_model(models.modules[i], codebooks[i] if codebooks else None))
        p = layout["modules"][i]["positions"]
        lo, hi = lo + p * m_lo, hi + p * m_hi
    return PayloadBounds(lo, hi)


def check_stream_size(bytes_left: int | None, info: dict, models: EntropyModels) -> PayloadBounds:
    """The PayloadBounds of a stream (`check_metadata`'s info); when the bytes after the header
    are known, refuses (NacFormatError) a file too short for the hops it declares, before any
    chunk is read or decoded."""
    bounds = payload_bounds(models, info["layout"], info["num_active"], info.get("codebooks"))
    if bytes_left is not None:
        fpc, n = info["frames_per_chunk"], info["num_chunks"]
        last = info["num_frames"] - (n - 1) * fpc
        need = (n - 1) * (8 + bounds.min_bytes(fpc)) + 8 + bounds.min_bytes(last)
        if bytes_left < need:
            raise NacFormatError(f"the file declares {info['num_frames']} hops in {n} chunk(s), which need at "
                                 f"least {need} bytes under the model's tables; only {bytes_left} follow "
                                 "the header: truncated, damaged or hostile file")
    return bounds


def chunk_bits(chunk, models: EntropyModels) -> float:
    """Information content of a chunk under the tables (what `encode_chunk` costs, minus coder overhead)."""
    return float(sum(entropy.estimate_bits(c, m) for c, m in _groups(chunk, models)))


def stream_metadata(model, *, model_name: str, num_samples: int, num_active: int, frames_per_chunk: int,
                    sha256: str | None = None, codebooks=None) -> dict:
    """The metadata of a cq-codec `.nac` stream (`container.build_metadata`; the model's sha256,
    of which the file keeps 8 bytes, covers its config, code layout and entropy tables).
    `codebooks`: RVQ codebooks used per module (None: all, written as 0)."""
    return build_metadata(model_name=model_name, model_sha256=sha256 or model_sha256(model), num_samples=num_samples,
                          num_stages=num_active, frames_per_chunk=frames_per_chunk, stream_format=STREAM_FORMAT,
                          codebooks=codebooks)


def _int(meta: dict, key: str, low: int, high: int) -> int:
    v = meta.get(key)
    if isinstance(v, bool) or not isinstance(v, int) or not low <= v <= high:
        raise NacFormatError(f"metadata {key!r} must be an int in [{low}, {high}], got {v!r}")
    return v


def check_metadata(meta: dict, model, sha256: str | None = None) -> dict:
    """Check a file's metadata against `model`; returns {num_samples, num_frames, num_active,
    frames_per_chunk, num_chunks, codebooks, layout}. Raises ModelMismatchError / NacFormatError saying why."""
    if meta.get("stream_format") != STREAM_FORMAT:
        raise NacFormatError(f"unknown cq-codec stream format {meta.get('stream_format')!r} "
                             f"(this decoder reads format {STREAM_FORMAT})")
    info = meta.get("model")
    if not isinstance(info, dict) or not isinstance(info.get("sha256"), str) or len(info["sha256"]) < 16:
        raise NacFormatError("metadata lacks the model identity ('model': {name, sha256})")
    ours = sha256 or model_sha256(model)
    if not ours.startswith(info["sha256"]):       # version 2 files keep the first 16 hex digits
        raise ModelMismatchError(f"model mismatch: the file was written with model {info.get('name')!r} "
                                 f"(sha256 {info['sha256'][:16]}...), this model's sha256 is {ours[:16]}...; "
                                 "decode it with the model that encoded it (--model PATH)")
    if meta.get("sample_rate") != C.SAMPLE_RATE:
        raise NacFormatError(f"metadata sample_rate {meta.get('sample_rate')!r}, expected {C.SAMPLE_RATE}")
    num_samples = _int(meta, "num_samples", 1, MAX_NUM_SAMPLES)
    num_frames = _int(meta, "num_frames", 1, MAX_NUM_SAMPLES)
    fpc = _int(meta, "frames_per_chunk", 1, MAX_FRAMES_PER_CHUNK)
    num_chunks = _int(meta, "num_chunks", 1, MAX_NUM_SAMPLES)
    stages = meta.get("stages")
    n_mod = len(model.codec_modules)
    if not isinstance(stages, list) or not 1 <= len(stages) <= n_mod or stages != list(range(1, len(stages) + 1)):
        raise NacFormatError(f"metadata 'stages' must be [1..k] with k <= {n_mod}, got {stages!r}")
    layout = code_layout(model)
    codebooks = meta.get("codebooks", [0] * len(stages))
    if not isinstance(codebooks, list) or len(codebooks) != len(stages):
        raise NacFormatError(f"metadata 'codebooks' must hold one count per module ({len(stages)}), got {codebooks!r}")
    for i, c in enumerate(codebooks):
        full = len(layout["modules"][i]["alphabet_sizes"])
        # 0 = all; an RVQ module may carry any number of its first codebooks (quantizer dropout)
        allowed = range(0, full + 1) if _is_rvq(model.codec_modules[i]) else (0, full)
        if isinstance(c, bool) or c not in allowed:
            raise NacFormatError(f"module {i + 1} uses {c!r} codebooks; this model's module {i + 1} has "
                                 f"{full} code streams" + (f" (1..{full} for its RVQ)" if _is_rvq(model.codec_modules[i])
                                                            else " and reads all of them (written as 0)"))
    want = {"lsf": layout["lsf"], "modules": layout["modules"][: len(stages)]}
    for k in _sides(layout):
        want[k] = layout[k]
    if meta.get("layout", want) != want:          # version 1 files repeat the layout; the sha256 covers it
        raise ModelMismatchError(f"model mismatch: the file's code layout {meta.get('layout')!r} differs from the model's {want!r}")
    if (num_frames, num_chunks) != stream_counts(num_samples, fpc):
        raise NacFormatError(f"inconsistent counts: {num_samples} samples, {num_frames} frames, "
                             f"{fpc} frames per chunk, {num_chunks} chunks")
    return {"num_samples": num_samples, "num_frames": num_frames, "num_active": len(stages),
            "frames_per_chunk": fpc, "num_chunks": num_chunks, "codebooks": list(codebooks), "layout": want}
