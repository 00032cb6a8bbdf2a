"""What the bitstream carries, independent of how it was made: `Codes` (one utterance) and
`CodeChunk` (consecutive hops), and the zeroth-order entropy of code streams.

numpy only. It sits below both `cq_codec.inference` (which makes codes) and
`cq_codec.bitstream` (which entropy-codes them), so neither needs the other for the types.
Also what a model's code streams cost at each operating point (`OperatingPoint`,
`fitting_point`), shared by both APIs.
"""

from __future__ import annotations

import dataclasses
import math
from typing import NamedTuple

import numpy as np

import constants as C

__all__ = ["Codes", "CodeChunk", "SIDE_STREAMS", "DEFAULT_FRAMES_PER_CHUNK", "num_hops_for", "stream_entropy_bits",
           "entropy_bits", "OperatingPoint", "BitrateError", "fitting_point"]

DEFAULT_FRAMES_PER_CHUNK = 250      # 7.5 s of audio per chunk
# Optional per-hop side information of some models, in payload order after the LSF codes:
# gain [n, subframes] (gain-shape coding), pitch [n, 4, 2] (long-term prediction: lag, gain).
SIDE_STREAMS = ("gain", "pitch")


@dataclasses.dataclass
class Codes:
    """What the bitstream carries for one utterance.

    lsf: int32 [T, 16] LSF codes, one row per hop; modules: list (one per module used) of int32
    [T, positions, S]; num_samples: the length of the original signal at 16 kHz; gain: int32
    [T, subframes] gain codes (models with gain-shape coding) or None; pitch: int32 [T, 4, 2]
    long-term predictor codes (lag, gain per sub-frame; models with it) or None.
    """

    lsf: np.ndarray
    modules: list
    num_samples: int
    gain: np.ndarray | None = None
    pitch: np.ndarray | None = None

    def chunks(self, frames_per_chunk: int = DEFAULT_FRAMES_PER_CHUNK) -> list["CodeChunk"]:
        """Split into consecutive `CodeChunk`s of `frames_per_chunk` hops (the last may be shorter)."""
        whole = CodeChunk(self.lsf, self.modules, self.gain, self.pitch)
        return [whole.hops(s, s + frames_per_chunk) for s in range(0, self.lsf.shape[0], frames_per_chunk)]

    @classmethod
    def join(cls, chunks: list["CodeChunk"], num_samples: int) -> "Codes":
        """Consecutive chunks (all with the same modules) -> one utterance's Codes."""
        if not chunks:
            raise ValueError("Codes.join needs at least one chunk")
        side = {}
        for k in SIDE_STREAMS:
            parts = [getattr(c, k) for c in chunks]
            if len({p is None for p in parts}) != 1:
                raise ValueError(f"Codes.join: some chunks carry {k} codes and others do not")
            side[k] = None if parts[0] is None else np.concatenate(parts)
        return cls(np.concatenate([c.lsf for c in chunks]),
                   [np.concatenate([c.modules[i] for c in chunks]) for i in range(len(chunks[0].modules))],
                   int(num_samples), **side)

    def entropy_bits(self) -> float:
        """Zeroth-order entropy of every stream (LSFs, side information and each module's), in
        bits: what an ideal coder with the utterance's own histograms would spend."""
        side = entropy_bits(self.lsf) + sum(entropy_bits(getattr(self, k)) for k in SIDE_STREAMS
                                            if getattr(self, k) is not None)
        return side + sum(entropy_bits(m) for m in self.modules)


class CodeChunk(NamedTuple):
    """Codes of consecutive hops: lsf int32 [n, 16], modules list of int32 [n, positions, S],
    gain int32 [n, subframes] and pitch int32 [n, 4, 2] (models with gain-shape coding / long-term
    prediction) or None."""

    lsf: np.ndarray
    modules: list
    gain: np.ndarray | None = None
    pitch: np.ndarray | None = None

    def hops(self, start: int, stop: int) -> "CodeChunk":
        """The codes of hops [start, stop) of this chunk."""
        return CodeChunk(self.lsf[start:stop], [m[start:stop] for m in self.modules],
                         *(None if getattr(self, k) is None else getattr(self, k)[start:stop] for k in SIDE_STREAMS))


def num_hops_for(num_samples: int) -> int:
    """Hops (= codec frames) that cover `num_samples` 16 kHz samples (at least one)."""
    return max(1, -(-int(num_samples) // C.HOP_SIZE))


def stream_entropy_bits(codes, alphabet_sizes=None) -> np.ndarray:
    """Codes [..., S] (S parallel streams; leading axes are occurrences) -> float64 [S]: each
    stream's plug-in zeroth-order entropy in bits per code (its own histogram).
    `alphabet_sizes` only checks the codes' range."""
    c = np.asarray(codes)
    if c.ndim < 1 or not np.issubdtype(c.dtype, np.integer):
        raise ValueError(f"codes must be an integer array [..., S]; got {c.dtype} {c.shape}")
    c = c.reshape(-1, c.shape[-1]) if c.ndim > 1 else c.reshape(-1, 1)
    out = np.zeros(c.shape[1])
    if len(c) == 0:
        return out
    if c.min() < 0 or (alphabet_sizes is not None and np.any(c.max(0) >= np.asarray(alphabet_sizes))):
        raise ValueError("codes outside their alphabet")
    for s in range(c.shape[1]):
        counts = np.bincount(c[:, s]).astype(np.float64)
        p = counts[counts > 0] / len(c)
        out[s] = -float(np.sum(p * np.log2(p)))
    return out


def entropy_bits(codes) -> float:
    """Total zeroth-order entropy of codes [N, S] or [N, P, S] (streams along the last axis), in
    bits: sum over streams of (number of codes x bits per code)."""
    c = np.asarray(codes)
    n = c.size // max(c.shape[-1], 1) if c.ndim > 1 else c.size
    return float(n * stream_entropy_bits(c).sum())


# ------------------------------------------------------------------ operating points
class OperatingPoint(NamedTuple):
    """One way to code with a model: `modules` used (the cascade's first k; 1 for the waveform
    codec), expected `kbps` (entropy-coded, from the tables fitted after training), `codebooks`
    used per module (RVQ: any number of its first codebooks; other quantizers: all their streams).
    Indexing keeps the old pair's meaning: p[0] modules, p[1] kbps."""

    modules: int
    kbps: float
    codebooks: tuple


class BitrateError(ValueError):
    """A requested bitrate that no operating point of the model can reach."""


def fitting_point(points: list, bitrate_kbps: float, what: str = "codebooks") -> OperatingPoint:
    """The point with the highest expected kbps <= bitrate_kbps; BitrateError naming the
    cheapest point when none fits (or for a bitrate that is not a positive number)."""
    try:
        kbps = float(bitrate_kbps)
    except (TypeError, ValueError):
        kbps = float("nan")
    if not kbps > 0 or not math.isfinite(kbps):
        raise BitrateError(f"bitrate must be a positive number of kbps, got {bitrate_kbps!r}")
    fits = [p for p in points if p.kbps <= kbps]
    if not fits:
        low = min(points, key=lambda p: p.kbps)
        raise BitrateError(f"--bitrate {kbps:g} kbps is below every operating point of this model: the cheapest "
                           f"is {low.modules} module(s) with {list(low.codebooks)} {what} at about {low.kbps:.2f} kbps")
    return max(fits, key=lambda p: (p.kbps, p.modules))
