"""Benchmark the codec end to end: speed (x real time, entropy coding included), bitrate vs the
entropy estimate, and peak memory of the CLI on a long generated input.

    python scripts/benchmark_codec.py [--model PATH] [--wav PATH] [--hours 1.0] [--repeats 5]
        [--backends keras,tflite] [--sequential] [--profile] [--nopostfilter]

Speed is the median of `--repeats` rounds after a warm-up run of the whole input; within a round
the backends run in turn (encode, then decode of those bytes), so a shared machine's slow phases
hit all of them. With two backends it also reports their agreement (codes, and each decoding
the other's bytes). `--sequential` adds each backend without the pipeline ("keras/seq": the
network calls in turn with the numpy work instead of beside it on a worker thread) to the same
rounds, so the two schedules meet the same machine. The memory test runs the CLI on `--hours` of
generated audio per backend.

Without --model, a tiny model (2 modules, 8 channels) is trained for --train_steps steps on --wav
and its entropy tables fitted on it (a smoke-scale stand-in for a real model).
"""

from __future__ import annotations

import os
import resource
import subprocess
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
import soundfile as sf  # noqa: E402
from absl import app, flags  # noqa: E402

import constants as C  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_string("model", None, "trained .keras model with entropy tables (default: train a tiny one)")
flags.DEFINE_string("wav", "tests/fixtures/real_speech.wav", "speech file to measure on")
flags.DEFINE_integer("train_steps", 100, "steps for the tiny stand-in model")
flags.DEFINE_float("hours", 1.0, "length of the generated input for the memory test (0: skip)")
flags.DEFINE_integer("repeats", 5, "timed rounds per operating point after a warm-up (the median is reported)")
flags.DEFINE_list("backends", ["keras", "tflite"], "backends to measure, in turn within each round (also "
                  "\"tflite/traced\": the tflite backend with the traced-function export it had before the NHWC graph)")
flags.DEFINE_bool("profile", False, "also print where the time goes (cProfile), per backend and operating point")
flags.DEFINE_integer("profile_runs", 3, "runs per operating point and side under the profiler")
flags.DEFINE_string("workdir", None, "where to put generated files (default: a temp dir)")
flags.DEFINE_bool("postfilter", True, "decode through the adaptive postfilter (--nopostfilter: without)")
flags.DEFINE_bool("sequential", False,
                  "also measure each backend with the pipeline off (\"<backend>/seq\"), interleaved")


def tiny_model(wav: np.ndarray, steps: int, path: str) -> str:
    import keras
    import tensorflow as tf
    import lpc
    from cq_codec.config import Config
    from cq_codec.inference import fit_entropy_tables, preprocess
    from cq_codec.training.trainer import build_model
    keras.utils.set_random_seed(0)
    x = preprocess(wav, 1.0)
    std = float(x.std())
    x = x / std
    lsf = lpc.analyze(x)
    ts = range(1, len(lsf) - 2)
    sample = {"x": np.array([x[t * 480 - 16: t * 480 + 512] for t in ts], np.float32),
              "lsf": np.array([lsf[t - 1: t + 2] for t in ts], np.float32)}
    model = build_model(Config(num_modules=2, channels=8, bottleneck=4, blocks_per_section=1).validate(), std, sample)
    model.compile(optimizer=keras.optimizers.Adam(1e-3))
    ds = tf.data.Dataset.from_tensor_slices(sample).shuffle(512, seed=0).repeat().batch(16)
    model.fit(ds, steps_per_epoch=steps, epochs=1, verbose=0)
    # Tables from 1 s pieces of the file (4 fit, 1 held out per 5), as after real training.
    pieces = [wav[s: s + 16000] for s in range(0, len(wav) - 8000, 8000)]
    fit_entropy_tables(model, pieces)
    model.save(path)
    return path


