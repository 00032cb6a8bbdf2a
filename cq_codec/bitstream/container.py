"""The `.nac` container: a versioned header, JSON metadata and CRC32-checked payload chunks.

Layout (all integers unsigned, network byte order):

    offset  size  field
    0       3     magic b"NAC"
    3       1     version (1)
    4       4     metadata length M in bytes (<= 1 MiB)
    8       1     nominal bitrate in units of 0.25 kbps (round(kbps * 4), clamped to 0..255,
                  so 63.75 kbps and above read as 255); informative only: the metadata holds
                  the exact value under "bitrate_kbps"
    9       M     metadata: UTF-8 JSON object; must hold "num_chunks" (int >= 0)
    9 + M   4     CRC32 (zlib.crc32) of bytes [0, 9 + M): the header and the metadata
    then, num_chunks times:
            4     chunk length L (<= 64 MiB)
            4     CRC32 of the chunk's L bytes
            L     chunk bytes (e.g. one entropy-coded payload, see `entropy.py`)
    end of file right after the last chunk.

Every byte is covered by a check: magic/version/lengths by parsing, header and metadata by
the header CRC, chunks by their CRC, truncation and trailing data by the chunk count. Any
damage raises a `NacError` subclass naming what is wrong and where (byte offset, chunk index);
the length limits keep a damaged length field from causing a huge allocation.

What the metadata holds is up to the codec (see `build_metadata` for the usual keys).
"""

from __future__ import annotations

import io
import json
import struct
import zlib
from typing import BinaryIO, Iterator, NamedTuple, Sequence

__all__ = [
    "MAGIC", "VERSION", "HEADER_SIZE", "MAX_METADATA_BYTES", "MAX_CHUNK_BYTES", "BITRATE_UNIT_KBPS",
    "NacError", "NacFormatError", "NacVersionError", "NacChecksumError", "NacHeader",
    "bitrate_to_byte", "build_metadata", "write_nac", "read_nac", "NacReader",
]

MAGIC = b"NAC"
VERSION = 1
_HEADER = struct.Struct(">3sBIB")
HEADER_SIZE = _HEADER.size          # 9
_U32 = struct.Struct(">I")
_CHUNK = struct.Struct(">II")
MAX_METADATA_BYTES = 1 << 20
MAX_CHUNK_BYTES = 64 << 20
BITRATE_UNIT_KBPS = 0.25


class NacError(ValueError):
    """Base class of every error reading or writing a `.nac` container."""


class NacFormatError(NacError):
    """Bad magic, truncation, bad lengths, bad metadata JSON, chunk count mismatch."""


class NacVersionError(NacError):
    """The container's version is not one this reader supports."""


class NacChecksumError(NacError):
    """A CRC32 does not match: the header/metadata or a chunk (see `chunk_index`) is damaged."""

    def __init__(self, message: str, chunk_index: int | None = None):
        super().__init__(message)
        self.chunk_index = chunk_index      # None: the header/metadata CRC failed


class NacHeader(NamedTuple):
    version: int
    metadata_length: int
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


def build_metadata(*, model_name: str, model_sha256: str, sample_rate: int, num_samples: int,
                   stages: Sequence, alphabet_sizes: Sequence[int], num_chunks: int,
                   frames_per_chunk: int, num_frames: int, bitrate_kbps: float, **extra) -> dict:
    """The usual metadata keys of a cq-codec stream (extra keys are passed through)."""
    meta = {"model": {"name": str(model_name), "sha256": str(model_sha256)},
            "sample_rate": int(sample_rate), "num_samples": int(num_samples),
            "stages": list(stages), "alphabet_sizes": [int(a) for a in alphabet_sizes],
            "num_chunks": int(num_chunks), "frames_per_chunk": int(frames_per_chunk),
            "num_frames": int(num_frames), "bitrate_kbps": float(bitrate_kbps)}
    meta.update(extra)
    return meta


def _check_num_chunks(metadata: dict, where: str) -> int:
    n = metadata.get("num_chunks")
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise NacFormatError(f"{where}: metadata 'num_chunks' must be an int >= 0, got {n!r}")
    return n


def write_nac(metadata: dict, chunks: Sequence[bytes], bitrate_kbps: float) -> bytes:
    """Build a `.nac` file. `metadata["num_chunks"]` is set to len(chunks) (must match if given)."""
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
    head = _HEADER.pack(MAGIC, VERSION, len(meta_bytes), bitrate_to_byte(bitrate_kbps)) + meta_bytes
    parts = [head, _U32.pack(zlib.crc32(head))]
    for i, chunk in enumerate(chunks):
        if not isinstance(chunk, (bytes, bytearray, memoryview)):
            raise TypeError(f"chunk {i} must be bytes, got {type(chunk).__name__}")
        chunk = bytes(chunk)
        if len(chunk) > MAX_CHUNK_BYTES:
            raise NacFormatError(f"chunk {i} is {len(chunk)} bytes, limit {MAX_CHUNK_BYTES}")
        parts += [_CHUNK.pack(len(chunk), zlib.crc32(chunk)), chunk]
    return b"".join(parts)


class NacReader:
    """Streaming reader: parses header and metadata on construction, then yields chunks.

    `NacReader(fileobj)`; `.header` (NacHeader), `.metadata` (dict); iterating yields each
    chunk's bytes after checking its CRC, holding one chunk in memory at a time, and checks
    that the file ends right after the last chunk. Iterate once.
    """

    def __init__(self, fileobj: BinaryIO):
        self._f = fileobj
        self._offset = 0
        raw = self._read(HEADER_SIZE, "header")
        magic, version, meta_len, rate = _HEADER.unpack(raw)
        if magic != MAGIC:
            raise NacFormatError(f"bad magic {magic!r} at offset 0 (expected {MAGIC!r}): "
                                 "not a .nac file")
        if version != VERSION:
            raise NacVersionError(f"unsupported .nac version {version} at offset 3 "
                                  f"(this reader supports version {VERSION})")
        if meta_len > MAX_METADATA_BYTES:
            raise NacFormatError(f"metadata length {meta_len} at offset 4 exceeds the limit "
                                 f"{MAX_METADATA_BYTES}")
        meta_bytes = self._read(meta_len, "metadata")
        (crc,) = _U32.unpack(self._read(4, "header CRC"))
        if zlib.crc32(raw + meta_bytes) != crc:
            raise NacChecksumError(f"header/metadata CRC mismatch (bytes 0..{HEADER_SIZE + meta_len},"
                                   f" CRC at offset {HEADER_SIZE + meta_len}): header damaged")
        try:
            meta = json.loads(meta_bytes.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise NacFormatError(f"metadata at offset {HEADER_SIZE} is not UTF-8 JSON: {e}") from e
        if not isinstance(meta, dict):
            raise NacFormatError(f"metadata at offset {HEADER_SIZE} is a JSON "
                                 f"{type(meta).__name__}, expected an object")
        self.num_chunks = _check_num_chunks(meta, f"offset {HEADER_SIZE}")
        self.header = NacHeader(version, meta_len, rate)
        self.metadata = meta
        self._started = False

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
