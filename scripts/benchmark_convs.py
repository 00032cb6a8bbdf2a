"""The arithmetic floor of the codec's networks: the model's own convolution shapes, timed alone.

    python scripts/benchmark_convs.py [--model cq_codec/pretrained/default.keras] [--frames 250]
        [--runtimes tf,tflite] [--threads 1,2] [--bf16] [--int8] [--seconds 0.4]

For each distinct Conv1D shape of one module (encoder and decoder; every module of the default
model has the same layers) it builds that convolution with the model's own weights, feeds it a
batch of `--frames` frames (a chunk: 250 hops; input [frames, positions, C_in]) and times it
through TensorFlow (the layer itself in a `tf.function`, oneDNN, TF's intra-op threads) and
through the LiteRT interpreter with XNNPACK (the same convolution frozen and converted as a
native Conv2D on [frames, 1, positions, C_in], the best case the converter can give XNNPACK),
at each of `--threads` interpreter threads. Each shape's time is the best of 5 trials of
repeated calls (the floor, not the typical). It also times the whole frame encoder and decoder
of one module (the layers plus the gating, tanh and adds between them) the same two ways, and a
float32 2048 x 2048 matrix product (numpy and TF) as the machine's reference rate.

From the per-shape times and the number of each shape in the graphs it derives the network time
per second of audio of encode (n encoders + n - 1 decoders) and decode (n decoders) at 1..3
modules, and so the best encode + decode x real time the networks alone allow.

`--bf16`: also the TF convolutions in bfloat16 (inputs and kernels cast; oneDNN's AVX512_BF16
kernels). `--int8`: also LiteRT with dynamic-range int8 weights (`Optimize.DEFAULT`, no
representative data). Both are speed probes only; their accuracy is measured on the codec by
scripts/benchmark_codec.py.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
from absl import app, flags  # noqa: E402

import constants as C  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_string("model", "cq_codec/pretrained/default.keras", "trained .keras model")
flags.DEFINE_integer("frames", 250, "batch: frames per call (a chunk)")
flags.DEFINE_list("runtimes", ["tf", "tflite"], "tf and/or tflite")
flags.DEFINE_list("threads", ["2"], "LiteRT interpreter threads to measure")
flags.DEFINE_bool("bf16", False, "also TF convolutions in bfloat16")
flags.DEFINE_bool("int8", False, "also LiteRT with dynamic-range int8 weights")
flags.DEFINE_float("seconds", 0.4, "length of one timing trial")
flags.DEFINE_integer("trials", 5, "timing trials per measurement (the best is reported)")
flags.DEFINE_integer("max_modules", 3, "operating points 1..max_modules in the summary")


def best_time(fn, seconds: float, trials: int) -> float:
    """Best over `trials` of the mean time of one call, each trial ~`seconds` long."""
    fn()
    fn()
    t0 = time.perf_counter()
    fn()
    one = max(time.perf_counter() - t0, 1e-6)
    reps = max(1, int(seconds / one))
    best = float("inf")
    for _ in range(trials):
        t0 = time.perf_counter()
        for _ in range(reps):
            fn()
        best = min(best, (time.perf_counter() - t0) / reps)
    return best


def conv_layers(layers_list):
    """Every Conv1D of a module's encoder or decoder, in order, with the blocks' sublayers expanded."""
    import keras
    out = []
    for layer in layers_list:
        if isinstance(layer, keras.layers.Conv1D):
            out.append(layer)
        else:
            for name in ("reduce", "linear", "gate", "mid", "depthwise", "expand"):
                sub = getattr(layer, name, None)
                if isinstance(sub, keras.layers.Conv1D):
                    out.append(sub)
    return out


def shape_key(layer, cin: int) -> tuple:
    return (cin, layer.filters, layer.kernel_size[0], layer.dilation_rate[0], layer.strides[0])


def describe(key) -> str:
    cin, cout, k, d, s = key[:5]
    return (f"{cin}->{cout} k{k}" + (f" d{d}" if d > 1 else "") + (f" s{s}" if s > 1 else "")
            + (" (strided, as `fast`)" if len(key) > 5 else ""))


class _Cast:
    """A Conv1D's kernel / bias / activation seen in another dtype (for `strided_output_conv`)."""

    def __init__(self, layer, dtype):
        import tensorflow as tf
        self.kernel = tf.cast(layer.kernel, dtype)
        self.bias = tf.cast(layer.bias, dtype) if layer.use_bias else None
        self.use_bias = layer.use_bias
        self.activation = layer.activation