def _load(path: str, backend: str):
    from cq_codec import api
    if backend.endswith("/seq"):   # the same backend with the network calls in turn with the numpy work
        codec = _load(path, backend[: -len("/seq")])
        codec.pipeline = False
        return codec
    if backend == "tflite/traced":   # the tflite backend's export before the NHWC graph (DESIGN "Speed, sixth pass")
        from cq_codec import backends
        codec = api.load(path, postfilter=FLAGS.postfilter, backend="tflite")
        codec._backend = backends.TFLiteBackend(codec.model, graph="traced", sub_batch=0)
        return codec
    try:
        return api.load(path, postfilter=FLAGS.postfilter, backend=backend)
    except TypeError:   # a tree from before the backends (the "old" side of an old-vs-new run)
        if backend != "keras":
            raise
        return api.load(path, postfilter=FLAGS.postfilter)


def _median(v):
    return float(np.median(v))


def measure(codecs: dict, wav: np.ndarray) -> None:
    """Speed (median of `repeats` interleaved rounds after a warm-up), rate and backend agreement."""
    from cq_codec.bitstream import codec_stream as cs
    from cq_codec.bitstream.container import read_nac
    from cq_codec.flops import count_flops
    seconds = len(wav) / C.SAMPLE_RATE
    first = next(iter(codecs.values()))
    models = cs.entropy_models(first.model)
    rows = []
    for point in first.operating_points:
        n, expected = point[0], point[1]
        gflops = count_flops(first.model, n) * C.FRAMES_PER_SECOND / 1e9
        times = {b: ([], []) for b in codecs}
        data = {}
        for b, codec in codecs.items():   # warm-up: tracing / conversion, caches, the whole input once
            data[b] = codec.compress(wav, C.SAMPLE_RATE, num_modules=n)
            codec.decompress(data[b])
        for _ in range(FLAGS.repeats):    # backends in turn, so slow phases of a shared machine hit both
            for b, codec in codecs.items():
                t0 = time.perf_counter()
                data[b] = codec.compress(wav, C.SAMPLE_RATE, num_modules=n)
                t1 = time.perf_counter()
                codec.decompress(data[b])
                t2 = time.perf_counter()
                times[b][0].append(t1 - t0)
                times[b][1].append(t2 - t1)
        ref = next(iter(codecs))
        y, _ = codecs[ref].decompress(data[ref])
        _, _, chunks = read_nac(data[ref])
        codes = codecs[ref].encode(wav, C.SAMPLE_RATE, num_modules=n)
        estimate = sum(cs.chunk_bits(c, models) for c in codes.chunks(codecs[ref].frames_per_chunk))
        kbps = lambda bits: bits / seconds / 1000.0  # noqa: E731
        payload = 8 * sum(len(c) for c in chunks)
        snr = 10 * np.log10(np.sum(wav ** 2) / max(np.sum((wav - y) ** 2), 1e-20))
        print(f"{n} module(s): file {kbps(8 * len(data[ref])):.2f} kbps, payload {kbps(payload):.2f} kbps, "
              f"estimate {kbps(estimate):.2f} kbps (payload/estimate {payload / estimate:.4f}), zeroth-order "
              f"empirical entropy {kbps(codes.entropy_bits()):.2f} kbps, tables' expectation {expected:.2f} kbps; "
              f"forward pass {gflops:.2f} GFLOP per second of audio; SNR {snr:.2f} dB ({ref})")
        for b, (enc, dec) in times.items():
            both = [e + d for e, d in zip(enc, dec)]
            x = lambda t: seconds / _median(t)  # noqa: E731
            print(f"  {b:6s}: encode {x(enc):6.1f}x, decode {x(dec):6.1f}x, encode + decode {x(both):6.1f}x real time "
                  f"(median of {len(enc)}; encode + decode range {seconds / max(both):.1f}-{seconds / min(both):.1f}x; "
                  f"best: encode {seconds / min(enc):.1f}x, decode {seconds / min(dec):.1f}x)")
            rows.append((n, b, x(enc), x(dec), x(both)))
        if len(codecs) > 1:
            agreement(codecs, wav, n, data)
    print("\n| modules | backend | encode | decode | encode + decode |\n|---|---|---|---|---|")
    for n, b, e, d, ed in rows:
        print(f"| {n} | {b} | {e:.1f}x | {d:.1f}x | {ed:.1f}x |")


