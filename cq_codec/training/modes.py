"""One policy per training step, shared by `main.py` (through `cq_codec.experiment`) and every
study script: data (corpus -> splits -> frame cache), datasets, the model built and trained by
stages (`trainer.train`), entropy tables fitted on training utterances, the codec saved.

`train(cfg)` writes results/<name>/: config.json, checkpoints/, metrics.csv, tensorboard/,
plots/training.png, train_seconds.txt and model.keras (the trained codec with its tables).
Evaluation, mode 0 and the end-to-end run are in `cq_codec.experiment` (above the API).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time

import keras
import numpy as np
import soundfile as sf
import tensorflow as tf

import constants as C
from cq_codec.config import Config, ConfigError
from cq_codec.data import noise, pipeline, pitch
from cq_codec.data.audio import load_audio
from cq_codec.evaluation.studies import plot_history
from cq_codec.inference import fit_entropy_tables
from cq_codec.training import trainer
from cq_codec.training.atomic import atomic_write, write_text
from cq_codec.training.callbacks import fault_point
from cq_codec.training.corpus import load_splits
from lpc.ltp import LongTermPredictor

__all__ = ["load_splits", "train", "load_data", "make_strategy", "is_chief", "noise_source", "datasets", "first_batch",
           "fit_tables", "trained_modules", "weights_fingerprint", "TABLE_MINUTES"]

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
            raise ConfigError("--distribute multiworker needs the TF_CONFIG environment variable "
                              "(cluster spec and this host's task) set on every worker; see README 'Multi-worker training'")
        return tf.distribute.MultiWorkerMirroredStrategy()
    return tf.distribute.get_strategy()


def is_chief(strategy) -> bool:
    """True except on the non-chief workers of a multi-worker job (the chief is the 'chief' task,
    or worker 0 when the cluster has none): only the chief writes the experiment folder."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not getattr(resolver, "task_type", None):
        return True
    has_chief = "chief" in resolver.cluster_spec().as_dict()
    return resolver.task_type == "chief" or (not has_chief and resolver.task_type == "worker" and resolver.task_id == 0)


def load_data(cfg: Config):
    """Corpus -> splits -> frame cache. Builds the demo corpus when asked for and missing."""
    parts = load_splits(cfg)
    if cfg.max_train_minutes > 0:
        parts["train"] = _cap_minutes(parts["train"], cfg.max_train_minutes, cfg.seed)
    cache_dir = os.path.join(cfg.cache_dir, _cache_name(cfg))
    cache = pipeline.prepare_cache(parts, cache_dir, speeds=cfg.speed_perturb)
    return parts, cache


def _cache_name(cfg: Config) -> str:
    tag = os.path.basename(os.path.normpath(cfg.data_dir)) or "data"
    return (f"{tag}-{cfg.corpus}" + (f"-{cfg.max_train_minutes:g}min-s{cfg.seed}" if cfg.max_train_minutes > 0 else "")
            + ("-speed" + "_".join(f"{f:g}" for f in cfg.speed_perturb) if cfg.speed_perturb else ""))


def _cap_minutes(utts, minutes: float, seed: int):
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


def noise_source(cfg: Config, train_utts):
    """`--noise_dir`, else coloured noise + babble of up to 40 seeded training utterances."""
    if cfg.noise_dir:
        return noise.default_noise(noise_dir=cfg.noise_dir)
    pick = np.random.default_rng([cfg.seed, 7]).permutation(len(train_utts))[:40]
    return noise.default_noise([load_audio(train_utts[i].path) for i in pick], [train_utts[i].speaker for i in pick])


