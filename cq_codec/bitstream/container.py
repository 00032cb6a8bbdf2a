"""The `.nac` container: a compact versioned binary header, then CRC32-checked payload chunks.

Writers produce version 2; readers read versions 1 and 2. All integers are unsigned and
big-endian.

Version 2 (what `write_nac` writes; 27 + N bytes before the first chunk):

    offset  size  field
    0       3     magic b"NAC"
    3       1     version (2)
    4       8     model id: the first 8 bytes of the model's sha256 (which covers its config,
                  code layout and entropy tables, so none of those are repeated here)
    12      5     num_samples: 16 kHz samples of decoded audio (1 .. 2**40 - 1)
    17      1     number of active stages (cascade modules) k >= 1; the stages are [1..k]
    18      2     frames_per_chunk: 30 ms hops per chunk (>= 1)
    20      1     stream_format: layout of a chunk payload (see `codec_stream.STREAM_FORMAT`)
    21      1     nominal bitrate in units of 0.25 kbps (round(kbps * 4), clamped to 0..255, so
                  63.75 kbps and above read as 255); informative only
    22      1     model name length N (0..255)
    23      N     model name, UTF-8 (informative; may be empty)
    23 + N  4     CRC32 (zlib.crc32) of bytes [0, 23 + N)
    then the chunks (see below). The sample rate is 16000 and a hop 480 samples, so
    num_frames = max(1, ceil(num_samples / 480)) and num_chunks = ceil(num_frames / frames_per_chunk).

Version 1 (read only; `write_nac_v1` still writes it, for tests):

    0       3     magic b"NAC"
    3       1     version (1)
    4       4     metadata length M in bytes (<= 1 MiB)
    8       1     nominal bitrate byte, as in version 2
    9       M     metadata: UTF-8 JSON object; must hold "num_chunks" (int >= 0)
    9 + M   4     CRC32 of bytes [0, 9 + M)
    then the chunks.

Chunks (both versions), num_chunks times:

            4     chunk length L (<= 64 MiB)
            4     CRC32 of the chunk's L bytes
            L     chunk bytes (one entropy-coded payload, see `codec_stream.py`)
    end of file right after the last chunk.

Every byte is covered by a check: magic/version/lengths by parsing, the header by its CRC,
chunks by their CRC, truncation and trailing data by the chunk count. Any damage raises a
`NacError` subclass naming what is wrong and where (byte offset, chunk index); the length
limits keep a damaged length field from causing a huge allocation.

Readers return the header fields as a metadata dict: for version 2 the keys of `build_metadata`
plus the derived "sample_rate", "num_frames" and "num_chunks" (with "model": {"name", "sha256"}
where "sha256" is the 16 hex digits of the model id); for version 1 the stored JSON object.
"""

from __future__ import annotations

import io
import json
import struct
import zlib
from typing import BinaryIO, Iterator, NamedTuple, Sequence

import constants as C

__all__ = [
    "MAGIC", "VERSION", "MODEL_ID_BYTES", "MAX_METADATA_BYTES", "MAX_CHUNK_BYTES", "BITRATE_UNIT_KBPS",
    "NacError", "NacFormatError", "NacVersionError", "NacChecksumError", "NacHeader",
    "bitrate_to_byte", "stream_counts", "build_metadata", "write_nac", "write_nac_v1", "read_nac",
    "NacReader",
]

MAGIC = b"NAC"
VERSION = 2                          # what write_nac writes
MODEL_ID_BYTES = 8
MAX_METADATA_BYTES = 1 << 20         # version 1
MAX_CHUNK_BYTES = 64 << 20
BITRATE_UNIT_KBPS = 0.25
_PREFIX = struct.Struct(">3sB")             # magic, version
_V1 = struct.Struct(">IB")                  # metadata length, bitrate byte
_V2 = struct.Struct(">8s5sBHBBB")           # model id, num_samples (u40), stages, frames/chunk,
                                            # stream format, bitrate byte, name length
_U32 = struct.Struct(">I")
_CHUNK = struct.Struct(">II")
_V2_KEYS = {"model", "num_samples", "stages", "frames_per_chunk", "stream_format",
            "sample_rate", "num_frames", "num_chunks"}    # the last three are derived


class NacError(ValueError):
    """Base class of every error reading or writing a `.nac` container."""


class NacFormatError(NacError):
    """Bad magic, truncation, bad lengths or fields, bad metadata JSON, chunk count mismatch."""


class NacVersionError(NacError):
    """The container's version is not one this reader supports."""


class NacChecksumError(NacError):
    """A CRC32 does not match: the header or a chunk (see `chunk_index`) is damaged."""

    def __init__(self, message: str, chunk_index: int | None = None):
        super().__init__(message)
        self.chunk_index = chunk_index      # None: the header CRC failed


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


