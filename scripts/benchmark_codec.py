"""Benchmark the codec end to end: speed (x real time, entropy coding included), bitrate vs the
entropy estimate, and peak memory of the CLI on a long generated input.

    python scripts/benchmark_codec.py [--model PATH] [--wav PATH] [--hours 1.0]

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
flags.DEFINE_integer("repeats", 3, "timed repetitions per operating point (the best is reported)")
flags.DEFINE_string("workdir", None, "where to put generated files (default: a temp dir)")
flags.DEFINE_bool("postfilter", True, "decode through the adaptive postfilter (--nopostfilter: without)")


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


def measure(codec, wav: np.ndarray) -> None:
    from cq_codec.bitstream import codec_stream as cs
    from cq_codec.bitstream.container import read_nac
    seconds = len(wav) / C.SAMPLE_RATE
    models = cs.entropy_models(codec.model)
    from cq_codec.flops import count_flops
    for n, expected, _ in codec.operating_points:
        gflops = count_flops(codec.model, n) * C.FRAMES_PER_SECOND / 1e9
        codec.decompress(codec.compress(wav[:16000], C.SAMPLE_RATE, num_modules=n))  # warm-up (tracing)
        t_enc = t_dec = float("inf")
        for _ in range(FLAGS.repeats):   # best of `repeats`: the least disturbed run
            t0 = time.perf_counter()
            data = codec.compress(wav, C.SAMPLE_RATE, num_modules=n)
            t_enc = min(t_enc, time.perf_counter() - t0)
            t0 = time.perf_counter()
            y, _ = codec.decompress(data)
            t_dec = min(t_dec, time.perf_counter() - t0)
        _, _, chunks = read_nac(data)
        codes = codec.encode(wav, C.SAMPLE_RATE, num_modules=n)
        estimate = sum(cs.chunk_bits(c, models) for c in codes.chunks(codec.frames_per_chunk))
        empirical = codes.entropy_bits()
        kbps = lambda bits: bits / seconds / 1000.0  # noqa: E731
        payload = 8 * sum(len(c) for c in chunks)
        snr = 10 * np.log10(np.sum(wav ** 2) / max(np.sum((wav - y) ** 2), 1e-20))
        print(f"{n} module(s): file {kbps(8 * len(data)):.2f} kbps, payload {kbps(payload):.2f} kbps, "
              f"estimate {kbps(estimate):.2f} kbps (payload/estimate "
              f"{payload / estimate:.4f}, file/estimate {8 * len(data) / estimate:.4f}), "
              f"zeroth-order empirical entropy {kbps(empirical):.2f} kbps, tables' expectation {expected:.2f} kbps; "
              f"encode {seconds / t_enc:.1f}x real time, decode {seconds / t_dec:.1f}x real time, "
              f"encode + decode {seconds / (t_enc + t_dec):.1f}x; forward pass {gflops:.2f} GFLOP per second of audio; "
              f"SNR {snr:.2f} dB")


def memory_test(model_path: str, hours: float, workdir: str) -> None:
    """Generate `hours` of audio block by block, run the CLI encode/decode, report peak RSS."""
    path = os.path.join(workdir, "long.wav")
    rng = np.random.default_rng(0)
    with sf.SoundFile(path, "w", samplerate=C.SAMPLE_RATE, channels=1, subtype="PCM_16") as f:
        for _ in range(int(hours * 3600 / 60)):
            t = np.arange(60 * C.SAMPLE_RATE) / C.SAMPLE_RATE
            f.write((0.3 * np.sin(2 * np.pi * 150 * t) * (0.5 + 0.5 * np.sin(2 * np.pi * 0.5 * t))
                     + 0.02 * rng.standard_normal(t.size)).astype(np.float32))
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, PYTHONPATH=root)
    for argv in (["encode", path, path + ".nac"], ["decode", path + ".nac", path + ".out.wav"]):
        t0 = time.perf_counter()
        out = subprocess.run(["/usr/bin/time", "-v", sys.executable, "-m", "cq_codec", *argv, "--model", model_path],
                             capture_output=True, text=True, env=env, cwd=root)
        rss = [line for line in out.stderr.splitlines() if "Maximum resident" in line]
        print(f"{argv[0]} {hours:g} h: exit {out.returncode}, {time.perf_counter() - t0:.0f} s, "
              f"{rss[0].strip() if rss else out.stderr[-500:]}")
    print(f".nac size {os.path.getsize(path + '.nac')} bytes for {hours:g} h")


def main(_):
    from cq_codec import api
    from cq_codec.data.audio import load_audio
    wav = load_audio(FLAGS.wav)
    workdir = FLAGS.workdir or tempfile.mkdtemp(prefix="cq_bench_")
    os.makedirs(workdir, exist_ok=True)
    model_path = FLAGS.model or tiny_model(wav, FLAGS.train_steps, os.path.join(workdir, "tiny.keras"))
    codec = api.load(model_path, postfilter=FLAGS.postfilter)
    print(f"model {model_path}; {len(wav) / C.SAMPLE_RATE:.2f} s of {FLAGS.wav}; "
          f"operating points {[(p.modules, round(p.kbps, 2)) for p in codec.operating_points]}; postfilter {'on' if codec.postfilter else 'off'}")
    print("entropy model kinds:", {k: v["kind"] for k, v in codec.model.entropy_tables["report"].items()})
    measure(codec, wav)
    print(f"peak RSS of this process: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB")
    if FLAGS.hours > 0:
        memory_test(model_path, FLAGS.hours, workdir)


if __name__ == "__main__":
    app.run(main)
