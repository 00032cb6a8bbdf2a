"""On-disk frame cache: every split preprocessed and analysed once, reused by later runs.

Layout: ``<cache_dir>/manifest.json`` (key, corpus std, per-split counts) and per split
``<cache_dir>/<split>/``: ``signal.f32`` (raw float32: the padded, preprocessed, *unnormalised*
segments of all utterances end to end), ``starts.npy`` int64 [F] (sample offset of each frame's
528-sample example), ``lsf.npy`` float32 [H, 16] (all hops), ``lsf_index.npy`` int64 [F, 3]
(rows of lsf.npy for hops t-1, t, t+1), ``rms.npy`` float32 [F] (frame RMS / std, for
dropping silence). The key hashes the file lists (path and size) and the preprocessing
constants: a cache whose key differs is stale and rebuilt.

Speed perturbation (`speeds`, training split only): each training utterance is stored once as
recorded and once per extra factor f, resampled by soxr to 1/f of its length and played at
16 kHz, so pitch and formants both move by f (a shorter or longer vocal tract: new "speakers"
from the same recordings). The copies are analysed like any utterance (their own LPC); the
corpus std is taken on the recorded audio only, so it does not depend on `speeds`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import shutil
import time
from collections.abc import Mapping, Sequence

import numpy as np
import soxr

import constants as C
from cq_codec.data.corpora import AudioReader, Utterance
from cq_codec.data.preprocess import (EXAMPLE_SIZE, HISTORY, analyze_utterance, lsf_neighbours,
                                      padded_segment, preprocess_audio)

__all__ = ["CACHE_VERSION", "FrameCache", "cache_key", "build_cache", "load_cache",
           "check_speeds", "speed_perturb"]

log = logging.getLogger(__name__)

CACHE_VERSION = 1
_MANIFEST = "manifest.json"


MAX_SPEED_DEVIATION = 0.25  # speed factors must lie in [0.75, 1.25]


def check_speeds(speeds: Sequence[float]) -> tuple[float, ...]:
    """The extra speed-perturbation factors, validated: each in [0.75, 1.25], not 1, no repeats."""
    out = tuple(float(f) for f in speeds)
    for f in out:
        if not (np.isfinite(f) and abs(f - 1.0) <= MAX_SPEED_DEVIATION) or f == 1.0:
            raise ValueError(f"speed factors must lie in [{1 - MAX_SPEED_DEVIATION:g}, "
                             f"{1 + MAX_SPEED_DEVIATION:g}] and differ from 1 (the recording "
                             f"itself is always kept); got {f:g}")
    if len(set(out)) != len(out):
        raise ValueError(f"speed factors repeat: {list(out)}")
    return out


def speed_perturb(audio: np.ndarray, factor: float) -> np.ndarray:
    """`audio` (16 kHz) played `factor` times faster: resampled to len/factor samples, so pitch
    and formants scale by `factor`. float32 [round(len / factor)]."""
    if factor == 1.0:
        return np.asarray(audio, np.float32)
    rate_out = C.SAMPLE_RATE / factor
    return soxr.resample(np.asarray(audio, np.float32), C.SAMPLE_RATE, rate_out).astype(np.float32)


def cache_key(splits: Mapping[str, Sequence[Utterance]], std: float | None = None,
              speeds: Sequence[float] = ()) -> str:
    """sha256 of the file lists (real path, size), the preprocessing constants, `std` and the
    speed factors (absent from the hash when there are none: older caches stay valid).

    Real paths: the same corpus reached through a symlink or another working directory has the
    same key (two runs must not keep rebuilding a shared cache from under each other)."""
    desc = {
        "version": CACHE_VERSION, "std": std,
        "constants": [C.SAMPLE_RATE, C.FRAME_SIZE, C.HOP_SIZE, C.PREEMPHASIS,
                      C.HIGHPASS_CUTOFF_HZ, C.LPC_ORDER, C.LPC_WINDOW, C.LPC_WINDOW_RISE,
                      C.LAG_WINDOW_BANDWIDTH_HZ, C.WHITE_NOISE_CORRECTION, C.LSF_MIN_GAP],
        "splits": {s: [(os.path.realpath(u.path), os.path.getsize(u.path) if os.path.exists(u.path) else -1)
                       for u in sorted(utts)] for s, utts in sorted(splits.items())},
    }
    if speeds:
        desc["speeds"] = sorted(float(f) for f in speeds)
    return hashlib.sha256(json.dumps(desc, sort_keys=True).encode()).hexdigest()


@dataclasses.dataclass
class FrameCache:
    """A built cache: `std` (corpus std), `splits` ({split: {frames, utterances, seconds,
    skipped}}), `build_seconds` (wall time of the build, 0 if reused)."""
    directory: str
    key: str
    std: float
    splits: dict
    build_seconds: float = 0.0

    def arrays(self, split: str) -> dict[str, np.ndarray]:
        """{'signal' [S], 'starts' [F], 'lsf' [H, 16], 'lsf_index' [F, 3], 'rms' [F]}, mmapped."""
        if split not in self.splits:
            raise ValueError(f"split {split!r} not in cache {self.directory} "
                             f"(has {sorted(self.splits)})")
        d = os.path.join(self.directory, split)
        out = {k: np.load(os.path.join(d, k + ".npy"), mmap_mode="r")
               for k in ("starts", "lsf", "lsf_index", "rms")}
        size = os.path.getsize(os.path.join(d, "signal.f32")) // 4
        out["signal"] = (np.memmap(os.path.join(d, "signal.f32"), np.float32, "r", shape=(size,))
                         if size else np.zeros(0, np.float32))
        return out

    def num_frames(self, split: str) -> int:
        return int(self.splits[split]["frames"]) if split in self.splits else 0


def load_cache(cache_dir: str) -> FrameCache:
    """Opens a cache written by `build_cache`; FileNotFoundError / ValueError if absent or bad."""
    path = os.path.join(cache_dir, _MANIFEST)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no frame cache in {cache_dir} (missing {_MANIFEST})")
    try:
        with open(path, encoding="utf-8") as f:
            m = json.load(f)
        return FrameCache(cache_dir, m["key"], float(m["std"]), m["splits"])
    except (ValueError, KeyError, TypeError) as e:
        raise ValueError(f"{path}: unreadable cache manifest ({e})") from e


def _build_split(utts: Sequence[Utterance], out_dir: str, stats: dict | None,
                 speeds: Sequence[float] = ()) -> dict:
    os.makedirs(out_dir, exist_ok=True)
    starts, lsfs, index, energy = [], [], [], []
    offset = hop_offset = 0
    seconds = 0.0
    reader = AudioReader(utts)
    with open(os.path.join(out_dir, "signal.f32"), "wb") as f:
        for _, recorded in reader:
            for factor in (1.0, *speeds):
                audio = speed_perturb(recorded, factor)   # factor 1: the recording itself
                y = preprocess_audio(audio)
                lsf = analyze_utterance(y)
                seg = padded_segment(y)
                seg.tofile(f)
                t = len(lsf)
                frame_starts = np.arange(t, dtype=np.int64) * C.HOP_SIZE
                frames = seg[frame_starts[:, None] + HISTORY + np.arange(C.FRAME_SIZE)]
                energy.append(np.mean(np.square(frames, dtype=np.float64), axis=1))
                starts.append(offset + frame_starts)
                index.append(hop_offset + lsf_neighbours(t))
                lsfs.append(lsf)
                offset += len(seg)
                hop_offset += t
                seconds += len(audio) / C.SAMPLE_RATE
                if stats is not None and factor == 1.0:  # the std of the recordings only
                    stats["sum"] += float(np.sum(y))
                    stats["sumsq"] += float(np.sum(np.square(y)))
                    stats["n"] += len(y)
    cat = (lambda xs, shape, dt: np.concatenate(xs).astype(dt) if xs else np.zeros(shape, dt))
    np.save(os.path.join(out_dir, "starts.npy"), cat(starts, (0,), np.int64))
    np.save(os.path.join(out_dir, "lsf.npy"), cat(lsfs, (0, C.LPC_ORDER), np.float32))
    np.save(os.path.join(out_dir, "lsf_index.npy"), cat(index, (0, 3), np.int64))
    np.save(os.path.join(out_dir, "rms.npy"), np.sqrt(cat(energy, (0,), np.float64)))
    return {"frames": int(sum(len(s) for s in starts)), "utterances": reader.loaded,
            "seconds": round(seconds, 3), "skipped": len(reader.skipped)}


def build_cache(splits: Mapping[str, Sequence[Utterance]], cache_dir: str,
                std: float | None = None, force: bool = False,
                speeds: Sequence[float] = ()) -> FrameCache:
    """Builds (or reuses, if its key matches) the frame cache of `splits` in `cache_dir`.

    The corpus std is computed on the 'train' split after pre-emphasis unless `std` is given
    (then 'train' is optional). Unreadable files are logged and skipped (see AudioReader).
    `speeds`: extra speed-perturbation factors of the 'train' split (module docstring); its
    'seconds' then count the copies too.
    """
    speeds = check_speeds(speeds)
    if not splits:
        raise ValueError("no splits given")
    if std is None and not splits.get("train"):
        raise ValueError("a 'train' split with utterances is needed to compute the corpus std "
                         "(or pass std=)")
    if std is not None and not std > 0:
        raise ValueError(f"std must be positive, got {std}")
    key = cache_key(splits, std, speeds)
    if not force:
        try:
            cache = load_cache(cache_dir)
            if cache.key == key and all(
                    os.path.isfile(os.path.join(cache_dir, s, "rms.npy")) for s in splits):
                log.info("frame cache %s is up to date", cache_dir)
                return cache
            log.info("frame cache %s is stale: rebuilding", cache_dir)
        except (FileNotFoundError, ValueError):
            pass
    # Built in a sibling directory and swapped in by renames: a job reading the old cache keeps
    # its open (memory-mapped) files, and a killed build leaves the old cache (or none) whole.
    t0 = time.perf_counter()
    build_dir = f"{os.path.normpath(cache_dir)}.building-{os.getpid()}"
    if os.path.isdir(build_dir):
        shutil.rmtree(build_dir)
    os.makedirs(build_dir)
    try:
        info = {}
        order = sorted(splits, key=lambda s: s != "train")  # train first: it gives the std
        stats = {"sum": 0.0, "sumsq": 0.0, "n": 0}
        for split in order:
            log.info("building frame cache: %s (%d files)", split, len(splits[split]))
            info[split] = _build_split(splits[split], os.path.join(build_dir, split),
                                       stats if split == "train" and std is None else None,
                                       speeds if split == "train" else ())
        if std is None:
            if stats["n"] == 0:
                raise ValueError("the train split has no readable audio: cannot compute the std")
            mean = stats["sum"] / stats["n"]
            std = float(np.sqrt(max(stats["sumsq"] / stats["n"] - mean * mean, 0.0)))
            if not std > 0:
                raise ValueError("the train split is silent (std 0): cannot normalise")
        for split in order:  # rms was stored unnormalised
            path = os.path.join(build_dir, split, "rms.npy")
            np.save(path, (np.load(path) / std).astype(np.float32))
        seconds = time.perf_counter() - t0
        manifest = {"key": key, "version": CACHE_VERSION, "std": std, "splits": info,
                    **({"speeds": list(speeds)} if speeds else {}),
                    "example_size": EXAMPLE_SIZE, "build_seconds": round(seconds, 3)}
        with open(os.path.join(build_dir, _MANIFEST), "w", encoding="utf-8") as f:
            json.dump(manifest, f, indent=1)
    except BaseException:
        shutil.rmtree(build_dir, ignore_errors=True)
        raise
    old_dir = f"{os.path.normpath(cache_dir)}.old-{os.getpid()}"
    if os.path.isdir(cache_dir):
        os.rename(cache_dir, old_dir)
    os.rename(build_dir, cache_dir)
    shutil.rmtree(old_dir, ignore_errors=True)
    return FrameCache(cache_dir, key, std, info, seconds)
