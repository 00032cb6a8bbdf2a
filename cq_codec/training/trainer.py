"""The greedy CMRL schedule with resumable checkpoints that chain between training modes.

Stages: `m1` (first module, with quantization-free pretrain epochs), `m2..mN` (each follower
trained with the earlier modules frozen, loss on the full sum), `finetune` (all jointly).
Mode 1 runs m1, 2 runs the followers on a restored base, 3 runs m1..mN, 4 adds finetune, 5 runs
finetune only. Every epoch writes `checkpoints/latest.*` and `state.json`; a later run of the same
experiment (any mode) skips finished epochs, so modes chain and a killed run resumes.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import sys

import keras
import numpy as np
import tensorflow as tf

import constants as C
from cq_codec.config import Config
from cq_codec.losses import bits_per_symbol_target
from cq_codec.models.cq import CQCodec, default_lsf_grid
from cq_codec.training.callbacks import AlphaSchedule, EpochCheckpoint, PretrainBypass, TauController, load_optimizer

__all__ = ["Stage", "plan_stages", "module_configs", "build_model", "train", "latest_weights"]

log = logging.getLogger("cq_codec.training")


@dataclasses.dataclass
class Stage:
    name: str
    active: int            # modules in the forward pass
    train_modules: tuple   # indices of the modules whose weights train
    train_lsf: bool
    epochs: int
    lr: float
    pretrain: int


def plan_stages(cfg: Config) -> list[Stage]:
    """The stages a training mode runs, in order."""
    n = cfg.num_modules
    first = Stage("m1", 1, (0,), cfg.is_cq, cfg.stage_epochs(cfg.epoch_tanh), cfg.per_module("learning_rate_tanh", 0),
                  cfg.pretrain_step)
    followers = []
    for k in range(2, n + 1):
        epochs = cfg.stage_epochs(cfg.per_module("epoch_followers", k - 2))
        followers.append(Stage(f"m{k}", k, (k - 1,), False, epochs,
                               cfg.per_module("learning_rate_followers", k - 2),
                               min(cfg.follower_pretrain_step, epochs - 1)))
    finetune = [Stage("finetune", n, tuple(range(n)), cfg.is_cq, cfg.stage_epochs(cfg.epoch_finetune),
                      cfg.learning_rate_finetune, 0)]
    finetune = finetune if cfg.epoch_finetune > 0 else []
    plan = {1: [first], 2: followers, 3: [first] + followers, 4: [first] + followers + finetune, 5: finetune}
    return plan.get(cfg.training_mode, [])


def quantizer_config(cfg: Config, i: int) -> dict:
    """The quantizer kwargs of module i from the study flags."""
    name = cfg.quantizer
    if name == "softmax":
        return {"name": "softmax", "num_bins": int(cfg.num_bins if i == 0 else cfg.per_module("num_bins_followers", i - 1)),
                "straight_through": {"soft": False, "hard": True, "identity": "identity"}[cfg.softmax_gradient]}
    if name == "vq":
        return {"name": "vq", "codebook_size": cfg.codebook_size, "seed": cfg.seed + i}
    if name == "rvq":
        size = cfg.codebook_sizes[0] if cfg.codebook_sizes else cfg.codebook_size
        return {"name": "rvq", "num_stages": cfg.num_stages, "codebook_size": int(size), "seed": cfg.seed + i}
    if name == "gumbel":
        return {"name": "gumbel", "codebook_size": cfg.codebook_size, "seed": cfg.seed + i,
                "entropy_temperature": cfg.gumbel_entropy_temperature}
    if name == "pq":
        size = cfg.codebook_sizes[0] if cfg.codebook_sizes else cfg.codebook_size
        groups = len(cfg.stage_dims) if cfg.stage_dims else 2
        return {"name": "pq", "num_groups": groups, "codebook_size": int(size), "seed": cfg.seed + i}
    raise ValueError(f"unknown quantizer {name!r}")


def module_configs(cfg: Config) -> list[dict]:
    vector_dim = 1 if cfg.quantizer == "softmax" else cfg.embedding_dim
    return [dict(channels=cfg.channels, bottleneck=cfg.bottleneck, num_resnets=cfg.blocks_per_section,
                 kernel_and_dilation=list(cfg.kernel_and_dilation), stride=cfg.stride(i),
                 block_type=cfg.block_type, code_dim=1, vector_dim=vector_dim,
                 quantizer=quantizer_config(cfg, i),
                 # Only when not the default, so a conv model's config (its identity in .nac
                 # headers) is what it was before the option existed.
                 **({"front_end": cfg.front_end} if cfg.front_end != "conv" else {}))
            for i in range(cfg.num_modules)]


def data_statistics(sample: dict) -> tuple[np.ndarray, float]:
    """From a batch of training examples: the LSF codebook init and the residual scale."""
    from lpc import tf_ops
    import lpc
    lsf = np.asarray(sample["lsf"], np.float32)
    a = tf_ops.per_sample_filters_tf(tf.constant(lsf))
    e = tf_ops.residual_tf(tf.constant(sample["x"], tf.float32), a).numpy() * lpc.frame_window()
    std = float(np.sqrt(np.mean(e ** 2)))
    return lsf.reshape(-1, C.LPC_ORDER), 1.0 / max(std, 1e-4)


def build_model(cfg: Config, signal_std: float = 1.0, sample: dict | None = None) -> CQCodec:
    lsf_samples, scale = (None, 1.0) if sample is None else data_statistics(sample)
    model = CQCodec(module_configs(cfg), is_cq=cfg.is_cq, lsf_grid=default_lsf_grid(cfg.lsf_bins, lsf_samples),
                    residual_scale=scale * cfg.res_scalar, signal_std=signal_std,
                    loss_weights=cfg.coeff_term, name="cq_codec")
    model.weighting_gamma = cfg.weighting_gamma
    model.spectral_loss = cfg.spectral_loss
    model.spectral_weight = cfg.spectral_weight
    model.build()
    return model


def latest_weights(experiment_dir: str) -> str | None:
    path = os.path.join(experiment_dir, "checkpoints", "latest.weights.h5")
    return path if os.path.exists(path) else None


def _state(ckpt_dir: str) -> dict:
    path = os.path.join(ckpt_dir, "state.json")
    if os.path.exists(path):
        with open(path, encoding="utf-8") as fh:
            return json.load(fh)
    return {"done": {}, "stage": None}


def _set_trainable(model: CQCodec, stage: Stage, prefix_loss: bool = False) -> None:
    for i, m in enumerate(model.codec_modules):
        m.trainable = i in stage.train_modules
        m.bypass.assign(0.0)
    model.lsf_quantizer.trainable = stage.train_lsf
    model.num_active = stage.active
    model.prefix_loss = stage.name == "finetune" and prefix_loss


def _tau_targets(cfg: Config, model: CQCodec, stage: Stage) -> dict:
    targets = {}
    for i in stage.train_modules:
        m = model.codec_modules[i]
        symbols = m.num_positions * m.quantizer.num_streams
        targets[i + 1] = (f"Hh_{i + 1}", bits_per_symbol_target(cfg.per_module("target_entropy", i), cfg.target_unit, symbols))
    if stage.train_lsf and cfg.lsf_target_entropy > 0:
        targets[0] = ("Hh_lsf", cfg.lsf_target_entropy)
    return targets


def train(cfg: Config, model: CQCodec, train_ds, val_ds, steps_per_epoch: int, base_dir: str | None = None,
          extra_callbacks=()) -> dict:
    """Runs the mode's stages, resuming from `<experiment>/checkpoints`. Returns the state dict.

    `extra_callbacks` run after the checkpoint of each epoch is written (tests use one to
    interrupt a run)."""
    exp = cfg.experiment_dir
    ckpt_dir = os.path.join(exp, "checkpoints")
    os.makedirs(ckpt_dir, exist_ok=True)
    state = _state(ckpt_dir)
    own = latest_weights(exp)
    if own:
        model.load_weights(own)
        log.info("resuming from %s (finished: %s)", own, state["done"])
    elif base_dir:
        base = latest_weights(base_dir)
        if not base:
            raise FileNotFoundError(f"--base_model_id: no checkpoint at {base_dir}/checkpoints/latest.weights.h5")
        model.load_weights(base)
        log.info("restored base model %s", base)
    for stage in plan_stages(cfg):
        done = int(state["done"].get(stage.name, 0))
        if done >= stage.epochs:
            log.info("stage %s already finished (%d epochs)", stage.name, done)
            continue
        _set_trainable(model, stage, cfg.finetune_prefix_loss)
        lr = stage.lr
        if cfg.lr_schedule == "cosine":
            # Decays to 10% over the stage; optimizer.iterations (restored on resume) drives it.
            lr = keras.optimizers.schedules.CosineDecay(stage.lr, decay_steps=max(1, stage.epochs * steps_per_epoch),
                                                        alpha=0.1)
        model.compile(optimizer=keras.optimizers.Adam(lr))
        if done > 0 and state.get("stage") == stage.name:
            ok = load_optimizer(model.optimizer, model.trainable_variables, os.path.join(ckpt_dir, "latest.optimizer.npz"))
            log.info("stage %s resumes at epoch %d (optimizer state %s)", stage.name, done + 1, "restored" if ok else "fresh")
        trained = [model.codec_modules[i] for i in stage.train_modules]
        quantized_epochs = stage.epochs - stage.pretrain
        anneal = (AlphaSchedule([m.quantizer for m in trained], cfg.alpha_start, cfg.alpha_end,
                                cfg.anneal_fraction * quantized_epochs * steps_per_epoch, stage.pretrain, steps_per_epoch)
                  if stage.name != "finetune" else AlphaSchedule([], 1.0, 1.0, 1, 0, 1))
        callbacks = [
            anneal,
            PretrainBypass(trained if stage.name != "finetune" else [], stage.pretrain),
            TauController(model.tau, _tau_targets(cfg, model, stage), cfg.tau_step, active_from_epoch=stage.pretrain,
                          tau_init=cfg.tau_init, calibrate=cfg.rate_calibration, signed=cfg.tau_signed),
            EpochCheckpoint(ckpt_dir, stage.name, state, os.path.join(exp, "metrics.csv")),
            keras.callbacks.TensorBoard(os.path.join(exp, "tensorboard", stage.name), write_graph=False),
            *extra_callbacks,
        ]
        log.info("stage %s: %d active modules, training %s, %d epochs, lr %g", stage.name, stage.active,
                 [i + 1 for i in stage.train_modules], stage.epochs, stage.lr)
        model.fit(train_ds, epochs=stage.epochs, initial_epoch=done, steps_per_epoch=steps_per_epoch,
                  validation_data=val_ds, validation_steps=cfg.validation_steps, callbacks=callbacks,
                  verbose=1 if sys.stdout.isatty() else 2)
        for m in model.codec_modules:
            m.bypass.assign(0.0)
    model.num_active = cfg.num_modules
    model.prefix_loss = False
    return state
