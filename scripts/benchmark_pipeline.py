"""Measures the data pipeline: cache build throughput and cached batch throughput.

Usage: python scripts/benchmark_pipeline.py [--data_dir data/demo] [--max_files 300]
       [--batches 2000] [--batch_size 32]
Prints the cache build throughput (seconds of audio per second of wall time: decode, resample,
high-pass, pre-emphasis, LPC analysis, write) and the frames/s of iterating cached batches.
Without --data_dir (and no data/demo) a synthetic corpus is generated in a temp folder.
"""

import argparse
import logging
import os
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
import soundfile as sf  # noqa: E402

from cq_codec.data import cache as cache_lib, corpora, pipeline, splits  # noqa: E402


def _synthetic(root: str, n: int = 60) -> None:
    rng = np.random.default_rng(0)
    for i in range(n):
        t = np.arange(int(16000 * rng.uniform(2, 5))) / 16000
        f0 = 100 + 100 * rng.random()
        x = sum(np.sin(2 * np.pi * k * f0 * t) / k for k in range(1, 10))
        x = 0.3 * x * (0.6 + 0.4 * np.sin(2 * np.pi * 3 * t)) / 3
        os.makedirs(os.path.join(root, f"spk{i % 10}"), exist_ok=True)
        sf.write(os.path.join(root, f"spk{i % 10}", f"u{i}.wav"), x, 16000)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data_dir", default=None)
    p.add_argument("--max_files", type=int, default=300, help="train files to cache")
    p.add_argument("--batches", type=int, default=2000)
    p.add_argument("--batch_size", type=int, default=32)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    with tempfile.TemporaryDirectory() as tmp:
        data_dir = args.data_dir or ("data/demo" if os.path.isfile("data/demo/manifest.json")
                                    else None)
        if data_dir is None:
            data_dir = os.path.join(tmp, "synthetic")
            _synthetic(data_dir)
        utts = corpora.discover(data_dir)
        train = splits.split_utterances(utts)["train"]
        step = max(1, len(train) // args.max_files)
        train = train[::step][:args.max_files]  # spread over speakers
        cache_dir = os.path.join(tmp, "cache")
        t0 = time.perf_counter()
        cache = cache_lib.build_cache({"train": train}, cache_dir)
        build = time.perf_counter() - t0
        audio_s = cache.splits["train"]["seconds"]
        print(f"corpus {data_dir}: {len(train)} files, {audio_s:.1f} s of audio, "
              f"{cache.num_frames('train')} frames")
        print(f"cache build: {build:.2f} s wall -> {audio_s / build:.1f} s of audio per second")
        ds = pipeline.make_dataset(cache, "train", args.batch_size, seed=0, repeat=True,
                                   drop_remainder=True)
        it = iter(ds)
        for _ in range(20):  # warm-up
            next(it)
        t0 = time.perf_counter()
        for _ in range(args.batches):
            next(it)
        dt = time.perf_counter() - t0
        print(f"cached pipeline: {args.batches * args.batch_size / dt:.0f} frames/s "
              f"(batches of {args.batch_size}, {args.batches / dt:.0f} batches/s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