def build_metadata(*, model_name: str, model_sha256: str, num_samples: int, num_stages: int,
                   frames_per_chunk: int, stream_format: int) -> dict:
    """The metadata a version-2 header stores (`write_nac` checks the values)."""
    return {"model": {"name": str(model_name), "sha256": str(model_sha256)},
            "num_samples": int(num_samples), "stages": list(range(1, int(num_stages) + 1)),
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


def write_nac(metadata: dict, chunks: Sequence[bytes], bitrate_kbps: float) -> bytes:
    """Build a version-2 `.nac` file from `build_metadata`'s keys (the derived "sample_rate",
    "num_frames" and "num_chunks" may be given and must then match; "model"'s "sha256" is a hex
    digest of which the first 16 digits are stored). Raises NacFormatError for values the header
    cannot hold, for keys it has no field for, and when len(chunks) is not the derived count."""
    if not isinstance(metadata, dict):
        raise TypeError(f"metadata must be a dict, got {type(metadata).__name__}")
    unknown = sorted(set(metadata) - _V2_KEYS)
    if unknown:
        raise NacFormatError(f"the version-2 header has no field for metadata keys {unknown}")
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
    num_samples = _field(metadata, "num_samples", 1, 2 ** 40 - 1)
    fpc = _field(metadata, "frames_per_chunk", 1, 0xFFFF)
    fmt = _field(metadata, "stream_format", 0, 0xFF)
    stages = metadata.get("stages")
    if not isinstance(stages, list) or not 1 <= len(stages) <= 0xFF or stages != list(range(1, len(stages) + 1)):
        raise NacFormatError(f"metadata 'stages' must be [1..k] with 1 <= k <= 255, got {stages!r}")
    num_frames, num_chunks = stream_counts(num_samples, fpc)
    for key, want in (("sample_rate", C.SAMPLE_RATE), ("num_frames", num_frames), ("num_chunks", num_chunks)):
        if key in metadata and metadata[key] != want:
            raise NacFormatError(f"metadata {key!r} is {metadata[key]!r}, the header implies {want}")
    if len(chunks) != num_chunks:
        raise NacFormatError(f"{len(chunks)} chunks given, but {num_samples} samples at {fpc} frames "
                             f"per chunk make {num_chunks}")
    head = (_PREFIX.pack(MAGIC, VERSION) + _V2.pack(model_id, num_samples.to_bytes(5, "big"), len(stages), fpc,
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
    head = _PREFIX.pack(MAGIC, 1) + _V1.pack(len(meta_bytes), bitrate_to_byte(bitrate_kbps)) + meta_bytes
    return _frame(head, chunks)


class NacReader:
    """Streaming reader: parses and checks the header on construction, then yields chunks.

    `NacReader(fileobj)`; `.header` (NacHeader), `.metadata` (dict), `.num_chunks`; iterating
    yields each chunk's bytes after checking its CRC, holding one chunk in memory at a time, and
    checks that the file ends right after the last chunk. Iterate once.
    """

    def __init__(self, fileobj: BinaryIO):
        self._f = fileobj
        self._offset = 0
        prefix = self._read(_PREFIX.size, "header")
        magic, version = _PREFIX.unpack(prefix)
        if magic != MAGIC:
            raise NacFormatError(f"bad magic {magic!r} at offset 0 (expected {MAGIC!r}): "
                                 "not a .nac file")
        if version == 1:
            rate, self.metadata = self._read_v1(prefix)
        elif version == 2:
            rate, self.metadata = self._read_v2(prefix)
        else:
            raise NacVersionError(f"unsupported .nac version {version} at offset 3 "
                                  "(this reader supports versions 1 and 2)")
        self.header = NacHeader(version, self._offset, rate)
        self._started = False

    def _read_v1(self, prefix: bytes) -> tuple[int, dict]:
        fixed = self._read(_V1.size, "header")
        meta_len, rate = _V1.unpack(fixed)
        if meta_len > MAX_METADATA_BYTES:
            raise NacFormatError(f"metadata length {meta_len} at offset 4 exceeds the limit "
                                 f"{MAX_METADATA_BYTES}")
        meta_bytes = self._read(meta_len, "metadata")
        self._check_header_crc(prefix + fixed + meta_bytes)
        start = _PREFIX.size + _V1.size
        try:
            meta = json.loads(meta_bytes.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise NacFormatError(f"metadata at offset {start} is not UTF-8 JSON: {e}") from e
        if not isinstance(meta, dict):
            raise NacFormatError(f"metadata at offset {start} is a JSON "
                                 f"{type(meta).__name__}, expected an object")
        n = meta.get("num_chunks")
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            raise NacFormatError(f"offset {start}: metadata 'num_chunks' must be an int >= 0, got {n!r}")
        self.num_chunks = n
        return rate, meta

    def _read_v2(self, prefix: bytes) -> tuple[int, dict]:
        fixed = self._read(_V2.size, "header")
        model_id, samples, stages, fpc, fmt, rate, name_len = _V2.unpack(fixed)
        name = self._read(name_len, "model name")
        self._check_header_crc(prefix + fixed + name)
        num_samples = int.from_bytes(samples, "big")
        if num_samples < 1 or stages < 1 or fpc < 1:
            raise NacFormatError(f"header: num_samples {num_samples} (offset 12), stages {stages} "
                                 f"(offset 17) and frames_per_chunk {fpc} (offset 18) must be >= 1")
        try:
            name = name.decode("utf-8")
        except UnicodeDecodeError as e:
            raise NacFormatError(f"model name at offset {_PREFIX.size + _V2.size} is not UTF-8: {e}") from e
        num_frames, self.num_chunks = stream_counts(num_samples, fpc)
        meta = build_metadata(model_name=name, model_sha256=model_id.hex(), num_samples=num_samples,
                              num_stages=stages, frames_per_chunk=fpc, stream_format=fmt)
        meta.update(sample_rate=C.SAMPLE_RATE, num_frames=num_frames, num_chunks=self.num_chunks)
        return rate, meta

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
