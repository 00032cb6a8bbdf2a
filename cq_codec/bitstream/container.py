"""The `.nac` container: seed 001's 9-byte prefix, a binary metadata block, CRC32-checked chunks.

Writers produce version 4; readers read versions 1, 2, 3 and 4. All integers are unsigned and
big-endian (network order).

Version 4 (what `write_nac` writes) has version 3's layout, below; only the model id it carries
differs: version 4 records `bitstream.identity.model_id` (code layout, entropy tables, weights),
versions 1-3 the hash of the model's config and weights (`codec_stream.model_sha256`). The
reader returns the same fields for both; the decoder checks the id the file's version implies.

Version 3 (`write_nac_v3`). The first 9 bytes are seed 001's header exactly, so a reader
written from the seed finds the bitrate at offset 8 and skips the metadata by its length:

    offset  size  field
    0       3     magic b"NAC"
    3       1     version (3; 4 the same layout)
    4       4     metadata length M: the bytes that follow this prefix up to the first chunk,
                  CRC included (M = 22 + k + N, so 23 .. 532)
    8       1     nominal bitrate in units of 0.25 kbps (round(kbps * 4), clamped to 0..255: 63.75
                  kbps and above read as 255); informative (the decoder never needs it)
    -- metadata block, M bytes:
    9       8     model id: the first 8 bytes of the model's sha256 (which covers its config,
                  code layout and entropy tables, so none of those are repeated here)
    17      5     num_samples: 16 kHz samples of decoded audio (1 .. 2**40 - 1)
    22      1     stream_format: layout of a chunk payload (see `codec_stream.STREAM_FORMAT`)
    23      2     frames_per_chunk: 30 ms hops per chunk (1 .. MAX_FRAMES_PER_CHUNK)
    25      1     k: number of modules used (cascade modules 1..k; k >= 1)
    26      k     codebooks per module: how many RVQ codebooks (quantizer streams) of module i the
                  stream carries, first to last; 0 = all of them (or not an RVQ quantizer)
    26 + k  1     model name length N (0..255)
    27 + k  N     model name, UTF-8 (informative; may be empty)
    27+k+N  4     CRC32 (zlib.crc32) of bytes [0, 27 + k + N), i.e. of everything before it
    then the chunks (see below). The sample rate is 16000 and a hop 480 samples, so
    num_frames = max(1, ceil(num_samples / 480)) and num_chunks = ceil(num_frames / frames_per_chunk).

Why 0.25 kbps for the bitrate byte: seed 001 gives the byte but no unit. Whole kbps would be
off by up to 0.5 kbps (5 % at the 9.4 kbps operating point); quarter kbps resolve every CQ
operating point to 1-3 % and still reach 63.75 kbps, above any of them; and versions 1 and 2
already stored this byte in this unit (version 1 at this very offset), so one unit serves all.

Version 2 (read only; `write_nac_v2` still writes it, for tests; 27 + N bytes before the chunks):

    0       3     magic b"NAC"
    3       1     version (2)
    4       8     model id (as in version 3)
    12      5     num_samples
    17      1     number of modules k >= 1
    18      2     frames_per_chunk
    20      1     stream_format
    21      1     nominal bitrate byte (0.25 kbps units)
    22      1     model name length N
    23      N     model name
    23 + N  4     CRC32 of bytes [0, 23 + N)

Version 1 (read only; `write_nac_v1` still writes it, for tests): seed 001's prefix too, with
JSON metadata:

    0       3     magic b"NAC"
    3       1     version (1)
    4       4     metadata length M in bytes (<= MAX_METADATA_BYTES)
    8       1     nominal bitrate byte (0.25 kbps units)
    9       M     metadata: UTF-8 JSON object; must hold "num_chunks" (int >= 0). Parsed with
                  limits (nesting depth <= 16, integers of <= 30 digits, no NaN/Infinity) and
                  every known field's type and range checked (`v1_metadata.V1_FIELDS`)
    9 + M   4     CRC32 of bytes [0, 9 + M)
    then the chunks.

Chunks (all versions), num_chunks times:

            4     chunk length L (<= MAX_CHUNK_BYTES)
            4     CRC32 of the chunk's L bytes
            L     chunk bytes (one entropy-coded payload, see `codec_stream.py`)
    end of file right after the last chunk.

Every byte is covered by a check: magic/version/lengths by parsing, the header by its CRC,
chunks by their CRC, truncation and trailing data by the chunk count. Any damage raises a
`NacError` subclass naming what is wrong and where (byte offset, chunk index). Hard limits keep
a hostile file from costing work or memory it does not carry: lengths are capped, a chunk
holds at most MAX_FRAMES_PER_CHUNK hops (123 s), and when the input is seekable the reader
refuses, before reading any chunk, a file too short for the chunk count its header declares.

Readers return the header fields as a metadata dict: for versions 2 and 3 the keys of
`build_metadata` plus the derived "sample_rate", "num_frames" and "num_chunks" (with "model":
{"name", "sha256"} where "sha256" is the 16 hex digits of the model id; version 2 reads as
"codebooks" all 0); for version 1 the stored JSON object.
"""

