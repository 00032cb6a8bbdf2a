"""The `.nac` format's errors and size limits: shared by the container (`container.py`) and the
version-1 metadata parser (`v1_metadata.py`), which both import them from here.
"""

from __future__ import annotations

__all__ = ["MAX_METADATA_BYTES", "MAX_CHUNK_BYTES", "MAX_FRAMES_PER_CHUNK", "MAX_NUM_SAMPLES",
           "NacError", "NacFormatError", "NacVersionError", "NacChecksumError"]

MAX_METADATA_BYTES = 64 << 10        # version 1's JSON (the old writer's was 570-680 bytes)
MAX_CHUNK_BYTES = 64 << 20
MAX_FRAMES_PER_CHUNK = 4096          # hops per chunk (122.9 s): caps a chunk's decoded size
MAX_NUM_SAMPLES = 2 ** 40 - 1        # 2.2 years at 16 kHz: what the 5-byte field holds


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
