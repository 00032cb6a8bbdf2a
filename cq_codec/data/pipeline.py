"""tf.data pipeline over the frame cache: batched training examples (docs/DESIGN.md).

Each batch is a dict: ``x`` float32 [B, 528] (normalised, pre-emphasised signal: 16 samples of
history, then the frame's 512 samples, unwindowed) and ``lsf`` float32 [B, 3, 16] (LSFs of hops
t-1, t, t+1); with `noise_fn` also ``x_noisy`` [B, 528] (noisy input, ``x`` stays the clean
target); with `noisy_examples` (e.g. `cq_codec.data.noise.FrameNoiser`) ``x_noisy`` [B, 528] and
``lsf_noisy`` [B, 3, 16] (LSFs of the noisy signal); with `pitch` (a `cq_codec.data.pitch.PitchTrack`)
``ltp`` [B, 512] (the frame's open-loop pitch prediction, unwindowed, normalised like ``x``),
``ltp_lag`` int32 and ``ltp_gain`` float32 [B, 512] (each sample's sub-frame lag, 0 where not
predicted, and gain).
Batches are gathered from the memory-mapped cache in numpy, so audio is decoded only
when the cache is built.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence

import numpy as np
import tensorflow as tf

import constants as C
from cq_codec.data.cache import FrameCache, build_cache, load_cache
from cq_codec.data.corpora import Utterance
from cq_codec.data.preprocess import EXAMPLE_SIZE, HISTORY

__all__ = ["SILENCE_RMS", "NoiseFn", "NoisyExamplesFn", "select_frames", "iterate_batches", "make_dataset",
           "prepare_cache"]

# A frame whose RMS is below this (in units of the corpus std, i.e. -60 dB) is "silence".
SILENCE_RMS = 1e-3
NoiseFn = Callable[[np.ndarray, np.random.Generator], np.ndarray]
# (split arrays of FrameCache.arrays, frame indices [B], rng) -> {"x_noisy": [B, 528], "lsf_noisy": [B, 3, 16]}
NoisyExamplesFn = Callable[[dict, np.ndarray, np.random.Generator], dict]


def prepare_cache(splits: Mapping[str, Sequence[Utterance]], cache_dir: str | os.PathLike,
                  **kwargs) -> FrameCache:
    """`build_cache` (reused when up to date); kwargs: std, force, speeds."""
    return build_cache(splits, os.fspath(cache_dir), **kwargs)


def select_frames(rms: np.ndarray, keep_silence: float, seed: int) -> np.ndarray:
    """Indices of the frames kept: all with rms >= SILENCE_RMS, and a seeded `keep_silence`
    fraction of the silent ones. int64 [F']."""
    if not 0.0 <= keep_silence <= 1.0:
        raise ValueError(f"keep_silence must be in [0, 1], got {keep_silence}")
    rms = np.asarray(rms)
    loud = rms >= SILENCE_RMS
    lucky = np.random.default_rng([seed, 1]).random(len(rms)) < keep_silence
    return np.flatnonzero(loud | lucky)


def iterate_batches(cache: FrameCache, split: str, batch_size: int, shuffle: bool = True,
                    seed: int = 0, repeat: bool = False, keep_silence: float = 0.1,
                    noise_fn: NoiseFn | None = None, drop_remainder: bool = False,
                    noisy_examples: NoisyExamplesFn | None = None, pitch=None):
    """Generator of numpy batch dicts (see module docstring); epoch e shuffles with seed
    (seed, e), so the sequence depends only on `seed`. `pitch`: the split's `PitchTrack`
    (`cq_codec.data.pitch.pitch_prediction`), laid out like its signal."""
    if not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    if noise_fn is not None and not callable(noise_fn):
        raise TypeError(f"noise_fn must be callable, got {type(noise_fn).__name__}")
    if noisy_examples is not None and not callable(noisy_examples):
        raise TypeError(f"noisy_examples must be callable, got {type(noisy_examples).__name__}")
    if noise_fn is not None and noisy_examples is not None:
        raise ValueError("give noise_fn or noisy_examples, not both (both would set 'x_noisy')")
    arrays = cache.arrays(split)
    if pitch is not None and any(np.shape(a) != np.shape(arrays["signal"]) for a in pitch):
        raise ValueError(f"pitch must be laid out like split {split!r}'s signal {np.shape(arrays['signal'])}; "
                         f"got shapes {[np.shape(a) for a in pitch]}")
    frames = select_frames(arrays["rms"], keep_silence, seed)
    if len(frames) == 0 or (drop_remainder and len(frames) < batch_size):
        raise ValueError(f"split {split!r} of cache {cache.directory} has {len(frames)} usable "
                         f"frames: not enough for a batch of {batch_size}")
    signal, starts = arrays["signal"], arrays["starts"]
    lsf, lsf_index = arrays["lsf"], arrays["lsf_index"]
    offsets = np.arange(EXAMPLE_SIZE)
    frame_offsets = HISTORY + np.arange(C.FRAME_SIZE)   # the frame's samples within its example
    scale = np.float32(1.0 / cache.std)
    noise_rng = np.random.default_rng([seed, 2])
    epoch = 0
    while True:
        order = (np.random.default_rng([seed, 0, epoch]).permutation(frames) if shuffle
                 else frames)
        stop = len(order) - (len(order) % batch_size if drop_remainder else 0)
        for b in range(0, stop, batch_size):
            sel = order[b:b + batch_size]
            x = np.asarray(signal[starts[sel][:, None] + offsets]) * scale
            batch = {"x": x, "lsf": np.asarray(lsf[lsf_index[sel]])}
            if pitch is not None:
                at = starts[sel][:, None] + frame_offsets
                batch["ltp"] = np.asarray(pitch.pred[at]) * scale
                batch["ltp_lag"] = np.asarray(pitch.lag[at], np.int32)
                batch["ltp_gain"] = np.asarray(pitch.gain[at])
            if noise_fn is not None:
                noisy = np.asarray(noise_fn(x.copy(), noise_rng), dtype=np.float32)
                if noisy.shape != x.shape:
                    raise ValueError(f"noise_fn returned shape {noisy.shape}, expected {x.shape}")
                batch["x_noisy"] = noisy
            if noisy_examples is not None:
                extra = noisy_examples(arrays, sel, noise_rng)
                for key, shape in (("x_noisy", x.shape), ("lsf_noisy", batch["lsf"].shape)):
                    value = np.asarray(extra.get(key), dtype=np.float32) if key in extra else None
                    if value is None or value.shape != shape:
                        raise ValueError(f"noisy_examples must return {key!r} of shape {shape}, "
                                         f"got {None if value is None else value.shape}")
                    batch[key] = value
            yield batch
        epoch += 1
        if not repeat:
            return


def make_dataset(cache: FrameCache | str | os.PathLike, split: str, batch_size: int,
                 shuffle: bool = True, seed: int = 0, repeat: bool = False,
                 keep_silence: float = 0.1, noise_fn: NoiseFn | None = None,
                 drop_remainder: bool = False,
                 noisy_examples: NoisyExamplesFn | None = None,
                 pitch=None) -> tf.data.Dataset:
    """Batched, shuffled, prefetched tf.data.Dataset of training examples from the cache.

    Args:
      cache: a FrameCache or its directory.
      split: 'train', 'val' or 'test' (any split in the cache).
      batch_size: B.
      shuffle: reshuffle every epoch (deterministic given `seed`).
      repeat: cycle forever (each epoch a new permutation).
      keep_silence: fraction of silent frames (RMS < SILENCE_RMS * std) kept, chosen by seed.
      noise_fn: optional callable (x [B, 528] float32, rng) -> noisy x [B, 528]; adds
        'x_noisy' to each batch.
      drop_remainder: drop the last partial batch of each epoch (static batch dimension).
      noisy_examples: optional callable (split arrays, frame indices [B], rng) ->
        {'x_noisy': [B, 528], 'lsf_noisy': [B, 3, 16]} (see cq_codec.data.noise.FrameNoiser).
      pitch: optional PitchTrack of the split (cq_codec.data.pitch.pitch_prediction); adds
        'ltp', 'ltp_lag' and 'ltp_gain' [B, 512].
    Returns:
      Dataset of {'x': [B, 528], 'lsf': [B, 3, 16]} (+ 'x_noisy' [B, 528], + 'lsf_noisy'
      [B, 3, 16]) float32.
    """
    if not isinstance(cache, FrameCache):
        cache = load_cache(os.fspath(cache))
    args = dict(cache=cache, split=split, batch_size=batch_size, shuffle=shuffle, seed=seed,
                repeat=repeat, keep_silence=keep_silence, noise_fn=noise_fn,
                drop_remainder=drop_remainder, noisy_examples=noisy_examples, pitch=pitch)
    first = iterate_batches(**args)  # validates the arguments now, not at the first batch
    next(first)
    first.close()
    b = batch_size if drop_remainder else None
    signature = {"x": tf.TensorSpec([b, EXAMPLE_SIZE], tf.float32),
                 "lsf": tf.TensorSpec([b, 3, C.LPC_ORDER], tf.float32)}
    if noise_fn is not None or noisy_examples is not None:
        signature["x_noisy"] = tf.TensorSpec([b, EXAMPLE_SIZE], tf.float32)
    if noisy_examples is not None:
        signature["lsf_noisy"] = tf.TensorSpec([b, 3, C.LPC_ORDER], tf.float32)
    if pitch is not None:
        signature["ltp"] = tf.TensorSpec([b, C.FRAME_SIZE], tf.float32)
        signature["ltp_lag"] = tf.TensorSpec([b, C.FRAME_SIZE], tf.int32)
        signature["ltp_gain"] = tf.TensorSpec([b, C.FRAME_SIZE], tf.float32)
    ds = tf.data.Dataset.from_generator(lambda: iterate_batches(**args),
                                        output_signature=signature)
    return ds.prefetch(tf.data.AUTOTUNE)
