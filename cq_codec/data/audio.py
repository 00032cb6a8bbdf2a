"""Reading any audio file as 16 kHz mono float32 (soundfile to read, soxr to resample).

A file that cannot be decoded, or holds no samples, raises `AudioError` naming the path and the
reason, so corpus readers can report it and go on.
"""

from __future__ import annotations

import os

import numpy as np
import soundfile as sf
import soxr

import constants

__all__ = ["AUDIO_EXTENSIONS", "AudioError", "is_audio_path", "to_mono", "resample",
           "load_audio", "write_wav"]

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