def tflite_runner(fn, spec, threads: int, int8: bool = False):
    """A LiteRT interpreter (XNNPACK) of a frozen tf.function with one input; returns a call.
    (`fn` must close over its weights: XNNPACK only takes convolutions with constant weights.)"""
    import tensorflow as tf
    from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2
    from cq_codec.backends import tflite_interpreter_class
    import absl.logging
    absl.logging.set_verbosity(absl.logging.ERROR)
    frozen = convert_variables_to_constants_v2(tf.function(fn, input_signature=[spec]).get_concrete_function())
    conv = tf.lite.TFLiteConverter.from_concrete_functions([frozen])
    if int8:
        conv.optimizations = [tf.lite.Optimize.DEFAULT]
    interp = tflite_interpreter_class()(model_content=conv.convert(), num_threads=threads)
    interp.allocate_tensors()
    x = np.random.default_rng(0).standard_normal(spec.shape).astype(np.float32)
    interp.set_tensor(interp.get_input_details()[0]["index"], x)
    return interp.invoke    # input set once, output left in the interpreter: no copies timed


def main(_):
    import tensorflow as tf
    from cq_codec import api
    codec = api.load(FLAGS.model)
    model = codec.model
    mod = model.codec_modules[0]
    n_frames = FLAGS.frames
    positions = mod.frame_size // mod.stride
    rng = np.random.default_rng(0)
    print(f"model {FLAGS.model}: {len(model.codec_modules)} modules, front end {mod.front_end}, {mod.channels} "
          f"channels, bottleneck {mod.bottleneck}, stride {mod.stride}; batch {n_frames} frames x {positions} "
          f"positions; {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}; TF intra-op threads "
          f"{tf.config.threading.get_intra_op_parallelism_threads() or 'default'}")

    # Reference: float32 matrix product.
    a = rng.standard_normal((2048, 2048)).astype(np.float32)
    t = best_time(lambda: a @ a, FLAGS.seconds, 3)
    ta = tf.constant(a)
    mm = tf.function(lambda: tf.matmul(ta, ta)[0, 0])
    t_tf = best_time(lambda: mm().numpy(), FLAGS.seconds, 3)
    code = ("import time, numpy as np; a = np.random.default_rng(0).standard_normal((2048, 2048)).astype(np.float32); "
            "a @ a; t = time.perf_counter(); [a @ a for _ in range(5)]; print(2 * 2048 ** 3 * 5 / (time.perf_counter() - t) / 1e9)")
    one = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=dict(
        os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", MKL_NUM_THREADS="1")).stdout.strip()
    print(f"float32 2048x2048 matmul: numpy {2 * 2048 ** 3 / t / 1e9:.0f} GFLOP/s ({float(one or 'nan'):.0f} on 1 thread), "
          f"TF {2 * 2048 ** 3 / t_tf / 1e9:.0f} GFLOP/s")

    # The module's convolutions, by side and shape. Every layer is taken to run on `positions`
    # steps: true of the patch front end (the default model's); not of the "conv" front end.
    sides = {side: [(shape_key(layer, int(layer.kernel.shape[1])), layer) for layer in conv_layers(layers)]
             for side, layers in (("encoder", mod.encoder_layers), ("decoder", mod.decoder_layers))}
    if mod.front_end != "patch":
        print("note: the conv front end changes lengths between layers; lengths below assume the code rate")

    shapes = {}
    for side, entries in sides.items():
        for key, layer in entries:
            shapes.setdefault(key, [layer, {"encoder": 0, "decoder": 0}])[1][side] += 1

    configs = []
    if "tf" in FLAGS.runtimes:
        configs.append(("tf fp32", None))
        if FLAGS.bf16:
            configs.append(("tf bf16", None))
    if "tflite" in FLAGS.runtimes:
        for th in FLAGS.threads:
            configs.append((f"tflite {th}t", int(th)))
        if FLAGS.int8:
            for th in FLAGS.threads:
                configs.append((f"tflite int8w {th}t", int(th)))
    names = [c[0] for c in configs]

    # The encoders' 64 -> 1 output convolution also as the "fast" backend computes it (16 output
    # positions in the 16 lanes: `residual_module.strided_output_conv`).
    for key, (layer, count) in list(shapes.items()):
        if key[1] == 1 and key[3] == 1 and key[4] == 1:
            shapes[key + ("strided",)] = [layer, {"encoder": 0, "decoder": 0}]

    times = {}   # (key, config) -> seconds per call
    print(f"\nper convolution shape (ms per call of {n_frames} frames; GFLOP/s in brackets)")
    print("| shape | MACs per frame | in encoder | in decoder | " + " | ".join(names) + " |")
    print("|---|---|---|---|" + "---|" * len(names))
    from cq_codec.models.residual_module import strided_output_conv
    for key, (layer, count) in shapes.items():
        cin, cout, k, d, s = key[:5]
        strided = len(key) > 5
        macs = positions // s * k * cin * cout
        x = tf.constant(rng.standard_normal((n_frames, positions, cin)).astype(np.float32))
        kernel = tf.constant(layer.kernel.numpy())
        bias = tf.constant(layer.bias.numpy()) if layer.use_bias else None
        cells = []
        for name, th in configs:
            if strided and name.startswith("tf "):
                xx = tf.cast(x, tf.bfloat16) if name == "tf bf16" else x
                f = tf.function(lambda xx=xx: strided_output_conv(_Cast(layer, xx.dtype), xx)[0, 0, 0])
                fn = lambda f=f: f().numpy()  # noqa: E731
            elif strided:
                ks = np.stack([np.pad(layer.kernel.numpy()[:, :, 0], [[j, 15 - j], [0, 0]]) for j in range(16)], -1)
                k4 = tf.constant(ks[None])    # [1, k + 15, cin, 16]
                left = (k - 1) // 2

                def conv2d(x4):   # closures, not default arguments: those would not be frozen into constants
                    xp = tf.pad(x4, [[0, 0], [0, 0], [left, k - 1 - left], [0, 0]])
                    y = tf.nn.conv2d(xp, k4, strides=[1, 1, 16, 1], padding="VALID")
                    return tf.reshape(y, [n_frames, positions, 1]) + bias
                fn = tflite_runner(conv2d, tf.TensorSpec([n_frames, 1, positions, cin], tf.float32), th,
                                   int8=name.startswith("tflite int8"))
            elif name == "tf fp32":
                f = tf.function(lambda: layer(x)[0, 0, 0])
                fn = lambda f=f: f().numpy()  # noqa: E731
            elif name == "tf bf16":
                xb, kb = tf.cast(x, tf.bfloat16), tf.cast(kernel, tf.bfloat16)
                f = tf.function(lambda: (tf.nn.convolution(xb, kb, strides=s, padding="SAME", dilations=d)
                                         + tf.cast(bias, tf.bfloat16))[0, 0, 0])
                fn = lambda f=f: f().numpy()  # noqa: E731
            else:
                k4 = tf.constant(layer.kernel.numpy()[None])    # [1, k, cin, cout]

                def conv2d(x4):
                    y = tf.nn.conv2d(x4, k4, strides=[1, 1, s, 1], padding="SAME", dilations=[1, 1, d, 1])
                    return y + bias
                fn = tflite_runner(conv2d, tf.TensorSpec([n_frames, 1, positions, cin], tf.float32), th,
                                   int8=name.startswith("tflite int8"))
            t = best_time(fn, FLAGS.seconds, FLAGS.trials)
            times[key, name] = t
            cells.append(f"{1000 * t:.2f} ({2 * macs * n_frames / t / 1e9:.0f})")
        print(f"| {describe(key)} | {macs:,} | {count['encoder']} | {count['decoder']} | " + " | ".join(cells) + " |")

    # Whole graphs of one module: the frame encoder (latent) and decoder.
    whole = {}
    frames = tf.constant(rng.standard_normal((n_frames, C.FRAME_SIZE, 1)).astype(np.float32))
    latents = tf.constant(np.tanh(rng.standard_normal((n_frames, mod.num_positions, mod.vector_dim))).astype(np.float32))
    graphs = {"encoder": (lambda v: mod.encode_latent(v), frames), "decoder": (lambda v: mod.decode_latent(v), latents)}
    if FLAGS.bf16:   # a second copy of the model whose module layers compute in bfloat16
        mod_b = api.load(FLAGS.model).model.codec_modules[0]
        for layer in mod_b.encoder_layers + mod_b.decoder_layers:
            for sub in layer._flatten_layers(include_self=True):
                sub.dtype_policy = "mixed_bfloat16"
        bf = {"encoder": lambda v: tf.cast(mod_b.encode_latent(tf.cast(v, tf.bfloat16)), tf.float32),
              "decoder": lambda v: tf.cast(mod_b.decode_latent(tf.cast(v, tf.bfloat16)), tf.float32)}
    for side, (g, inp) in graphs.items():
        for name, th in configs:
            if name == "tf fp32":
                f = tf.function(lambda g=g, inp=inp: g(inp)[0, 0, 0])
                fn = lambda f=f: f().numpy()  # noqa: E731
            elif name == "tf bf16":
                f = tf.function(lambda g=bf[side], inp=inp: g(inp)[0, 0, 0])
                fn = lambda f=f: f().numpy()  # noqa: E731
            else:
                fn = tflite_runner(g, tf.TensorSpec(inp.shape, tf.float32), th, int8=name.startswith("tflite int8"))
            whole[side, name] = best_time(fn, FLAGS.seconds, FLAGS.trials)

    macs_side = {side: sum(positions // key[4] * key[2] * key[0] * key[1] for key, _ in entries)
                 for side, entries in sides.items()}
    print(f"\nMACs per frame: encoder {macs_side['encoder']:,}, decoder {macs_side['decoder']:,} "
          f"(x {C.FRAMES_PER_SECOND:.2f} frames per second of audio)")
    print("\none module, ms per call of %d frames: sum of its convolutions alone (the output convolution "
          "in the faster of its two layouts) / the whole graph" % n_frames)
    print("| side | " + " | ".join(names) + " |\n|---|" + "---|" * len(names))
    sums = {}
    for side, entries in sides.items():
        cells = []
        for name, _ in configs:
            sums[side, name] = sum(min(times[key, name], times.get((key + ("strided",), name), np.inf))
                                   for key, _ in entries)
            w = whole.get((side, name))
            cells.append(f"{1000 * sums[side, name]:.2f} / " + (f"{1000 * w:.2f}" if w else "-"))
        print(f"| {side} | " + " | ".join(cells) + " |")

    audio = n_frames / C.FRAMES_PER_SECOND    # seconds of audio per call
    print(f"\nnetworks only, x real time (a call of {n_frames} frames = {audio:.2f} s of audio); "
          "convs = sum of the convolutions alone, graph = whole module graphs")
    print("| modules | GFLOP/s of audio enc / dec | runtime | encode convs / graph | decode convs / graph | "
          "encode + decode convs / graph |\n|---|---|---|---|---|---|")
    for n in range(1, FLAGS.max_modules + 1):
        ge = (n * macs_side["encoder"] + (n - 1) * macs_side["decoder"]) * 2 * C.FRAMES_PER_SECOND / 1e9
        gd = n * macs_side["decoder"] * 2 * C.FRAMES_PER_SECOND / 1e9
        for name, _ in configs:
            row = []
            for src in (sums, whole):
                if ("encoder", name) not in src:
                    row.append(None)
                    continue
                te = n * src["encoder", name] + (n - 1) * src["decoder", name]
                td = n * src["decoder", name]
                row.append((audio / te, audio / td, audio / (te + td)))
            fmt = lambda i: " / ".join("-" if r is None else f"{r[i]:.0f}x" for r in row)  # noqa: E731
            print(f"| {n} | {ge:.2f} / {gd:.2f} | {name} | {fmt(0)} | {fmt(1)} | {fmt(2)} |")
    print(f"\nload average {os.getloadavg()[0]:.1f} at the end")


if __name__ == "__main__":
    app.run(main)
