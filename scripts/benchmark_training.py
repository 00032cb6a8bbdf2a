"""Training throughput and cost of module architectures: frames/s, FLOPs per frame, params,
and the inference speed of their networks.

    python scripts/benchmark_training.py [--steps 30] [--batch_size 32] [--configs ref,sep64]
                                         [--inference_modules 3] [--inference_seconds 30]

For each configuration it times `train_step` of a one-module CQ codec on random frames (after
a warm-up that absorbs tracing), counts the multiply-adds of every convolution analytically
(FLOPs = 2 x MACs, forward pass; a training step costs about 3x that) and reports how close to
the CPU's measured matmul peak the training runs. With --inference_modules N > 0 it also times
the traced `encode_frames` + `decode_frames` of an N-module random-weight codec on
--inference_seconds of frames (the network alone: no LPC, no entropy coding; best of 3), as a
multiple of real time. Speed is a measurement, never a test.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import constants as C  # noqa: E402
from cq_codec.config import Config  # noqa: E402
from cq_codec.flops import count_flops  # noqa: E402
from cq_codec.training.trainer import build_model  # noqa: E402

CONFIGS = {
    "ref": dict(channels=100, bottleneck=20, blocks_per_section=2, block_type="gln"),
    "ref_s4": dict(channels=100, bottleneck=20, blocks_per_section=2, block_type="gln", the_strides=(4,)),
    "gln64": dict(channels=64, bottleneck=16, blocks_per_section=2, block_type="gln"),
    "gln64_s4": dict(channels=64, bottleneck=16, blocks_per_section=2, block_type="gln", the_strides=(4,)),
    "gln48_s4_r1": dict(channels=48, bottleneck=12, blocks_per_section=1, block_type="gln", the_strides=(4,),
                        kernel_and_dilation=(9, 9, 2, 1)),   # the default model's modules
    "patch48_s4_r1": dict(channels=48, bottleneck=12, blocks_per_section=1, block_type="gln", the_strides=(4,),
                          kernel_and_dilation=(9, 9, 2, 1), front_end="patch"),
    "patch64_s4_r2": dict(channels=64, bottleneck=16, blocks_per_section=2, block_type="gln", the_strides=(4,),
                          kernel_and_dilation=(9, 9, 2, 1), front_end="patch"),
    "patch96_s4_r2": dict(channels=96, bottleneck=24, blocks_per_section=2, block_type="gln", the_strides=(4,),
                          kernel_and_dilation=(9, 9, 2, 1), front_end="patch"),
    "gln32_s4": dict(channels=32, bottleneck=8, blocks_per_section=2, block_type="gln", the_strides=(4,)),
    "sep64": dict(channels=64, bottleneck=32, blocks_per_section=2, block_type="separable"),
    "sep100": dict(channels=100, bottleneck=40, blocks_per_section=2, block_type="separable"),
    "bottleneck": dict(channels=100, bottleneck=20, blocks_per_section=2, block_type="bottleneck"),
}


def matmul_peak(seconds: float = 2.0) -> float:
    """Measured float32 GEMM FLOP/s of this CPU through TensorFlow (the practical peak)."""
    a = tf.random.normal([1024, 1024])
    f = tf.function(lambda: tf.matmul(a, a))
    f()
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        f().numpy()
        n += 1
    return n * 2 * 1024 ** 3 / (time.perf_counter() - t0)


def bench(name: str, steps: int, batch_size: int) -> dict:
    keras.utils.set_random_seed(0)
    cfg = Config(num_modules=1, **CONFIGS[name]).validate()
    model = build_model(cfg)
    model.compile(optimizer=keras.optimizers.Adam(1e-4))
    rng = np.random.default_rng(0)
    lsf = np.sort(rng.uniform(0.1, 3.0, (batch_size, 3, C.LPC_ORDER)), axis=-1).astype(np.float32)
    data = {"x": rng.standard_normal((batch_size, C.LPC_ORDER + C.FRAME_SIZE)).astype(np.float32), "lsf": lsf}
    ds = tf.data.Dataset.from_tensors(data).repeat()
    model.fit(ds, steps_per_epoch=3, epochs=1, verbose=0)  # tracing and warm-up
    t0 = time.perf_counter()
    model.fit(ds, steps_per_epoch=steps, epochs=1, verbose=0)
    dt = time.perf_counter() - t0
    flops = count_flops(model)
    module_params = model.codec_modules[0].count_params()
    return {"config": name, "params": module_params, "mflops_per_frame": flops / 1e6,
            "train_frames_per_s": steps * batch_size / dt, "train_gflops_per_s": 3 * flops * steps * batch_size / dt / 1e9}


def bench_inference(name: str, modules: int, seconds: float) -> dict:
    """x real time of the traced frame encoder and decoder of a `modules`-module codec."""
    keras.utils.set_random_seed(0)
    model = build_model(Config(num_modules=modules, **CONFIGS[name]).validate())
    frames = np.random.default_rng(0).standard_normal((int(seconds * C.FRAMES_PER_SECOND), C.FRAME_SIZE))
    frames = (0.3 * frames).astype(np.float32)
    model.decode_frames(model.encode_frames(frames))        # tracing
    t_enc = t_dec = float("inf")
    for _ in range(3):
        t0 = time.perf_counter()
        codes = [c.numpy() for c in model.encode_frames(frames)]
        t1 = time.perf_counter()
        model.decode_frames(codes).numpy()
        t2 = time.perf_counter()
        t_enc, t_dec = min(t_enc, t1 - t0), min(t_dec, t2 - t1)
    return {"encode_x": seconds / t_enc, "decode_x": seconds / t_dec, "both_x": seconds / (t_enc + t_dec),
            "gflops_per_audio_s": count_flops(model) * C.FRAMES_PER_SECOND / 1e9}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--batch_size", type=int, default=32)
    p.add_argument("--configs", default=",".join(CONFIGS))
    p.add_argument("--inference_modules", type=int, default=3, help="modules of the inference benchmark (0: skip)")
    p.add_argument("--inference_seconds", type=float, default=30.0)
    args = p.parse_args()
    peak = matmul_peak()
    print(f"measured float32 matmul peak: {peak / 1e9:.1f} GFLOP/s on {os.cpu_count()} cores")
    print("| config | params | MFLOPs/frame (fwd) | train frames/s | x real time (33.3 frames/s) | train GFLOP/s | % of peak |")
    print("|---|---|---|---|---|---|---|")
    for name in args.configs.split(","):
        r = bench(name, args.steps, args.batch_size)
        print(f"| {name} | {r['params']:,} | {r['mflops_per_frame']:.1f} | {r['train_frames_per_s']:.0f} | "
              f"{r['train_frames_per_s'] / C.FRAMES_PER_SECOND:.1f} | {r['train_gflops_per_s']:.1f} | "
              f"{100 * r['train_gflops_per_s'] * 1e9 / peak:.0f}% |", flush=True)
    if args.inference_modules > 0:
        n = args.inference_modules
        print(f"\nNetwork only, {n} modules, {args.inference_seconds:g} s of frames (x real time):\n")
        print("| config | GFLOP per s of audio | encode | decode | encode + decode |")
        print("|---|---|---|---|---|")
        for name in args.configs.split(","):
            r = bench_inference(name, n, args.inference_seconds)
            print(f"| {name} | {r['gflops_per_audio_s']:.2f} | {r['encode_x']:.1f} | {r['decode_x']:.1f} | "
                  f"{r['both_x']:.1f} |", flush=True)


if __name__ == "__main__":
    main()