def agreement(codecs: dict, wav: np.ndarray, n: int, data: dict) -> None:
    """Codes of the first backend against each other one's, and each decoding the other's bytes."""
    names = list(codecs)
    a = names[0]
    ca = codecs[a].encode(wav, C.SAMPLE_RATE, num_modules=n)
    for b in names[1:]:
        cb = codecs[b].encode(wav, C.SAMPLE_RATE, num_modules=n)
        total = sum(m.size for m in ca.modules)
        diff = sum(int(np.sum(x != y)) for x, y in zip(ca.modules, cb.modules))
        out = []
        for src in (a, b):
            ya, _ = codecs[a].decompress(data[src])
            yb, _ = codecs[b].decompress(data[src])
            err = np.abs(ya - yb)
            out.append(f"{src} bytes decoded by {a} vs {b}: max |diff| {err.max():.2e}, rms {np.sqrt(np.mean(err ** 2)):.2e}")
        print(f"  agreement {a} / {b}: {diff} of {total} module codes differ, LSF codes equal "
              f"{np.array_equal(ca.lsf, cb.lsf)}, bytes equal {data[a] == data[b]}; " + "; ".join(out)
              + f" (signal rms {np.sqrt(np.mean(wav ** 2)):.3f})")


_FILTERS = "switched filters (residual, synthesis)"


def profile(codec, wav: np.ndarray) -> None:
    """Where encode / decode time goes, per operating point: wall-clock timers around the parts
    (no profiler: cProfile charges every builtin call, so it inflated per-symbol loops such as
    range coding about threefold), summed over `profile_runs` runs after a warm-up."""
    import lpc
    import lpc.postfilter
    from cq_codec import inference
    from cq_codec.bitstream import codec_stream as cs
    acc, patches = {}, []

    def wrap(owner, name, part):
        f = getattr(owner, name)

        def timed(*args, **kwargs):
            t = time.perf_counter()
            try:
                return f(*args, **kwargs)
            finally:
                acc[part] = acc.get(part, 0.0) + time.perf_counter() - t
        patches.append((owner, name, owner.__dict__.get(name) if isinstance(owner, type) else None, f))
        setattr(owner, name, timed)

    backend = codec._backend if hasattr(codec, "_backend") else None
    pipeline = getattr(codec, "pipeline", False)
    codec.pipeline = False    # the parts timed one after the other (with the pipeline they overlap)
    parts = {"network (frame encoder / decoder, tensor copies)": [(backend, "encode_frames"), (backend, "decode_frames")],
             "range coding": [(cs, "encode_chunk"), (cs, "decode_chunk")],
             "LPC analysis + LSF codes": [(inference.StreamEncoder, "_analyse")],
             _FILTERS: [(lpc, "residual"), (lpc, "synthesis")],
             "postfilter": [(lpc.postfilter.Postfilter, "__call__")]}
    seconds = len(wav) / C.SAMPLE_RATE
    print(f"\nprofile ({codec.backend if hasattr(codec, 'backend') else 'keras'}; ms per second of audio, "
          f"wall-clock timers, {FLAGS.profile_runs} runs, pipeline off)")
    print("| modules | side | " + " | ".join(parts) + " | other | total |\n|" + "---|" * (len(parts) + 4))
    for point in codec.operating_points:
        n = point[0]
        data = codec.compress(wav, C.SAMPLE_RATE, num_modules=n)
        codec.decompress(data)
        for side in ("encode", "decode"):
            acc.clear()
            for part, targets in parts.items():
                for owner, name in targets:
                    if owner is not None:
                        wrap(owner, name, name if owner is lpc else part)
            try:
                t0 = time.perf_counter()
                for _ in range(FLAGS.profile_runs):
                    codec.compress(wav, C.SAMPLE_RATE, num_modules=n) if side == "encode" else codec.decompress(data)
                total = time.perf_counter() - t0
            finally:
                for owner, name, original, f in reversed(patches):
                    if isinstance(owner, type):
                        setattr(owner, name, original) if original is not None else delattr(owner, name)
                    elif owner is backend:
                        owner.__dict__.pop(name, None)
                    else:
                        setattr(owner, name, f)
                patches.clear()
            acc[_FILTERS] = acc.get("residual", 0.0) + acc.get("synthesis", 0.0)
            vals = [acc.get(part, 0.0) for part in parts]
            vals[2] = max(0.0, vals[2] - acc.get("residual", 0.0))   # _analyse calls the residual filter
            ms = lambda t: 1000 * t / FLAGS.profile_runs / seconds  # noqa: E731
            print(f"| {n} | {side} | " + " | ".join(f"{ms(v):.1f}" for v in vals)
                  + f" | {ms(total - sum(vals)):.1f} | {ms(total):.1f} |")
    codec.pipeline = pipeline