def datasets(cfg: Config, cache, train_utts=(), noisy_examples=None):
    """(train, val, steps per epoch): shuffled, repeated batches. `noisy_examples` (a
    `FrameNoiser`-like callable) makes denoising examples; by default one is built from
    `cfg.train_snr` (none when it is empty)."""
    if noisy_examples is None and cfg.train_snr:
        noisy_examples = noise.FrameNoiser(cache.std, tuple(cfg.train_snr), source=noise_source(cfg, train_utts))
    kw = dict(shuffle=True, repeat=True, drop_remainder=True, noisy_examples=noisy_examples)
    ltp = trainer.ltp_config(cfg)
    pred = {} if ltp is None else {s: pitch.pitch_prediction(cache, s, LongTermPredictor(**ltp)) for s in ("train", "val")}
    train_ds = pipeline.make_dataset(cache, "train", cfg.batch_size, seed=cfg.seed, pitch=pred.get("train"), **kw)
    val_ds = pipeline.make_dataset(cache, "val", cfg.batch_size, seed=cfg.seed + 1, pitch=pred.get("val"), **kw)
    steps = cfg.steps_per_epoch or max(1, cache.num_frames("train") // cfg.batch_size)
    return train_ds, val_ds, steps


def first_batch(cache, n: int = 512) -> dict:
    """The seeded batch the model is built from (LSF codebook init, residual scale)."""
    return next(pipeline.iterate_batches(cache, "train", n, shuffle=True, seed=0))


TABLE_MINUTES = 10.0   # training audio the entropy tables are fitted on


def fit_tables(model, utterances, seed: int, minutes: float = TABLE_MINUTES) -> dict:
    """Fits the bitstream's entropy tables on up to `minutes` of training utterances, taken in a
    seeded random order (the one policy: main.py and every study)."""
    if not utterances:
        raise ValueError("fitting entropy tables needs training utterances")
    order = np.random.default_rng(seed).permutation(len(utterances))
    wavs, total = [], 0.0
    for i in order:
        wav = load_audio(utterances[i].path)
        if wav.size:
            wavs.append(wav)
            total += wav.size / C.SAMPLE_RATE
        if total >= minutes * 60:
            break
    tables = fit_entropy_tables(model, wavs)
    log.info("entropy tables fitted on %.1f min of training audio: bits/frame %s", total / 60,
             [round(b, 1) for b in tables["bits_per_frame"]])
    return tables


def trained_modules(cfg: Config, state: dict) -> int:
    """How many leading modules of the cascade have been trained, from a checkpoint's state: a
    mode-1 run of a 2-module config leaves module 2 at its initial weights."""
    done = state.get("done", {})
    if done.get("finetune"):
        return cfg.num_modules
    trained = [k for k in range(2, cfg.num_modules + 1) if done.get(f"m{k}")]
    if trained:
        return max(trained)
    return 1 if done.get("m1") else cfg.num_modules   # nothing recorded (a legacy folder): all


def weights_fingerprint(model) -> dict:
    """sha256 of every weight's bytes and each weight's L2 norm: multi-worker replicas compare."""
    h = hashlib.sha256()
    norms = []
    for w in model.weights:
        v = np.ascontiguousarray(keras.ops.convert_to_numpy(w.value))
        h.update(v.tobytes())
        norms.append(float(np.sqrt(np.sum(v.astype(np.float64) ** 2))))
    return {"sha256": h.hexdigest(), "norms": norms}


def train(cfg: Config, noisy_examples=None, strategy=None, out: str | None = None, chief: bool = True) -> dict:
    """Trains `cfg` (its training mode's stages, resuming from the experiment's checkpoints), fits
    the entropy tables, saves `<experiment>/model.keras` (atomically) and plots the history.

    `out`: the folder this process writes (default the experiment's; a multi-worker job's
    non-chief workers pass a scratch folder and stop after training, `chief=False`).
    Returns {"model", "parts", "cache", "state", "train_seconds", "model_path"}; `train_seconds`
    adds up every session of the experiment (`train_seconds.txt`), so a resumed run reports the
    total.
    """
    strategy = strategy or tf.distribute.get_strategy()
    exp = cfg.experiment_dir
    out = out or exp
    keras.utils.set_random_seed(cfg.seed)
    tf.config.experimental.enable_op_determinism()
    os.makedirs(out, exist_ok=True)
    trainer.clean_partial_files(out)
    cfg.save(os.path.join(out, "config.json"))
    parts, cache = load_data(cfg)
    with strategy.scope():
        model = trainer.build_model(cfg, signal_std=cache.std, sample=first_batch(cache))
    train_ds, val_ds, steps = datasets(cfg, cache, parts["train"], noisy_examples)
    base = None
    if cfg.training_mode in (2, 5):
        base = (cfg.base_model_id if cfg.base_model_id.endswith(".keras")
                else os.path.join(cfg.results_dir, cfg.base_model_id))
    t0 = time.perf_counter()
    with strategy.scope():
        state = trainer.train(cfg, model, train_ds, val_ds, steps, base_dir=base, out_dir=out)
    seconds = time.perf_counter() - t0
    fp = weights_fingerprint(model)
    optimizer = getattr(model, "optimizer", None)   # none when every stage had finished already
    log.info("weights after %d optimizer steps: sha256 %s norms %s",
             int(optimizer.iterations.numpy()) if optimizer is not None else 0,
             fp["sha256"], json.dumps([round(n, 6) for n in fp["norms"]]))
    path = os.path.join(exp, "model.keras")
    result = {"model": model, "parts": parts, "cache": cache, "state": state, "model_path": path}
    if not chief:
        return {**result, "train_seconds": seconds}
    timing = os.path.join(exp, "train_seconds.txt")
    if os.path.exists(timing):
        with open(timing, encoding="utf-8") as fh:
            seconds += float(fh.read().strip() or 0.0)
    write_text(timing, f"{seconds:.3f}\n")
    fit_tables(model, parts["train"], cfg.seed)
    model.optimizer = None  # the codec file holds no optimizer slots (checkpoints/ keep them)
    with atomic_write(path, suffix=".keras") as tmp:
        model.save(tmp)
        fault_point("model_write")
    plot_history(os.path.join(exp, "metrics.csv"), os.path.join(exp, "plots", "training.png"))
    return {**result, "train_seconds": seconds}
