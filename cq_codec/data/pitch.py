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
per signal sample), so an example's prediction is gathered with the same offsets as its signal;
beside it each sample's lag and gain, with which the loss can see the cascade's error as the
decoder's pitch synthesis filter will shape it (`--ltp_shaped_loss`).
The key hashes the predictor's settings; building is atomic (a sibling file renamed into place).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from typing import NamedTuple

import numpy as np

import constants as C
import lpc
from cq_codec.data.cache import FrameCache
from cq_codec.data.preprocess import HISTORY
from lpc.ltp import MIN_LAG, LongTermPredictor

__all__ = ["PitchTrack", "prediction_path", "segments", "utterance_pitch", "pitch_prediction"]

log = logging.getLogger(__name__)


def _key(predictor: LongTermPredictor) -> str:
    text = json.dumps({"v": 1, **predictor.get_config(), "hold": predictor.hold}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def prediction_path(cache: FrameCache, split: str, predictor: LongTermPredictor) -> str:
    """The prediction's file; the per-sample lag (int16) and gain (float32) lie beside it, with
    ``.lag`` and ``.gain`` appended."""
    return os.path.join(cache.directory, split, f"ltp-{_key(predictor)}.f32")


class PitchTrack(NamedTuple):
    """A cache split's open-loop pitch prediction, laid out like its ``signal.f32``: `pred`
    float32 (unnormalised), and the sub-frame's lag T (int16, 0 where not predicted) and gain b
    (float32) per sample."""
    pred: np.ndarray
    lag: np.ndarray
    gain: np.ndarray


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


def utterance_pitch(y: np.ndarray, lsf: np.ndarray, predictor: LongTermPredictor
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """y: [T * 480] preprocessed signal of T hops; lsf: [T, 16] its LSFs -> (p, lag, gain), each
    [T * 480]: the pitch prediction b e[n - T] that the encoder takes out of the residual e, and
    the lag (0 where b = 0) and gain of each sample's sub-frame."""
    e, _ = lpc.residual(np.asarray(y, np.float64), lpc.subframe_lpc(lsf))
    hist = predictor.initial_history()
    codes = predictor.analyze(hist, e, 0)
    gain = np.repeat(codes[:, 1] * predictor.gain_step, predictor.subframe)
    lag = np.where(gain > 0, np.repeat(codes[:, 0] + MIN_LAG, predictor.subframe), 0)
    return e - predictor.analysis_filter(hist, e, codes), lag, gain


def pitch_prediction(cache: FrameCache, split: str, predictor: LongTermPredictor) -> PitchTrack:
    """The split's `PitchTrack` (memmaps): frame i's samples are ``[starts[i] + HISTORY +
    arange(512)]`` of each array (zero past an utterance's end). Built on first use, then reused."""
    if not isinstance(predictor, LongTermPredictor):
        raise TypeError(f"predictor must be an lpc.ltp.LongTermPredictor, got {type(predictor).__name__}")
    path = prediction_path(cache, split, predictor)
    files = {"pred": (path, np.float32), "lag": (path + ".lag", np.int16), "gain": (path + ".gain", np.float32)}
    arrays = cache.arrays(split)
    size = len(arrays["signal"])
    if not all(os.path.isfile(f) and os.path.getsize(f) == np.dtype(d).itemsize * size for f, d in files.values()):
        t0 = time.perf_counter()
        out = {k: np.zeros(size, d) for k, (_, d) in files.items()}
        signal, lsf = arrays["signal"], arrays["lsf"]
        for _, t, offset, hop in segments(arrays):
            span = slice(offset + HISTORY, offset + HISTORY + t * C.HOP_SIZE)
            p, lag, gain = utterance_pitch(np.asarray(signal[span], np.float64),
                                           np.asarray(lsf[hop: hop + t], np.float64), predictor)
            out["pred"][span], out["lag"][span], out["gain"][span] = p, lag, gain
        for k, (f, _) in files.items():   # each written beside and renamed into place
            tmp = f"{f}.building-{os.getpid()}"
            out[k].tofile(tmp)
            os.replace(tmp, f)
        log.info("pitch prediction of %s/%s built in %.1f s", cache.directory, split, time.perf_counter() - t0)
    if size == 0:
        return PitchTrack(np.zeros(0, np.float32), np.zeros(0, np.int16), np.zeros(0, np.float32))
    return PitchTrack(*(np.memmap(f, d, "r", shape=(size,)) for f, d in files.values()))