def memory_test(model_path: str, hours: float, workdir: str, backend: str = "keras") -> None:
    """Generate `hours` of audio block by block, run the CLI encode/decode, report peak RSS."""
    path = os.path.join(workdir, "long.wav")
    if os.path.exists(path) and sf.info(path).frames == int(hours * 3600 / 60) * 60 * C.SAMPLE_RATE:
        return _run_cli(model_path, hours, path, backend)
    rng = np.random.default_rng(0)
    with sf.SoundFile(path, "w", samplerate=C.SAMPLE_RATE, channels=1, subtype="PCM_16") as f:
        for _ in range(int(hours * 3600 / 60)):
            t = np.arange(60 * C.SAMPLE_RATE) / C.SAMPLE_RATE
            f.write((0.3 * np.sin(2 * np.pi * 150 * t) * (0.5 + 0.5 * np.sin(2 * np.pi * 0.5 * t))
                     + 0.02 * rng.standard_normal(t.size)).astype(np.float32))
    _run_cli(model_path, hours, path, backend)


def _run_cli(model_path: str, hours: float, path: str, backend: str) -> None:
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, PYTHONPATH=root)
    extra = [] if backend == "keras" else ["--backend", backend]
    for argv in (["encode", path, path + ".nac"], ["decode", path + ".nac", path + ".out.wav"]):
        argv = argv + extra
        t0 = time.perf_counter()
        out = subprocess.run(["/usr/bin/time", "-v", sys.executable, "-m", "cq_codec", *argv, "--model", model_path],
                             capture_output=True, text=True, env=env, cwd=root)
        rss = [line for line in out.stderr.splitlines() if "Maximum resident" in line]
        print(f"{backend} {argv[0]} {hours:g} h: exit {out.returncode}, {time.perf_counter() - t0:.0f} s, "
              f"{rss[0].strip() if rss else out.stderr[-500:]}")
    print(f".nac size {os.path.getsize(path + '.nac')} bytes for {hours:g} h")


def main(_):
    from cq_codec.data.audio import load_audio
    wav = load_audio(FLAGS.wav)
    workdir = FLAGS.workdir or tempfile.mkdtemp(prefix="cq_bench_")
    os.makedirs(workdir, exist_ok=True)
    model_path = FLAGS.model or tiny_model(wav, FLAGS.train_steps, os.path.join(workdir, "tiny.keras"))
    names = [v for b in FLAGS.backends for v in ([b, b + "/seq"] if FLAGS.sequential else [b])]
    codecs = {b: _load(model_path, b) for b in names}
    first = next(iter(codecs.values()))
    print(f"model {model_path}; {len(wav) / C.SAMPLE_RATE:.2f} s of {FLAGS.wav}; "
          f"operating points {[(p[0], round(p[1], 2)) for p in first.operating_points]}; "
          f"postfilter {'on' if first.postfilter else 'off'}; backends {', '.join(codecs)}; {os.cpu_count()} CPUs, "
          f"load average {os.getloadavg()[0]:.1f} at start")
    from cq_codec.bitstream.entropy import range_coder
    from lpc.filters import kernels
    print("entropy model kinds:", {k: v["kind"] for k, v in first.model.entropy_tables["report"].items()},
          f"range coder {range_coder()} ($CQ_CODEC_RANGE_CODER), decoder filters {kernels()} ($CQ_CODEC_KERNELS)")
    if FLAGS.repeats > 0:
        measure(codecs, wav)
    if FLAGS.profile:
        for b in FLAGS.backends:
            profile(codecs[b], wav)
    print(f"peak RSS of this process: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB; "
          f"load average {os.getloadavg()[0]:.1f} at the end")
    if FLAGS.hours > 0:
        for b in FLAGS.backends:
            memory_test(model_path, FLAGS.hours, workdir, b)


if __name__ == "__main__":
    app.run(main)
