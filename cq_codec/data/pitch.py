"""Open-loop pitch prediction of the training examples (pitch prediction in training, issue 14).

A model with long-term prediction (`lpc.ltp.LongTermPredictor`) codes, at inference, the pitch
residual e2 = e - b e[n - T] of the LPC residual e, not e itself. For its cascade to be trained
on what it will code, every training example carries the prediction p = e - e2 of its frame:
the model codes e - p (windowed like e) and adds p back, so the loss sees the same error as
before while the cascade's input has the pitch pulses taken out.

p is computed per utterance of the frame cache exactly as the encoder does it (the whole
residual under the switched LPC filters of the utterance's LSFs, `LongTermPredictor.analyze`
and `analysis_filter` from an empty history), with the cache's unquantized LSFs (the encoder
uses its quantized ones: a small difference the cascade does not care about). It is stored
beside the split as ``ltp-<key>.f32``, laid out like ``signal.f32`` (unnormalised, one sample
per signal sample), so an example's prediction is gathered with the same offsets as its signal.
The key hashes the predictor's settings; building is atomic (a sibling file renamed into place).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time

import numpy as np

import constants as C
import lpc
from cq_codec.data.cache import FrameCache
from cq_codec.data.preprocess import HISTORY
from lpc.ltp import LongTermPredictor

__all__ = ["prediction_path", "segments", "utterance_prediction", "pitch_prediction"]

log = logging.getLogger(__name__)


def _key(predictor: LongTermPredictor) -> str:
    text = json.dumps({"v": 1, **predictor.get_config(), "hold": predictor.hold}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def prediction_path(cache: FrameCache, split: str, predictor: LongTermPredictor) -> str:
    return os.path.join(cache.directory, split, f"ltp-{_key(predictor)}.f32")


def segments(arrays: dict) -> list[tuple[int, int, int, int]]:
    """The utterances of a cache split: (first frame, frames T, signal offset, first LSF row)
    each; an utterance's frames are consecutive and its examples 480 samples apart."""
    starts, hops = np.asarray(arrays["starts"]), np.asarray(arrays["lsf_index"])[:, 1]
    if len(starts) == 0:
        return []
    new = np.flatnonzero(np.diff(starts) != C.HOP_SIZE) + 1
    first = np.concatenate([[0], new])
    count = np.diff(np.concatenate([first, [len(starts)]]))
    return [(int(f), int(t), int(starts[f]), int(hops[f])) for f, t in zip(first, count)]


def utterance_prediction(y: np.ndarray, lsf: np.ndarray, predictor: LongTermPredictor) -> np.ndarray:
    """y: [T * 480] preprocessed signal of T hops; lsf: [T, 16] its LSFs -> p [T * 480] float64,
    the pitch prediction b e[n - T] that the encoder takes out of the residual e."""
    e, _ = lpc.residual(np.asarray(y, np.float64), lpc.subframe_lpc(lsf))
    hist = predictor.initial_history()
    codes = predictor.analyze(hist, e, 0)
    return e - predictor.analysis_filter(hist, e, codes)


def pitch_prediction(cache: FrameCache, split: str, predictor: LongTermPredictor) -> np.ndarray:
    """float32 memmap laid out like the split's ``signal.f32``: frame i's prediction is
    ``out[starts[i] + HISTORY + arange(512)]`` (unnormalised; zero past an utterance's end).
    Built on first use, then reused."""
    if not isinstance(predictor, LongTermPredictor):
        raise TypeError(f"predictor must be an lpc.ltp.LongTermPredictor, got {type(predictor).__name__}")
    path = prediction_path(cache, split, predictor)
    arrays = cache.arrays(split)
    size = len(arrays["signal"])
    if not (os.path.isfile(path) and os.path.getsize(path) == 4 * size):
        t0 = time.perf_counter()
        out = np.zeros(size, np.float32)
        signal, lsf = arrays["signal"], arrays["lsf"]
        for _, t, offset, hop in segments(arrays):
            n = t * C.HOP_SIZE
            y = np.asarray(signal[offset + HISTORY: offset + HISTORY + n], np.float64)
            p = utterance_prediction(y, np.asarray(lsf[hop: hop + t], np.float64), predictor)
            out[offset + HISTORY: offset + HISTORY + n] = p
        tmp = f"{path}.building-{os.getpid()}"
        out.tofile(tmp)
        os.replace(tmp, path)
        log.info("pitch prediction of %s/%s built in %.1f s", cache.directory, split, time.perf_counter() - t0)
    if size == 0:
        return np.zeros(0, np.float32)
    return np.memmap(path, np.float32, "r", shape=(size,))
