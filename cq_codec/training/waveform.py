"""Training of the waveform codec (`main.py --model_type waveform`; `cq_codec.experiment` runs
it and scores the model).

Mode 1 trains the one model (random segments of the training split's audio, held in memory as
int16), resuming from `checkpoints/` after every epoch. The loss
is the multi-resolution STFT loss plus the RVQ's commitment term (the codebooks follow the
encoder by EMA, the online k-means form of the codebook loss; with `use_ema=False` in the
quantizer config the codebook loss is a gradient term instead), plus, with `--adversarial`,
HiFi-GAN's LSGAN and feature-matching terms. The results folder holds config.json,
checkpoints/, metrics.csv, plots/training.png, model.keras (with entropy tables), audio/ and
eval.csv / eval.md (every codebook count on the test clips).
"""

from __future__ import annotations

import csv
import json
import logging
import os
import time

import keras
import numpy as np
import tensorflow as tf

import constants as C
from cq_codec.config import Config
from cq_codec.data.audio import AudioError, load_audio
from cq_codec.models.waveform import WaveformCodec, fit_entropy_tables, multi_resolution_stft_loss
from cq_codec.nn import discriminators as D
from cq_codec.training.callbacks import load_optimizer, save_optimizer
from cq_codec.training.corpus import load_splits

__all__ = ["train_codec", "build_model", "load_split_audio", "SegmentSampler"]

log = logging.getLogger("cq_codec.waveform")


def quantizer_config(cfg: Config) -> dict:
    q = {"num_stages": int(cfg.num_stages), "codebook_size": int(cfg.codebook_size),
         "dropout_prob": float(cfg.quantizer_dropout), "seed": int(cfg.seed)}
    if cfg.codebook_sizes:
        q["codebook_sizes"] = [int(k) for k in cfg.codebook_sizes]
    if cfg.stage_dims:
        q["stage_dims"] = [int(d) for d in cfg.stage_dims]
    return q


def build_model(cfg: Config):
    model = WaveformCodec(strides=list(cfg.wave_strides), channels=int(cfg.wave_channels),
                          latent_dim=int(cfg.wave_latent_dim), num_units=int(cfg.wave_units),
                          block_type=cfg.block_type, patch=bool(cfg.wave_patch), quantizer=quantizer_config(cfg),
                          name="waveform_codec")
    model.build()
    return model


def load_split_audio(utterances, max_minutes: float = 0.0, seed: int = 0) -> list[np.ndarray]:
    """The split's recordings as int16 arrays (16 kHz mono), in a seeded order, up to max_minutes (0 = all)."""
    order = np.random.default_rng(seed).permutation(len(utterances))
    out, total = [], 0
    for i in order:
        try:
            x = load_audio(utterances[i].path)
        except AudioError as e:
            log.warning("skipping %s", e)
            continue
        out.append(np.round(np.clip(x, -1, 1) * 32767).astype(np.int16))
        total += x.size
        if max_minutes > 0 and total >= max_minutes * 60 * C.SAMPLE_RATE:
            break
    return out


class SegmentSampler:
    """Random fixed-length segments of recordings (chosen in proportion to their length); shorter
    recordings are zero-padded. `batch(n)` -> float32 [n, length]."""

    def __init__(self, recordings, length: int, seed: int):
        if not recordings:
            raise ValueError("no recordings to sample training segments from")
        self.recs, self.length = recordings, int(length)
        lens = np.array([len(r) for r in recordings], np.float64)
        self.p = lens / lens.sum()
        self.rng = np.random.default_rng(seed)

    def batch(self, n: int) -> np.ndarray:
        out = np.zeros((n, self.length), np.float32)
        for j, i in enumerate(self.rng.choice(len(self.recs), size=n, p=self.p)):
            r = self.recs[i]
            start = self.rng.integers(0, max(1, len(r) - self.length + 1))
            seg = r[start:start + self.length].astype(np.float32) / 32768.0
            out[j, :len(seg)] = seg
        return out


def _ckpt_paths(exp: str) -> dict:
    d = os.path.join(exp, "checkpoints")
    return {"dir": d, "weights": os.path.join(d, "latest.weights.h5"), "opt": os.path.join(d, "latest.optimizer.npz"),
            "disc": os.path.join(d, "disc.weights.h5"), "dopt": os.path.join(d, "disc.optimizer.npz"),
            "state": os.path.join(d, "state.json")}


