"""`main.py --training_mode N`: data, model, the greedy schedule, evaluation and the results folder.

results/<name>/: config.json (the resolved config), checkpoints/, metrics.csv (one row per
epoch), tensorboard/, plots/training.png, model.keras (the trained codec), audio/ (clean and
decoded test clips) and eval.csv + eval.md (per-clip and mean scores).
"""

from __future__ import annotations

import logging
import os

import keras
import numpy as np
import tensorflow as tf

import constants as C
from cq_codec.config import Config
from cq_codec.training import trainer

__all__ = ["run", "load_data", "make_strategy", "evaluate"]

log = logging.getLogger("cq_codec.modes")


def make_strategy(cfg: Config):
    """The tf.distribute strategy: default (one device), mirrored over the logical CPUs, or
    multi-worker from TF_CONFIG."""
    if cfg.distribute == "mirrored":
        cpus = tf.config.list_physical_devices("CPU")
        try:  # must run before anything lists logical devices (that initialises them)
            tf.config.set_logical_device_configuration(cpus[0], [tf.config.LogicalDeviceConfiguration()] * 2)
        except RuntimeError as exc:
            if len(tf.config.list_logical_devices("CPU")) < 2:
                raise RuntimeError("--distribute mirrored: TensorFlow was initialised before the two logical "
                                   "CPU devices could be made; start a fresh process") from exc
        return tf.distribute.MirroredStrategy([d.name for d in tf.config.list_logical_devices("CPU")[:2]])
    if cfg.distribute == "multiworker":
        if "TF_CONFIG" not in os.environ:
            raise ValueError("--distribute multiworker needs the TF_CONFIG environment variable "
                             "(cluster spec and task) set on every worker")
        return tf.distribute.MultiWorkerMirroredStrategy()
    return tf.distribute.get_strategy()


def load_data(cfg: Config):
    """Corpus -> splits -> frame cache. Builds the demo corpus when asked for and missing."""
    from cq_codec.data import corpora, pipeline, splits
    if cfg.corpus == "demo" and not os.path.exists(os.path.join(cfg.data_dir, "manifest.json")):
        from cq_codec.data.demo import build_demo_corpus
        build_demo_corpus(cfg.data_dir)
    utts = corpora.discover(cfg.data_dir, cfg.corpus)
    parts = splits.split_utterances(utts, seed=cfg.seed)
    if cfg.max_train_minutes > 0:
        parts["train"] = _cap_minutes(parts["train"], cfg.max_train_minutes, cfg.seed)
    cache_dir = os.path.join(cfg.cache_dir, _cache_name(cfg))
    cache = pipeline.prepare_cache(parts, cache_dir)
    return parts, cache


def _cache_name(cfg: Config) -> str:
    tag = os.path.basename(os.path.normpath(cfg.data_dir)) or "data"
    return f"{tag}-{cfg.corpus}" + (f"-{cfg.max_train_minutes:g}min-s{cfg.seed}" if cfg.max_train_minutes > 0 else "")


def _cap_minutes(utts, minutes: float, seed: int):
    import soundfile as sf
    order = np.random.default_rng(seed).permutation(len(utts))
    kept, total = [], 0.0
    for i in order:
        try:
            total += sf.info(utts[i].path).duration
        except RuntimeError:
            continue
        kept.append(utts[i])
        if total >= minutes * 60:
            break
    return sorted(kept)


