"""Per-utterance preprocessing and training examples (numpy), as in docs/DESIGN.md.

audio [N] (16 kHz mono) -> lpc.highpass -> lpc.preemphasis -> y [N]; lpc.analyze(y) -> one LSF
vector per hop. Dividing by the corpus std happens when examples are read (the LSFs do not
depend on the scale). Codec frame t covers samples [t * HOP_SIZE, t * HOP_SIZE + FRAME_SIZE);
its example is x = y[t * HOP_SIZE - 16 : t * HOP_SIZE + FRAME_SIZE] (zeros outside the
utterance) and lsf = LSFs of hops t-1, t, t+1 (clamped to the utterance).
"""

from __future__ import annotations

import numpy as np

import constants as C
import lpc

__all__ = ["HISTORY", "EXAMPLE_SIZE", "num_frames", "preprocess_audio", "analyze_utterance",
           "padded_segment", "lsf_neighbours", "frame_examples"]

HISTORY = C.LPC_ORDER                   # 16 samples of filter history before each frame
EXAMPLE_SIZE = HISTORY + C.FRAME_SIZE   # 528


def num_frames(num_samples: int) -> int:
    """Codec frames (= LPC hops) of an utterance: ceil(N / HOP_SIZE), at least 1."""
    return max(1, -(-int(num_samples) // C.HOP_SIZE))


def preprocess_audio(audio: np.ndarray) -> np.ndarray:
    """[N] 16 kHz mono -> [N] float64: high-pass, then pre-emphasis (zero initial states)."""
    audio = np.asarray(audio)
    if audio.ndim != 1:
        raise ValueError(f"audio must be mono [N], got shape {audio.shape}")
    if audio.size == 0:
        raise ValueError("audio is empty")
    y, _ = lpc.highpass(audio)
    y, _ = lpc.preemphasis(y)
    return y


def analyze_utterance(y: np.ndarray) -> np.ndarray:
    """[N] preprocessed signal -> lsf [num_frames(N), 16] float32 (lpc.analyze)."""
    return lpc.analyze(y, num_frames(len(y))).astype(np.float32)


def padded_segment(y: np.ndarray) -> np.ndarray:
    """[N] -> float32 [(T - 1) * HOP_SIZE + EXAMPLE_SIZE]: HISTORY zeros, y, zeros.

    Frame t's example x is segment[t * HOP_SIZE : t * HOP_SIZE + EXAMPLE_SIZE].
    """
    t = num_frames(len(y))
    seg = np.zeros((t - 1) * C.HOP_SIZE + EXAMPLE_SIZE, np.float32)
    seg[HISTORY:HISTORY + len(y)] = y
    return seg


def lsf_neighbours(num_hops: int) -> np.ndarray:
    """int [T, 3]: hop indices (t - 1, t, t + 1) clamped to [0, T - 1]."""
    t = np.arange(num_hops)
    return np.clip(np.stack([t - 1, t, t + 1], axis=1), 0, num_hops - 1)


def frame_examples(y: np.ndarray, lsf: np.ndarray, std: float = 1.0
                   ) -> tuple[np.ndarray, np.ndarray]:
    """All examples of one utterance: (x [T, 528] float32, lsf [T, 3, 16] float32).

    y: [N] preprocessed signal; lsf: [T, 16] from `analyze_utterance`; std: corpus std.
    """
    t = num_frames(len(y))
    lsf = np.asarray(lsf, np.float32)
    if lsf.shape != (t, C.LPC_ORDER):
        raise ValueError(f"lsf must have shape ({t}, {C.LPC_ORDER}) for {len(y)} samples, "
                         f"got {lsf.shape}")
    if not std > 0:
        raise ValueError(f"std must be positive, got {std}")
    seg = padded_segment(y) / np.float32(std)
    idx = np.arange(t)[:, None] * C.HOP_SIZE + np.arange(EXAMPLE_SIZE)
    return seg[idx], lsf[lsf_neighbours(t)]
