"""Version-1 `.nac` metadata: JSON parsed with limits, every known field's type and range checked.

Version 1 (see `container.py`) stored its metadata as a JSON object. A hostile file can nest it
deeply (RecursionError), give 5,000-digit integers (Python's int limit), NaN, or fields of any
type and size, so `parse_v1_metadata` bounds the size (`container.MAX_METADATA_BYTES`), the
nesting (MAX_DEPTH, counted before parsing), the digits of an integer (MAX_DIGITS) and refuses
NaN / Infinity; then checks each field a reader uses (`V1_FIELDS`) and raises `NacFormatError`
naming the field and what it must be. Other keys are kept as they are (informative).
"""

from __future__ import annotations

import json
import math
import re

import numpy as np

from cq_codec.bitstream.limits import MAX_FRAMES_PER_CHUNK, MAX_METADATA_BYTES, MAX_NUM_SAMPLES, NacFormatError

__all__ = ["MAX_DEPTH", "MAX_DIGITS", "V1_FIELDS", "parse_v1_metadata"]

MAX_DEPTH = 16
MAX_DIGITS = 30

_JSON_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"', re.S)


def _json_depth(raw: bytes) -> int:
    """Maximum nesting of [ and { in JSON text (strings removed first)."""
    text = np.frombuffer(_JSON_STRING.sub(b'""', raw), np.uint8)
    step = (np.isin(text, (0x5B, 0x7B)).astype(np.int64) - np.isin(text, (0x5D, 0x7D)))
    return int(np.cumsum(step).max(initial=0))


def _bounded_int(text: str) -> int:
    if len(text.lstrip("-")) > MAX_DIGITS:
        raise ValueError(f"integer of {len(text)} digits (limit {MAX_DIGITS})")
    return int(text)


def _no_constant(name: str):
    raise ValueError(f"{name} is not allowed")


def _is_int(v, low: int, high: int) -> bool:
    return not isinstance(v, bool) and isinstance(v, int) and low <= v <= high


def _is_number(v) -> bool:
    return not isinstance(v, bool) and isinstance(v, (int, float)) and math.isfinite(v) and v >= 0


def _int_list(v, low: int, high: int, max_len: int = 4096) -> bool:
    return isinstance(v, list) and len(v) <= max_len and all(_is_int(x, low, high) for x in v)


def _v1_model(v) -> bool:
    sha = v.get("sha256") if isinstance(v, dict) else None
    return (isinstance(v, dict) and isinstance(v.get("name", ""), str) and isinstance(sha, str)
            and 16 <= len(sha) <= 64 and re.fullmatch(r"[0-9a-fA-F]*", sha) is not None)


def _v1_stages(v) -> bool:
    return (isinstance(v, list) and 1 <= len(v) <= 255
            and all(_is_int(x, 1, 255) or (isinstance(x, str) and len(x) <= 64) for x in v))


def _v1_layout(v) -> bool:
    return (isinstance(v, dict) and _int_list(v.get("lsf"), 1, 1 << 16)
            and isinstance(v.get("modules"), list) and len(v["modules"]) <= 255
            and all(isinstance(m, dict) and _is_int(m.get("positions"), 1, 4096)
                    and _int_list(m.get("alphabet_sizes"), 1, 1 << 16) for m in v["modules"]))


# The version-1 fields a reader uses, with the type and range each must have when present.
V1_FIELDS = {
    "num_chunks": ("an int in [0, 2**32)", lambda v: _is_int(v, 0, 2 ** 32 - 1)),
    "model": ("{'name': str, 'sha256': 16..64 hex digits}", _v1_model),
    "sample_rate": ("an int in [1, 1000000]", lambda v: _is_int(v, 1, 10 ** 6)),
    "num_samples": (f"an int in [1, {MAX_NUM_SAMPLES}]", lambda v: _is_int(v, 1, MAX_NUM_SAMPLES)),
    "num_frames": (f"an int in [1, {MAX_NUM_SAMPLES}]", lambda v: _is_int(v, 1, MAX_NUM_SAMPLES)),
    "frames_per_chunk": (f"an int in [1, {MAX_FRAMES_PER_CHUNK}]", lambda v: _is_int(v, 1, MAX_FRAMES_PER_CHUNK)),
    "stream_format": ("an int in [0, 255]", lambda v: _is_int(v, 0, 255)),
    "stages": ("a list of 1..255 module numbers or names", _v1_stages),
    "codebooks": ("a list of ints in [0, 255]", lambda v: _int_list(v, 0, 255, 255)),
    "alphabet_sizes": ("a list of ints in [1, 65536]", lambda v: _int_list(v, 1, 1 << 16)),
    "layout": ("{'lsf': [sizes], 'modules': [{'positions': int, 'alphabet_sizes': [sizes]}]}", _v1_layout),
    "bitrate_kbps": ("a finite number >= 0", _is_number),
    "estimated_bits": ("a finite number >= 0", _is_number),
    "entropy_kinds": ("a list of strings", lambda v: isinstance(v, list) and all(isinstance(x, str) for x in v)),
    "input_sample_rate": ("an int in [1, 10**7]", lambda v: _is_int(v, 1, 10 ** 7)),
    "input_channels": ("an int in [1, 65535]", lambda v: _is_int(v, 1, 65535)),
}


def parse_v1_metadata(raw: bytes, offset: int = 9) -> dict:
    """Version-1 metadata bytes -> dict, parsed with limits (size, nesting depth <= 16, integers
    of <= 30 digits, no NaN / Infinity) and every known field checked (`V1_FIELDS`); other keys
    are kept as they are (informative). Raises NacFormatError saying which field and why."""
    if len(raw) > MAX_METADATA_BYTES:
        raise NacFormatError(f"metadata at offset {offset} is {len(raw)} bytes, limit {MAX_METADATA_BYTES}")
    depth = _json_depth(raw)
    if depth > MAX_DEPTH:
        raise NacFormatError(f"metadata at offset {offset} nests {depth} deep (limit {MAX_DEPTH})")
    try:
        meta = json.loads(raw.decode("utf-8"), parse_int=_bounded_int, parse_constant=_no_constant)
    except (UnicodeDecodeError, ValueError, RecursionError) as e:   # JSONDecodeError is a ValueError
        raise NacFormatError(f"metadata at offset {offset} is not UTF-8 JSON within limits: {e}") from e
    if not isinstance(meta, dict):
        raise NacFormatError(f"metadata at offset {offset} is a JSON "
                             f"{type(meta).__name__}, expected an object")
    if "num_chunks" not in meta:
        raise NacFormatError(f"offset {offset}: metadata 'num_chunks' must be an int >= 0, got None")
    for key, (want, ok) in V1_FIELDS.items():
        if key in meta and not ok(meta[key]):
            raise NacFormatError(f"offset {offset}: metadata {key!r} must be {want}, got {_short(meta[key])}")
    return meta


def _short(v) -> str:
    text = repr(v)
    return text if len(text) <= 80 else text[:77] + "..."
