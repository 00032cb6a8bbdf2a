"""Reading any audio file as 16 kHz mono float32 (soundfile to read, soxr to resample).

A file that cannot be decoded, or holds no samples, raises `AudioError` naming the path and the
reason, so corpus readers can report it and go on.
"""

from __future__ import annotations

import io
import os
import re
import sys
from typing import Iterable, Iterator

import numpy as np
import soundfile as sf
import soxr

import constants

__all__ = ["AUDIO_EXTENSIONS", "AudioError", "is_audio_path", "to_mono", "resample",
           "load_audio", "write_wav", "AudioInput", "read_audio_blocks", "array_blocks", "to_16k_blocks", "BLOCK"]

AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg")


class AudioError(ValueError):
    """An audio file that cannot be used: unreadable, not audio, or empty."""

    def __init__(self, path: str, reason: str):
        super().__init__(f"{path}: {reason}")
        self.path = str(path)
        self.reason = reason


def is_audio_path(path: str | os.PathLike) -> bool:
    """True if the file name ends in one of `AUDIO_EXTENSIONS` (any case)."""
    return str(path).lower().endswith(AUDIO_EXTENSIONS)


def to_mono(x: np.ndarray) -> np.ndarray:
    """[N] or [N, C] -> [N]: the mean over channels."""
    x = np.asarray(x)
    if x.ndim == 1:
        return x
    if x.ndim != 2:
        raise ValueError(f"audio must be [N] or [N, channels], got shape {x.shape}")
    return x.mean(axis=1)


def resample(x: np.ndarray, rate_in: int, rate_out: int = constants.SAMPLE_RATE) -> np.ndarray:
    """[N] at `rate_in` -> [round(N * rate_out / rate_in)] float32 at `rate_out` (soxr HQ)."""
    if rate_in <= 0 or rate_out <= 0:
        raise ValueError(f"sample rates must be positive, got {rate_in} -> {rate_out}")
    x = np.asarray(x, dtype=np.float32)
    if rate_in == rate_out:
        return x
    return soxr.resample(x, rate_in, rate_out, quality="HQ").astype(np.float32, copy=False)


def load_audio(path: str | os.PathLike, sample_rate: int = constants.SAMPLE_RATE) -> np.ndarray:
    """Reads wav / flac / ogg / NIST SPHERE (anything libsndfile reads) -> float32 [N] mono.

    Any rate or channel count: channels are averaged, the rate is converted to `sample_rate`.
    Raises `AudioError` if the file is unreadable, not audio, empty or not finite.
    """
    path = str(path)
    if not os.path.isfile(path):
        raise AudioError(path, "no such file")
    try:
        x, rate = sf.read(path, dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError, OSError, ValueError, EOFError) as e:
        raise AudioError(path, f"cannot decode ({type(e).__name__}: {e})") from e
    if x.shape[0] == 0 or x.shape[1] == 0:
        raise AudioError(path, "empty (no samples)")
    if not np.all(np.isfinite(x)):
        raise AudioError(path, "contains NaN or infinite samples")
    return resample(to_mono(x), rate, sample_rate)


def write_wav(path: str | os.PathLike, x: np.ndarray,
              sample_rate: int = constants.SAMPLE_RATE) -> None:
    """Writes float [N] in [-1, 1] as 16-bit PCM wav (clipped)."""
    x = np.clip(np.asarray(x, dtype=np.float32), -1.0, 1.0)
    sf.write(str(path), x, sample_rate, subtype="PCM_16")


# ------------------------------------------------------------------ streaming (the codec's input)
BLOCK = 1 << 16         # input samples per read


class AudioInput:
    """What `read_audio_blocks` found: `sample_rate`, `channels` of the source; `blocks` yields
    float64 16 kHz mono blocks."""

    def __init__(self, sample_rate: int, channels: int, blocks: Iterator[np.ndarray]):
        self.sample_rate, self.channels, self.blocks = int(sample_rate), int(channels), blocks

    @property
    def converted(self) -> bool:
        return self.sample_rate != constants.SAMPLE_RATE or self.channels != 1


def to_16k_blocks(chunks: Iterable[np.ndarray], rate: int) -> Iterator[np.ndarray]:
    """[n, channels] blocks at `rate` -> 16 kHz mono float64 blocks (channel mean, streaming soxr)."""
    stream = None if rate == constants.SAMPLE_RATE else soxr.ResampleStream(rate, constants.SAMPLE_RATE, 1, dtype="float64",
                                                                     quality="HQ")
    for x in chunks:
        mono = np.asarray(x, np.float64).mean(axis=1)
        if not np.all(np.isfinite(mono)):
            raise ValueError("the audio contains NaN or infinite samples")
        y = mono if stream is None else stream.resample_chunk(mono, last=False)
        if y.size:
            yield y
    if stream is not None:
        y = stream.resample_chunk(np.zeros(0), last=True)
        if y.size:
            yield y


def read_audio_blocks(source, block: int = BLOCK) -> AudioInput:
    """A path, file object or `-` (stdin) of any libsndfile format -> AudioInput (16 kHz mono blocks).

    Raises FileNotFoundError for a missing path and ValueError naming the source for non-audio.
    """
    name = "stdin" if source == "-" else str(getattr(source, "name", source))
    if source == "-":
        source = io.BytesIO(sys.stdin.buffer.read())   # pipes are not seekable; libsndfile wants to seek
        if not source.getbuffer().nbytes:
            raise ValueError("input 'stdin' is empty: no audio was piped in")
    elif isinstance(source, (str, os.PathLike)) and not os.path.isfile(source):
        raise FileNotFoundError(f"input audio {name!r}: no such file")
    try:
        f = sf.SoundFile(source)
    except (sf.LibsndfileError, RuntimeError, OSError, EOFError) as e:
        why = re.sub(r"Error opening <[^>]*>: ", "", str(e))     # libsndfile names file objects by repr
        raise ValueError(f"input {name!r} is not a readable audio file ({why})") from e

    def blocks():
        with f:
            yield from to_16k_blocks(f.blocks(blocksize=block, dtype="float64", always_2d=True), f.samplerate)
    return AudioInput(f.samplerate, f.channels, blocks())


def array_blocks(wav, sr: int, block: int = BLOCK) -> Iterator[np.ndarray]:
    """An array [N] or [N, channels] at `sr` -> 16 kHz mono float64 blocks (ValueError for a bad
    array or rate)."""
    x = np.asarray(wav)
    if x.ndim == 1:
        x = x[:, None]
    if x.ndim != 2 or not np.issubdtype(x.dtype, np.number):
        raise ValueError(f"wav must be a numeric array [N] or [N, channels], got {x.dtype} {x.shape}")
    if isinstance(sr, bool) or int(sr) != sr or sr <= 0:
        raise ValueError(f"sample rate must be a positive int, got {sr!r}")
    return to_16k_blocks((x[s:s + block] for s in range(0, len(x), block)), int(sr))