def _datasets(cfg: Config, cache):
    from cq_codec.data.pipeline import make_dataset
    train = make_dataset(cache, "train", cfg.batch_size, shuffle=True, seed=cfg.seed, repeat=True, drop_remainder=True)
    val = make_dataset(cache, "val", cfg.batch_size, shuffle=True, seed=cfg.seed + 1, repeat=True, drop_remainder=True)
    steps = cfg.steps_per_epoch or max(1, cache.num_frames("train") // cfg.batch_size)
    return train, val, steps


def _first_batch(cache, n: int = 512) -> dict:
    from cq_codec.data.pipeline import iterate_batches
    return next(iterate_batches(cache, "train", n, shuffle=True, seed=0))


def evaluate(cfg: Config, model, utterances, out_dir: str) -> list[dict]:
    """Encodes and decodes up to `cfg.eval_clips` test utterances with hard quantization at
    every operating point (modules 1..N); writes audio/, eval.csv and eval.md."""
    import csv
    from cq_codec import inference
    from cq_codec.data.audio import load_audio, write_wav
    from cq_codec.evaluation.metrics import score
    audio_dir = os.path.join(out_dir, "audio")
    os.makedirs(audio_dir, exist_ok=True)
    rows = []
    for k, utt in enumerate(utterances[: cfg.eval_clips]):
        wav = load_audio(utt.path)
        base = f"{k:02d}_{os.path.splitext(os.path.basename(utt.path))[0]}"
        write_wav(os.path.join(audio_dir, f"{base}_clean.wav"), wav)
        for n in range(1, len(model.codec_modules) + 1):
            codes = inference.encode(model, wav, num_active=n)
            decoded = inference.decode(model, codes)
            write_wav(os.path.join(audio_dir, f"{base}_decoded_{n}modules.wav"), decoded)
            row = {"clip": base, "modules": n, "seconds": len(wav) / C.SAMPLE_RATE,
                   "entropy_kbps": _empirical_kbps(codes)}
            row.update(score(wav, decoded))
            rows.append(row)
            log.info("eval %s with %d modules: %s", base, n, {k: round(float(v), 3) for k, v in row.items() if k not in ("clip",)})
    if rows:
        with open(os.path.join(out_dir, "eval.csv"), "w", newline="", encoding="utf-8") as fh:
            w = csv.DictWriter(fh, list(rows[0]))
            w.writeheader()
            w.writerows(rows)
        _write_summary(rows, os.path.join(out_dir, "eval.md"))
    return rows


def _entropy_bits(codes: np.ndarray) -> float:
    """Zeroth-order empirical entropy (bits) of each stream of int codes [..., S], summed."""
    flat = codes.reshape(-1, codes.shape[-1])
    total = 0.0
    for s in range(flat.shape[1]):
        _, counts = np.unique(flat[:, s], return_counts=True)
        p = counts / counts.sum()
        total += -float((counts * np.log2(p)).sum())
    return total


def _empirical_kbps(codes) -> float:
    """An entropy estimate of the bitrate (the bitstream's measured rate is in eval of .nac)."""
    bits = _entropy_bits(codes.lsf) + sum(_entropy_bits(c) for c in codes.modules)
    return bits / (codes.num_samples / C.SAMPLE_RATE) / C.BITS_PER_KBIT


def _write_summary(rows: list[dict], path: str) -> None:
    keys = [k for k in rows[0] if k not in ("clip", "modules", "seconds")]
    lines = ["| modules | " + " | ".join(keys) + " |", "|---" * (len(keys) + 1) + "|"]
    for n in sorted({r["modules"] for r in rows}):
        sel = [r for r in rows if r["modules"] == n]
        means = [np.nanmean([float(r[k]) for r in sel]) for k in keys]
        lines.append(f"| {n} | " + " | ".join(f"{m:.3f}" for m in means) + " |")
    with open(path, "w", encoding="utf-8") as fh:
        fh.write("\n".join(lines) + "\n")


def plot_history(csv_path: str, out_path: str) -> None:
    """Training curves from metrics.csv: loss, time/mel terms and estimated kbps per epoch."""
    import csv
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    with open(csv_path, newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    if not rows:
        return
    x = np.arange(1, len(rows) + 1)
    get = lambda k: np.array([float(r[k]) if r.get(k) not in (None, "") else np.nan for r in rows])
    fig, axes = plt.subplots(1, 3, figsize=(14, 4))
    for key in ("loss", "val_loss"):
        axes[0].plot(x, get(key), label=key)
    for key in ("time", "val_time", "mel", "val_mel"):
        axes[1].plot(x, get(key), label=key)
    for key in ("kbps", "val_kbps"):
        axes[2].plot(x, get(key), label=key)
    for ax, title, unit in zip(axes, ("total loss", "reconstruction terms", "estimated bitrate"), ("loss", "RMSE", "kbps")):
        ax.set_title(title)
        ax.set_xlabel("epoch (all stages in order)")
        ax.set_ylabel(unit)
        ax.legend()
    stages = [r["stage"] for r in rows]
    for i in range(1, len(stages)):
        if stages[i] != stages[i - 1]:
            for ax in axes:
                ax.axvline(i + 0.5, color="grey", ls=":")
    fig.tight_layout()
    os.makedirs(os.path.dirname(out_path), exist_ok=True)
    fig.savefig(out_path, dpi=100)
    plt.close(fig)


def run(cfg: Config) -> dict:
    """Runs one training mode (or evaluation) end to end; returns a summary dict."""
    strategy = make_strategy(cfg)
    keras.utils.set_random_seed(cfg.seed)
    tf.config.experimental.enable_op_determinism()
    exp = cfg.experiment_dir
    os.makedirs(exp, exist_ok=True)
    cfg.save(os.path.join(exp, "config.json"))
    parts, cache = load_data(cfg)
    model_path = os.path.join(exp, "model.keras")
    with strategy.scope():
        model = trainer.build_model(cfg, signal_std=cache.std, sample=_first_batch(cache))
    if cfg.training_mode == 0:
        weights = trainer.latest_weights(exp) or (trainer.latest_weights(os.path.join(cfg.results_dir, cfg.base_model_id))
                                                 if cfg.base_model_id else None)
        if not weights:
            raise FileNotFoundError(f"mode 0 evaluates a trained model: no checkpoint in {exp}/checkpoints "
                                    f"(train first, or name one with --base_model_id)")
        model.load_weights(weights)
    else:
        train_ds, val_ds, steps = _datasets(cfg, cache)
        base = os.path.join(cfg.results_dir, cfg.base_model_id) if cfg.training_mode in (2, 5) else None
        with strategy.scope():
            trainer.train(cfg, model, train_ds, val_ds, steps, base_dir=base)
        model.save(model_path)
        plot_history(os.path.join(exp, "metrics.csv"), os.path.join(exp, "plots", "training.png"))
    rows = evaluate(cfg, model, parts["test"], exp)
    return {"experiment": exp, "eval_rows": len(rows)}