def _append_csv(path: str, row: dict) -> None:
    new = not os.path.exists(path)
    with open(path, "a", newline="", encoding="utf-8") as fh:
        w = csv.DictWriter(fh, list(row))
        if new:
            w.writeheader()
        w.writerow(row)


def train(cfg: Config, model, train_recs, val_recs) -> dict:
    """Trains `model` for cfg.epoch_tanh epochs of steps_per_epoch steps (resumable)."""
    exp = cfg.experiment_dir
    paths = _ckpt_paths(exp)
    os.makedirs(paths["dir"], exist_ok=True)
    seg = int(round(cfg.wave_segment * C.SAMPLE_RATE / model.hop)) * model.hop
    steps = cfg.steps_per_epoch or max(1, int(sum(len(r) for r in train_recs) / (seg * cfg.batch_size)))
    lr = float(cfg.learning_rate_tanh[0])
    total_steps = steps * cfg.epoch_tanh
    if cfg.lr_schedule == "cosine":
        sched = keras.optimizers.schedules.CosineDecay(lr, total_steps, alpha=0.1)
    else:
        sched = lr
    opt = keras.optimizers.Adam(sched, beta_1=0.8, beta_2=0.99, clipnorm=1.0)
    opt.build(model.trainable_variables)
    disc = dopt = None
    if cfg.adversarial:
        disc = D.WaveDiscriminator(channels=cfg.disc_channels, name="discriminator")
        disc(tf.zeros((1, seg)))
        dopt = keras.optimizers.Adam(lr, beta_1=0.8, beta_2=0.99)
        dopt.build(disc.trainable_variables)
    state = {"epochs_done": 0, "train_seconds": 0.0}
    if os.path.exists(paths["state"]) and os.path.exists(paths["weights"]):
        with open(paths["state"], encoding="utf-8") as fh:
            state = json.load(fh)
        model.load_weights(paths["weights"])
        load_optimizer(opt, model.trainable_variables, paths["opt"])
        if disc is not None and os.path.exists(paths["disc"]):
            disc.load_weights(paths["disc"])
            load_optimizer(dopt, disc.trainable_variables, paths["dopt"])
        log.info("resuming after epoch %d (%.0f s of training so far)", state["epochs_done"], state["train_seconds"])
    if state["epochs_done"] >= cfg.epoch_tanh:
        return state
    sampler = SegmentSampler(train_recs, seg, cfg.seed + 1000 * state["epochs_done"])
    val_batches = SegmentSampler(val_recs, seg, cfg.seed + 7).batch(cfg.validation_steps * cfg.batch_size // 4 or 8)
    w_adv, w_fm = float(cfg.adversarial_weight), float(cfg.feature_matching_weight)
    adv_on = tf.Variable(0.0, trainable=False)

    @tf.function(jit_compile=False)
    def train_step(x):
        with tf.GradientTape() as tape:
            y, out = model(x, training=True)
            stft = multi_resolution_stft_loss(x, y)
            loss = stft + out.aux_loss
            g_adv = fm = tf.constant(0.0)
            if disc is not None:
                real, fake = disc(x), disc(y)
                g_adv = D.generator_adversarial_loss(fake)
                fm = D.feature_matching_loss(real, fake)
                loss = loss + adv_on * (w_adv * g_adv + w_fm * fm)
        grads = tape.gradient(loss, model.trainable_variables)
        opt.apply(grads, model.trainable_variables)
        d_loss = tf.constant(0.0)
        if disc is not None:
            with tf.GradientTape() as dtape:
                d_loss = D.discriminator_loss(disc(x), disc(tf.stop_gradient(y)))
            dgrads = dtape.gradient(d_loss, disc.trainable_variables)
            dgrads = [g * adv_on for g in dgrads]
            dopt.apply(dgrads, disc.trainable_variables)
        m = out.metrics
        return {"loss": loss, "stft": stft, "commitment": out.aux_loss, "g_adv": g_adv, "fm": fm, "d_loss": d_loss,
                "active_stages": m["active_stages"], "perplexity": m["perplexity"],
                "replaced": tf.add_n([v for k, v in m.items() if k.startswith("replaced")] or [tf.constant(0.0)])}

    @tf.function
    def val_step(x, n):
        y, out = model(x, training=False, num_stages=n)
        return multi_resolution_stft_loss(x, y)

    csv_path = os.path.join(exp, "metrics.csv")
    for epoch in range(state["epochs_done"], cfg.epoch_tanh):
        t0 = time.time()
        sums = {}
        for s in range(steps):
            gstep = epoch * steps + s
            if disc is not None:
                adv_on.assign(1.0 if gstep >= cfg.adversarial_start else 0.0)
            logs = train_step(tf.constant(sampler.batch(cfg.batch_size)))
            for k, v in logs.items():
                sums[k] = sums.get(k, 0.0) + float(v)
            if s % 25 == 0:
                log.info("epoch %d step %d/%d: %s", epoch + 1, s, steps,
                         {k: round(float(v), 4) for k, v in logs.items()})
        row = {"stage": "waveform", "epoch": epoch + 1, **{k: v / steps for k, v in sums.items()}}
        # The same held-out segments at 1, N/2 and N codebooks.
        for n in sorted({1, max(1, model.num_codebooks // 2), model.num_codebooks}):
            vals = [float(val_step(tf.constant(val_batches[i:i + cfg.batch_size]), n))
                    for i in range(0, len(val_batches), cfg.batch_size)]
            row[f"val_stft_{n}"] = float(np.mean(vals))
        row["seconds"] = time.time() - t0
        state["epochs_done"] = epoch + 1
        state["train_seconds"] = state["train_seconds"] + row["seconds"]
        model.save_weights(os.path.join(paths["dir"], "tmp.weights.h5"))
        os.replace(os.path.join(paths["dir"], "tmp.weights.h5"), paths["weights"])
        save_optimizer(opt, os.path.join(paths["dir"], "tmp.optimizer.npz"))
        os.replace(os.path.join(paths["dir"], "tmp.optimizer.npz"), paths["opt"])
        if disc is not None:
            disc.save_weights(paths["disc"])
            save_optimizer(dopt, paths["dopt"])
        with open(paths["state"] + ".tmp", "w", encoding="utf-8") as fh:
            json.dump(state, fh, indent=1)
        os.replace(paths["state"] + ".tmp", paths["state"])
        _append_csv(csv_path, row)
        log.info("epoch %d done in %.0f s: %s", epoch + 1, row["seconds"],
                 {k: round(v, 4) for k, v in row.items() if isinstance(v, float)})
    return state


def plot_history(csv_path: str, out_path: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    with open(csv_path, newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    if not rows:
        return
    x = np.arange(1, len(rows) + 1)
    fig, ax = plt.subplots(1, 2, figsize=(10, 4))
    for k in [k for k in rows[0] if k == "stft" or k.startswith("val_stft")]:
        ax[0].plot(x, [float(r[k]) for r in rows], label=k)
    ax[0].set_title("multi-resolution STFT loss")
    ax[0].set_xlabel("epoch")
    ax[0].legend()
    ax[1].plot(x, [float(r["commitment"]) for r in rows], label="commitment")
    ax[1].set_title("commitment")
    ax[1].set_xlabel("epoch")
    fig.tight_layout()
    os.makedirs(os.path.dirname(out_path), exist_ok=True)
    fig.savefig(out_path, dpi=100)
    plt.close(fig)


def train_codec(cfg: Config, parts: dict | None = None) -> dict:
    """Mode 1: builds the model, trains it (resuming from checkpoints/), fits the entropy tables on
    the training audio and saves <experiment>/model.keras. Returns {"model", "parts",
    "train_seconds", "model_path"} (train_seconds: all sessions of a resumed run)."""
    keras.utils.set_random_seed(cfg.seed)
    exp = cfg.experiment_dir
    os.makedirs(exp, exist_ok=True)
    cfg.save(os.path.join(exp, "config.json"))
    parts = parts or load_splits(cfg)
    model = build_model(cfg)
    t0 = time.time()
    train_recs = load_split_audio(parts["train"], cfg.max_train_minutes, cfg.seed)
    val_recs = load_split_audio(parts["val"], 5.0, cfg.seed)
    log.info("loaded %.1f min of training audio in %.0f s", sum(len(r) for r in train_recs) / 960000, time.time() - t0)
    state = train(cfg, model, train_recs, val_recs)
    tables = fit_entropy_tables(model, train_recs)
    log.info("entropy tables: bits per frame per codebook %s", [round(b, 2) for b in tables["bits_per_frame"]])
    path = os.path.join(exp, "model.keras")
    model.save(path)
    with open(os.path.join(exp, "train_seconds.txt"), "w", encoding="utf-8") as fh:
        fh.write(f"{state['train_seconds']:.0f}\n")
    plot_history(os.path.join(exp, "metrics.csv"), os.path.join(exp, "plots", "training.png"))
    return {"model": model, "parts": parts, "train_seconds": float(state["train_seconds"]), "model_path": path}