from __future__ import annotations

import io
import json
import struct
import zlib
from typing import BinaryIO, Iterator, NamedTuple, Sequence

import constants as C
from cq_codec.bitstream.limits import (MAX_CHUNK_BYTES, MAX_FRAMES_PER_CHUNK, MAX_METADATA_BYTES, MAX_NUM_SAMPLES,
                                      NacChecksumError, NacError, NacFormatError, NacVersionError)
from cq_codec.bitstream.v1_metadata import parse_v1_metadata

__all__ = [
    "MAGIC", "VERSION", "READ_VERSIONS", "MODEL_ID_BYTES", "MAX_METADATA_BYTES", "MAX_CHUNK_BYTES",
    "MAX_FRAMES_PER_CHUNK", "MAX_NUM_SAMPLES", "BITRATE_UNIT_KBPS",
    "NacError", "NacFormatError", "NacVersionError", "NacChecksumError", "NacHeader",
    "bitrate_to_byte", "stream_counts", "build_metadata", "write_nac", "write_nac_v3", "write_nac_v2", "write_nac_v1",
    "read_nac", "NacReader",
]

MAGIC = b"NAC"
VERSION = 4                          # what write_nac writes
READ_VERSIONS = (1, 2, 3, 4)
MODEL_ID_BYTES = 8
BITRATE_UNIT_KBPS = 0.25
_SEED = struct.Struct(">3sBIB")             # seed 001: magic, version, metadata length, bitrate
_PREFIX = struct.Struct(">3sB")             # magic, version
_V2 = struct.Struct(">8s5sBHBBB")           # model id, num_samples (u40), modules, frames/chunk,
                                            # stream format, bitrate byte, name length
_V3 = struct.Struct(">8s5sBHB")             # model id, num_samples (u40), stream format,
                                            # frames/chunk, modules k; then k bytes, name length
_V3_MIN = _V3.size + 1 + 4                  # k = 0 excluded by range check; + name length + CRC
_U32 = struct.Struct(">I")
_CHUNK = struct.Struct(">II")
_KEYS = {"model", "num_samples", "stages", "codebooks", "frames_per_chunk", "stream_format",
         "sample_rate", "num_frames", "num_chunks"}    # the last three are derived


class NacHeader(NamedTuple):
    version: int
    size: int           # bytes before the first chunk (header, metadata, header CRC)
    bitrate_byte: int

    @property
    def bitrate_kbps(self) -> float:
        """The nominal bitrate the header byte encodes (0.25 kbps resolution, <= 63.75)."""
        return self.bitrate_byte * BITRATE_UNIT_KBPS


def bitrate_to_byte(bitrate_kbps: float) -> int:
    """Nominal bitrate in kbps -> header byte: round(kbps / 0.25) clamped to 0..255."""
    kbps = float(bitrate_kbps)
    if not kbps >= 0:   # also rejects NaN
        raise ValueError(f"bitrate_kbps must be a nonnegative number, got {bitrate_kbps!r}")
    return min(255, int(round(kbps / BITRATE_UNIT_KBPS)))


