"""CPU and wall time to compress + decompress one file at 3 modules, several models alternated.

Usage: python results/bitrate_scaling/v15/cpucost.py SPEECH.wav MODEL.keras [MODEL.keras ...]
Each model runs the default backend (tflite); after one warm-up each, 7 rounds alternate the
models and the minimum per model is printed (the least disturbed run), as process CPU seconds
(every thread) and as wall-clock real-time factor."""
import sys
import time

import soundfile as sf

import cq_codec

ROUNDS = 7
wav, models = sys.argv[1], sys.argv[2:]
x, sr = sf.read(wav, dtype="float32")
seconds = len(x) / sr
codecs = {m: cq_codec.load(m) for m in models}
for c in codecs.values():
    c.decompress(c.compress(x, sr, num_modules=3))
best = {m: [float("inf")] * 4 for m in codecs}
for _ in range(ROUNDS):
    for m, c in codecs.items():
        t0, p0 = time.perf_counter(), time.process_time()
        blob = c.compress(x, sr, num_modules=3)
        t1, p1 = time.perf_counter(), time.process_time()
        c.decompress(blob)
        t2, p2 = time.perf_counter(), time.process_time()
        best[m] = [min(a, b) for a, b in zip(best[m], (p1 - p0, p2 - p1, t1 - t0, t2 - t1))]
for m, (pe, pd, we, wd) in best.items():
    print(f"{m}: cpu encode {pe:.3f} s decode {pd:.3f} s (enc+dec {pe + pd:.3f} s = {seconds / (pe + pd):.1f}x per "
          f"CPU-second); wall encode {we:.3f} decode {wd:.3f} -> {seconds / (we + wd):.1f}x real time (min of {ROUNDS})")