def stream_counts(num_samples: int, frames_per_chunk: int) -> tuple[int, int]:
    """(num_frames, num_chunks) of a stream: max(1, ceil(samples / hop)), ceil(frames / fpc)."""
    num_frames = max(1, -(-num_samples // C.HOP_SIZE))
    return num_frames, -(-num_frames // frames_per_chunk)


def build_metadata(*, model_name: str, model_sha256: str, num_samples: int, num_modules: int | None = None,
                   frames_per_chunk: int, stream_format: int, codebooks: Sequence[int] | None = None,
                   num_stages: int | None = None) -> dict:
    """The metadata a version-3 or -4 header stores (`write_nac` checks the values). `num_modules`:
    the number k of cascade modules used (`num_stages`, its earlier name, is accepted); the key
    "stages" ([1..k], the modules used) keeps the name version 1's JSON gave it. `codebooks`: per
    module the RVQ codebooks used (None: [0] * k, 0 meaning all / not RVQ)."""
    if (num_modules is None) == (num_stages is None):
        raise TypeError("build_metadata needs num_modules (or its earlier name num_stages), once")
    k = int(num_modules if num_modules is not None else num_stages)
    return {"model": {"name": str(model_name), "sha256": str(model_sha256)},
            "num_samples": int(num_samples), "stages": list(range(1, k + 1)),
            "codebooks": [0] * k if codebooks is None else [int(c) for c in codebooks],
            "frames_per_chunk": int(frames_per_chunk), "stream_format": int(stream_format)}


def _field(meta: dict, key: str, low: int, high: int) -> int:
    v = meta.get(key)
    if isinstance(v, bool) or not isinstance(v, int) or not low <= v <= high:
        raise NacFormatError(f"metadata {key!r} must be an int in [{low}, {high}], got {v!r}")
    return v


def _frame(head: bytes, chunks: Sequence[bytes]) -> bytes:
    """head + its CRC32 + each chunk with its length and CRC32."""
    parts = [head, _U32.pack(zlib.crc32(head))]
    for i, chunk in enumerate(chunks):
        if not isinstance(chunk, (bytes, bytearray, memoryview)):
            raise TypeError(f"chunk {i} must be bytes, got {type(chunk).__name__}")
        chunk = bytes(chunk)
        if len(chunk) > MAX_CHUNK_BYTES:
            raise NacFormatError(f"chunk {i} is {len(chunk)} bytes, limit {MAX_CHUNK_BYTES}")
        parts += [_CHUNK.pack(len(chunk), zlib.crc32(chunk)), chunk]
    return b"".join(parts)


def _binary_fields(metadata: dict, chunks: Sequence[bytes], version: int) -> tuple:
    """Checks a version-2/3 metadata dict -> (model id, name bytes, num_samples, fpc, format, codebooks)."""
    if not isinstance(metadata, dict):
        raise TypeError(f"metadata must be a dict, got {type(metadata).__name__}")
    unknown = sorted(set(metadata) - _KEYS)
    if unknown:
        raise NacFormatError(f"the version-{version} header has no field for metadata keys {unknown}")
    model = metadata.get("model")
    sha = model.get("sha256") if isinstance(model, dict) else None
    try:
        model_id = bytes.fromhex(sha[: 2 * MODEL_ID_BYTES])
    except (TypeError, ValueError):
        model_id = b""
    if len(model_id) != MODEL_ID_BYTES or set(model) - {"name", "sha256"}:
        raise NacFormatError(f"metadata 'model' must be {{'name': str, 'sha256': hex digest of >= "
                             f"{2 * MODEL_ID_BYTES} digits}}, got {model!r}")
    name = str(model.get("name", "")).encode("utf-8")[:255].decode("utf-8", "ignore").encode("utf-8")
    num_samples = _field(metadata, "num_samples", 1, MAX_NUM_SAMPLES)
    fpc = _field(metadata, "frames_per_chunk", 1, MAX_FRAMES_PER_CHUNK)
    fmt = _field(metadata, "stream_format", 0, 0xFF)
    modules = metadata.get("stages")     # the modules used, [1..k] (the key's name is version 1's)
    if not isinstance(modules, list) or not 1 <= len(modules) <= 0xFF or modules != list(range(1, len(modules) + 1)):
        raise NacFormatError(f"metadata 'stages' must be [1..k] with 1 <= k <= 255, got {modules!r}")
    codebooks = metadata.get("codebooks", [0] * len(modules))
    if (not isinstance(codebooks, list) or len(codebooks) != len(modules)
            or any(isinstance(c, bool) or not isinstance(c, int) or not 0 <= c <= 0xFF for c in codebooks)):
        raise NacFormatError(f"metadata 'codebooks' must be one int in [0, 255] per module "
                             f"({len(modules)}), got {codebooks!r}")
    if version == 2 and any(codebooks):
        raise NacFormatError(f"the version-2 header cannot hold codebook counts {codebooks}")
    num_frames, num_chunks = stream_counts(num_samples, fpc)
    for key, want in (("sample_rate", C.SAMPLE_RATE), ("num_frames", num_frames), ("num_chunks", num_chunks)):
        if key in metadata and metadata[key] != want:
            raise NacFormatError(f"metadata {key!r} is {metadata[key]!r}, the header implies {want}")
    if len(chunks) != num_chunks:
        raise NacFormatError(f"{len(chunks)} chunks given, but {num_samples} samples at {fpc} frames "
                             f"per chunk make {num_chunks}")
    return model_id, name, num_samples, fpc, fmt, codebooks


def write_nac(metadata: dict, chunks: Sequence[bytes], bitrate_kbps: float) -> bytes:
    """Build a version-4 `.nac` file from `build_metadata`'s keys (the derived "sample_rate",
    "num_frames" and "num_chunks" may be given and must then match; "model"'s "sha256" is a hex
    digest of which the first 16 digits are stored; "codebooks" may be left out: all 0). Raises
    NacFormatError for values the header cannot hold, for keys it has no field for, and when
    len(chunks) is not the derived count."""
    return _write_v3_layout(metadata, chunks, bitrate_kbps, VERSION)


def write_nac_v3(metadata: dict, chunks: Sequence[bytes], bitrate_kbps: float) -> bytes:
    """Build a version-3 `.nac` file (the writer before version 4, whose model id was the config
    hash; kept to test the reader)."""
    return _write_v3_layout(metadata, chunks, bitrate_kbps, 3)


def _write_v3_layout(metadata: dict, chunks: Sequence[bytes], bitrate_kbps: float, version: int) -> bytes:
    model_id, name, num_samples, fpc, fmt, codebooks = _binary_fields(metadata, chunks, version)
    body = (_V3.pack(model_id, num_samples.to_bytes(5, "big"), fmt, fpc, len(codebooks))
            + bytes(codebooks) + bytes([len(name)]) + name)
    head = _SEED.pack(MAGIC, version, len(body) + 4, bitrate_to_byte(bitrate_kbps)) + body
    return _frame(head, chunks)


def write_nac_v2(metadata: dict, chunks: Sequence[bytes], bitrate_kbps: float) -> bytes:
    """Build a version-2 `.nac` file (the writer before version 3; kept to test the reader)."""
    model_id, name, num_samples, fpc, fmt, codebooks = _binary_fields(metadata, chunks, 2)
    head = (_PREFIX.pack(MAGIC, 2) + _V2.pack(model_id, num_samples.to_bytes(5, "big"), len(codebooks), fpc,
                                              fmt, bitrate_to_byte(bitrate_kbps), len(name)) + name)
    return _frame(head, chunks)


def write_nac_v1(metadata: dict, chunks: Sequence[bytes], bitrate_kbps: float) -> bytes:
    """Build a version-1 `.nac` file (JSON metadata; kept to test the version-1 reader).
    `metadata["num_chunks"]` is set to len(chunks) (must match if given)."""
    if not isinstance(metadata, dict):
        raise TypeError(f"metadata must be a dict, got {type(metadata).__name__}")
    meta = dict(metadata)
    if "num_chunks" in meta and meta["num_chunks"] != len(chunks):
        raise NacFormatError(f"metadata says num_chunks={meta['num_chunks']!r} but "
                             f"{len(chunks)} chunks were given")
    meta["num_chunks"] = len(chunks)
    try:
        meta_bytes = json.dumps(meta, sort_keys=True, separators=(",", ":"),
                                allow_nan=False).encode("utf-8")
    except (TypeError, ValueError) as e:
        raise NacFormatError(f"metadata is not JSON-serialisable: {e}") from e
    if len(meta_bytes) > MAX_METADATA_BYTES:
        raise NacFormatError(f"metadata is {len(meta_bytes)} bytes, limit {MAX_METADATA_BYTES}")
    head = _SEED.pack(MAGIC, 1, len(meta_bytes), bitrate_to_byte(bitrate_kbps)) + meta_bytes
    return _frame(head, chunks)


# ---------------------------------------------------------------- reader

class NacReader:
    """Streaming reader: parses and checks the header on construction, then yields chunks.

    `NacReader(fileobj)`; `.header` (NacHeader), `.metadata` (dict), `.num_chunks`,
    `.bytes_left` (bytes after the header when the file is seekable, else None); iterating yields
    each chunk's bytes after checking its CRC, holding one chunk in memory at a time, and checks
    that the file ends right after the last chunk. Iterate once.
    """

    def __init__(self, fileobj: BinaryIO):
        self._f = fileobj
        self._offset = 0
        prefix = self._read(_PREFIX.size, "header")
        magic, version = _PREFIX.unpack(prefix)
        if magic != MAGIC:
            raise NacFormatError(f"bad magic {magic!r} at offset 0 (expected {MAGIC!r}): "
                                 "not a .nac file")
        if version in (1, 3, 4):
            rate, self.metadata = self._read_seed_prefixed(prefix, version)
        elif version == 2:
            rate, self.metadata = self._read_v2(prefix)
        else:
            raise NacVersionError(f"unsupported .nac version {version} at offset 3 "
                                  "(this reader supports versions 1, 2, 3 and 4)")
        self.header = NacHeader(version, self._offset, rate)
        self.bytes_left = self._bytes_left()
        if self.bytes_left is not None and self.bytes_left < _CHUNK.size * self.num_chunks:
            raise NacFormatError(f"truncated .nac: the header declares {self.num_chunks} chunks (at least "
                                 f"{_CHUNK.size * self.num_chunks} bytes), only {self.bytes_left} bytes "
                                 f"follow at offset {self._offset}")
        self._started = False

    def _bytes_left(self) -> int | None:
        try:
            if not self._f.seekable():
                return None
            here = self._f.tell()
            end = self._f.seek(0, io.SEEK_END)
            self._f.seek(here)
            return end - here
        except (AttributeError, OSError, ValueError):
            return None

    def _read_seed_prefixed(self, prefix: bytes, version: int) -> tuple[int, dict]:
        rest = self._read(_SEED.size - _PREFIX.size, "header")
        meta_len, rate = struct.unpack(">IB", rest)
        if version == 1:
            if meta_len > MAX_METADATA_BYTES:
                raise NacFormatError(f"metadata length {meta_len} at offset 4 exceeds the limit "
                                     f"{MAX_METADATA_BYTES}")
            raw = self._read(meta_len, "metadata")
            self._check_header_crc(prefix + rest + raw)
            meta = parse_v1_metadata(raw, _SEED.size)
            self.num_chunks = meta["num_chunks"]
            return rate, meta
        low, high = _V3_MIN + 1, _V3_MIN + 2 * 255
        if not low <= meta_len <= high:
            raise NacFormatError(f"metadata length {meta_len} at offset 4 is outside the version-{version} "
                                 f"range [{low}, {high}]")
        block = self._read(meta_len, "metadata")
        head, (crc,) = prefix + rest + block[:-4], _U32.unpack(block[-4:])
        if zlib.crc32(head) != crc:
            raise NacChecksumError(f"header CRC mismatch (bytes 0..{len(head)}, CRC at offset "
                                   f"{len(head)}): header damaged")
        model_id, samples, fmt, fpc, k = _V3.unpack_from(block)
        pos = _V3.size
        codebooks = list(block[pos:pos + k])
        name_len = block[pos + k] if pos + k < len(block) - 4 else -1
        if k < 1 or meta_len != _V3_MIN + k + name_len:
            raise NacFormatError(f"metadata length {meta_len} at offset 4 does not match its fields "
                                 f"({k} modules at offset 25, a {name_len}-byte name)")
        name = block[pos + k + 1: pos + k + 1 + name_len]
        meta = self._binary_meta(model_id, samples, k, fpc, fmt, name, codebooks,
                                 {"num_samples": 17, "modules": 25, "frames_per_chunk": 23,
                                  "name": _SEED.size + pos + k + 1})
        return rate, meta

    def _read_v2(self, prefix: bytes) -> tuple[int, dict]:
        fixed = self._read(_V2.size, "header")
        model_id, samples, modules, fpc, fmt, rate, name_len = _V2.unpack(fixed)
        name = self._read(name_len, "model name")
        self._check_header_crc(prefix + fixed + name)
        meta = self._binary_meta(model_id, samples, modules, fpc, fmt, name, [0] * modules,
                                 {"num_samples": 12, "modules": 17, "frames_per_chunk": 18,
                                  "name": _PREFIX.size + _V2.size})
        return rate, meta

    def _binary_meta(self, model_id, samples, modules, fpc, fmt, name, codebooks, at: dict) -> dict:
        num_samples = int.from_bytes(samples, "big")
        if num_samples < 1 or modules < 1 or fpc < 1:
            raise NacFormatError(f"header: num_samples {num_samples} (offset {at['num_samples']}), modules "
                                 f"{modules} (offset {at['modules']}) and frames_per_chunk {fpc} (offset "
                                 f"{at['frames_per_chunk']}) must be >= 1")
        if fpc > MAX_FRAMES_PER_CHUNK:
            raise NacFormatError(f"header: frames_per_chunk {fpc} at offset {at['frames_per_chunk']} "
                                 f"exceeds the decoder's limit {MAX_FRAMES_PER_CHUNK}")
        try:
            name = name.decode("utf-8")
        except UnicodeDecodeError as e:
            raise NacFormatError(f"model name at offset {at['name']} is not UTF-8: {e}") from e
        num_frames, self.num_chunks = stream_counts(num_samples, fpc)
        meta = build_metadata(model_name=name, model_sha256=model_id.hex(), num_samples=num_samples,
                              num_modules=modules, frames_per_chunk=fpc, stream_format=fmt,
                              codebooks=codebooks)
        meta.update(sample_rate=C.SAMPLE_RATE, num_frames=num_frames, num_chunks=self.num_chunks)
        return meta

    def _check_header_crc(self, head: bytes) -> None:
        (crc,) = _U32.unpack(self._read(4, "header CRC"))
        if zlib.crc32(head) != crc:
            raise NacChecksumError(f"header CRC mismatch (bytes 0..{len(head)}, CRC at offset "
                                   f"{len(head)}): header damaged")

    def _read(self, n: int, what: str) -> bytes:
        data = self._f.read(n)
        if data is None or len(data) != n:
            got = 0 if data is None else len(data)
            raise NacFormatError(f"truncated .nac: {what} needs {n} bytes at offset "
                                 f"{self._offset}, only {got} left")
        self._offset += n
        return data

    def __iter__(self) -> Iterator[bytes]:
        if self._started:
            raise RuntimeError("a NacReader can be iterated only once")
        self._started = True
        return self._chunks()

    def _chunks(self) -> Iterator[bytes]:
        for i in range(self.num_chunks):
            start = self._offset
            length, crc = _CHUNK.unpack(self._read(_CHUNK.size, f"chunk {i} header"))
            if length > MAX_CHUNK_BYTES:
                raise NacFormatError(f"chunk {i} at offset {start}: length {length} exceeds the "
                                     f"limit {MAX_CHUNK_BYTES}")
            data = self._read(length, f"chunk {i} ({length} bytes)")
            if zlib.crc32(data) != crc:
                raise NacChecksumError(f"chunk {i} at offset {start} is damaged (CRC mismatch)",
                                       chunk_index=i)
            yield data
        extra = self._f.read(1)
        if extra:
            raise NacFormatError(f"trailing data at offset {self._offset} after the last of "
                                 f"{self.num_chunks} chunks")


def read_nac(data: bytes) -> tuple[NacHeader, dict, list[bytes]]:
    """Parse and fully check a `.nac` file in memory -> (header, metadata, chunks)."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise TypeError(f"data must be bytes, got {type(data).__name__}")
    reader = NacReader(io.BytesIO(bytes(data)))
    return reader.header, reader.metadata, list(reader)
