"""The greedy CMRL schedule with resumable checkpoints that chain between training modes.

Stages: `m1` (first module, with quantization-free pretrain epochs), `m2..mN` (each follower
trained with the earlier modules frozen, loss on the full sum), `finetune` (all jointly).
Mode 1 runs m1, 2 runs the followers on a restored base, 3 runs m1..mN, 4 adds finetune, 5 runs
finetune only. Every epoch writes a checkpoint directory `checkpoints/ckpt-<n>/` (weights,
optimizer slots, state.json with the metrics history) that appears by one rename; a later run of
the same experiment (any mode) skips finished epochs, so modes chain and a killed run resumes.
One run at a time holds an experiment folder (atomic.ExperimentLock).
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
import lpc
from lpc import tf_ops
from lpc.ltp import LongTermPredictor
from cq_codec.config import Config, ConfigError
from cq_codec.losses import bits_per_symbol_target
from cq_codec.models.cq import CQCodec, default_lsf_grid
from cq_codec.quantizers.base import Schedule
from cq_codec.training.atomic import ExperimentLock, replace_dir
from cq_codec.training.callbacks import (OPTIMIZER, WEIGHTS, EpochCheckpoint, FaultPoints, PretrainBypass,
                                         QuantizerSchedule, TauController, _legacy_state, latest_checkpoint, load_optimizer,
                                         read_checkpoint_state, write_metrics)

__all__ = ["Stage", "plan_stages", "module_configs", "build_model", "train", "latest_weights", "load_state", "restore_base",
           "stage_weights", "clean_partial_files"]

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
    for k in range(cfg.first_follower, n + 1):
        epochs = cfg.stage_epochs(cfg.per_module("epoch_followers", k - 2))
        followers.append(Stage(f"m{k}", k, (k - 1,), False, epochs,
                               cfg.per_module("learning_rate_followers", k - 2),
                               min(cfg.follower_pretrain_step, epochs - 1)))
    finetune = [Stage("finetune", n, tuple(range(cfg.finetune_from - 1, n)), cfg.is_cq and cfg.finetune_from == 1,
                      cfg.stage_epochs(cfg.epoch_finetune),
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
        q = {"name": "rvq", "num_stages": cfg.num_stages, "codebook_size": int(size), "seed": cfg.seed + i}
        # Per-codebook sizes and dims (seed 000) only when they differ, and front_end below only
        # when not the default: a model built today has the config (so the config hash .nac files
        # of versions 1-3 carry, bitstream/identity.py) a model built before the option had.
        if cfg.codebook_sizes and len(set(cfg.codebook_sizes)) > 1:
            q["codebook_sizes"] = [int(k) for k in cfg.codebook_sizes]
        if cfg.stage_dims:
            q["stage_dims"] = [int(d) for d in cfg.stage_dims]
        return q
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
    return [dict(channels=cfg.module_width(i)[0], bottleneck=cfg.module_width(i)[1], num_resnets=cfg.blocks_per_section,
                 kernel_and_dilation=list(cfg.kernel_and_dilation), stride=cfg.stride(i),
                 block_type=cfg.block_type, code_dim=1, vector_dim=vector_dim,
                 quantizer=quantizer_config(cfg, i),
                 # (only when not the default: see quantizer_config)
                 **({"front_end": cfg.front_end} if cfg.front_end != "conv" else {}))
            for i in range(cfg.num_modules)]


def gain_config(cfg: Config) -> dict | None:
    """The model's gain-shape coding (GainQuantizer kwargs), or None when off: 3 dB steps from
    --gain_floor_db up to at least +20 dB over the training residual's RMS."""
    if not cfg.gain_subframes:
        return None
    step = 3.0
    return {"subframes": int(cfg.gain_subframes), "floor_db": float(cfg.gain_floor_db), "step_db": step,
            "levels": int(np.ceil((20.0 - cfg.gain_floor_db) / step)) + 1}


def ltp_config(cfg: Config) -> dict | None:
    """The model's pitch predictor (`lpc.ltp.LongTermPredictor` kwargs), or None when off."""
    if not cfg.pitch_prediction:
        return None
    return LongTermPredictor(threshold=cfg.ltp_threshold, hold=cfg.ltp_hold).get_config()


def data_statistics(sample: dict) -> tuple[np.ndarray, float]:
    """From a batch of training examples: the LSF codebook init and the residual scale."""
    lsf = np.asarray(sample["lsf"], np.float32)
    a = tf_ops.per_sample_filters_tf(tf.constant(lsf))
    e = tf_ops.residual_tf(tf.constant(sample["x"], tf.float32), a).numpy() * lpc.frame_window()
    std = float(np.sqrt(np.mean(e ** 2)))
    return lsf.reshape(-1, C.LPC_ORDER), 1.0 / max(std, 1e-4)


def build_model(cfg: Config, signal_std: float = 1.0, sample: dict | None = None) -> CQCodec:
    lsf_samples, scale = (None, 1.0) if sample is None else data_statistics(sample)
    model = CQCodec(module_configs(cfg), is_cq=cfg.is_cq, lsf_grid=default_lsf_grid(cfg.lsf_bins, lsf_samples),
                    residual_scale=scale * cfg.res_scalar, signal_std=signal_std,
                    loss_weights=cfg.coeff_term, name="cq_codec",
                    gain=gain_config(cfg), ltp=ltp_config(cfg))
    model.weighting_gamma = cfg.weighting_gamma
    model.spectral_loss = cfg.spectral_loss
    model.ltp_shaped_loss = cfg.ltp_shaped_loss
    model.spectral_weight = cfg.spectral_weight
    model.spectral_high_weight = tuple(cfg.spectral_high_weight)
    model.spectral_low_weight = tuple(cfg.spectral_low_weight)
    model.build()
    return model


def load_state(experiment_dir: str) -> tuple[dict, str | None, str | None]:
    """(state, weights file, optimizer file) of the experiment's newest complete checkpoint
    (an empty state and None, None when there is none)."""
    ckpt_dir = os.path.join(experiment_dir, "checkpoints")
    latest = latest_checkpoint(ckpt_dir)
    if latest:
        return read_checkpoint_state(latest), os.path.join(latest, WEIGHTS), os.path.join(latest, OPTIMIZER)
    legacy = _legacy_state(ckpt_dir, os.path.join(experiment_dir, "metrics.csv"))
    if legacy is not None:
        return legacy, os.path.join(ckpt_dir, "latest.weights.h5"), os.path.join(ckpt_dir, "latest.optimizer.npz")
    return {"done": {}, "stage": None, "seq": 0, "history": []}, None, None


def latest_weights(experiment_dir: str) -> str | None:
    return load_state(experiment_dir)[1]


def _module_arch(module) -> dict:
    cfg = module.get_config()
    return {k: v for k, v in cfg.items() if k not in ("name", "trainable", "dtype")}


def restore_base(model: CQCodec, base: str, cfg: Config) -> None:
    """Loads the base model's weights (`--base_model_id`) into `model`.

    The same architecture: every weight, as keras loads it. A `.keras` base whose modules differ
    from `model`'s from some module k on (`--module_channels`, `--the_strides`, ... changed for
    them) is accepted by mode 2 when k >= --first_follower: those modules are trained anew by
    this run, so they keep their fresh initialisation, and every other weight (the modules
    before k, the LSF quantizer, the gains, the rate controller) is copied from the base. Any
    other difference is an error that names the modules."""
    if base.endswith(".keras"):
        base_model = keras.saving.load_model(base, compile=False)
        if len(base_model.codec_modules) != len(model.codec_modules):
            raise ConfigError(f"--base_model_id {base}: it has {len(base_model.codec_modules)} modules, this run "
                              f"{len(model.codec_modules)} (--num_modules)")
        differ = [i + 1 for i, (a, b) in enumerate(zip(model.codec_modules, base_model.codec_modules))
                  if _module_arch(a) != _module_arch(b)]
        if differ:
            fresh = set(range(cfg.first_follower, cfg.num_modules + 1))
            if cfg.training_mode != 2 or not set(differ) <= fresh:
                raise ConfigError(
                    f"--base_model_id {base}: module(s) {differ} differ in architecture from this run's; only "
                    f"modules that --training_mode 2 trains anew (--first_follower {cfg.first_follower} on) may differ")

            def outside(m):   # the weights of m not in the modules that start fresh, in order
                fresh_ids = {id(v) for i, mod in enumerate(m.codec_modules) if i + 1 in differ for v in mod.weights}
                return [v for v in m.weights if id(v) not in fresh_ids]

            mine, theirs = outside(model), outside(base_model)
            if [v.shape for v in mine] != [v.shape for v in theirs]:
                raise ConfigError(f"--base_model_id {base}: its weights outside modules {differ} do not match this run's")
            for v, w in zip(mine, theirs):
                v.assign(w)
            log.info("base model %s: modules %s differ in architecture and start fresh; the rest restored", base, differ)
            return
    model.load_weights(base)


def stage_weights(experiment_dir: str, stage: str) -> str | None:
    """The weights at the end of `stage` (m1, m2, ..., finetune), if it finished."""
    path = os.path.join(experiment_dir, "checkpoints", f"end-{stage}", WEIGHTS)
    return path if os.path.exists(path) else None


def _multiworker_workarounds(model) -> None:
    """Two Keras 3 (TF backend) steps that fail under MultiWorkerMirroredStrategy, patched on this
    model instance only (the model and its optimizer are built before fit()):

    - fit() first "symbolically builds" the model by reducing a distributed batch with
      `strategy.reduce`, which cannot take a dict of PerReplica values (every worker died at the
      first step with "Attempt to convert a value ({'x': PerReplica ...}) ... dict to a Tensor"):
      there is nothing left to build, so it is skipped;
    - each step's metrics are averaged over the workers with `strategy.reduce("MEAN", v,
      axis=0)`, which fails on scalars ("Invalid reduction dimension 0 for input with 0
      dimensions"): the steps return them with shape [1], reduced to the workers' mean."""
    if not (isinstance(tf.distribute.get_strategy(), tf.distribute.MultiWorkerMirroredStrategy) and model.built):
        return
    if "_maybe_symbolic_build" not in vars(model):
        model._maybe_symbolic_build = lambda *args, **kwargs: None
        train_step, test_step = model.train_step, model.test_step
        model.train_step = lambda data: {k: tf.reshape(v, [1]) for k, v in train_step(data).items()}
        model.test_step = lambda data: {k: tf.reshape(v, [1]) for k, v in test_step(data).items()}


def _keep_stage_end(exp: str, ckpt_dir: str, state: dict, stage: Stage) -> None:
    """A run killed between a stage's last checkpoint and its end-<stage> copy: copy it now (the
    newest checkpoint is that stage's end when the state says so)."""
    end = os.path.join(ckpt_dir, f"end-{stage.name}")
    latest = latest_checkpoint(os.path.join(exp, "checkpoints"))
    if not os.path.exists(end) and latest and state.get("stage") == stage.name:
        replace_dir(latest, end)


def clean_partial_files(experiment_dir: str) -> None:
    """Removes what a killed run left half-written (temporary files and checkpoint directories;
    call under the experiment's lock)."""
    import shutil
    for d in (experiment_dir, os.path.join(experiment_dir, "checkpoints")):
        if not os.path.isdir(d):
            continue
        for name in os.listdir(d):
            if name.startswith(".") and (".tmp" in name or name.endswith((".new", ".old"))):
                path = os.path.join(d, name)
                shutil.rmtree(path, ignore_errors=True) if os.path.isdir(path) else os.unlink(path)


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
          extra_callbacks=(), out_dir: str | None = None) -> dict:
    """Runs the mode's stages, resuming from `<experiment>/checkpoints`. Returns the state dict.

    `extra_callbacks` run after the checkpoint of each epoch is written (tests use one to
    interrupt a run). `out_dir` (default: the experiment folder) receives checkpoints, metrics and
    TensorBoard logs: a non-chief multi-worker replica writes to a scratch folder and resumes
    from the chief's experiment folder like the chief."""
    exp = cfg.experiment_dir
    out = out_dir or exp
    with ExperimentLock(out):
        clean_partial_files(out)
        return _train(cfg, model, train_ds, val_ds, steps_per_epoch, base_dir, extra_callbacks, exp, out)


def _train(cfg, model, train_ds, val_ds, steps_per_epoch, base_dir, extra_callbacks, exp, out) -> dict:
    ckpt_dir = os.path.join(out, "checkpoints")
    os.makedirs(ckpt_dir, exist_ok=True)
    state, own, own_optimizer = load_state(exp)
    if own:
        model.load_weights(own)
        log.info("resuming from %s (finished: %s)", own, state["done"])
        write_metrics(os.path.join(out, "metrics.csv"), state.get("history", []))
    elif base_dir:
        # A .keras file (a shipped model) gives its weights; an experiment folder its latest checkpoint.
        base = base_dir if base_dir.endswith(".keras") and os.path.isfile(base_dir) else latest_weights(base_dir)
        if not base:
            raise ConfigError(f"--base_model_id: no checkpoint in {base_dir}/checkpoints (train that experiment first)")
        restore_base(model, base, cfg)
        log.info("restored base model %s", base)
    for stage in plan_stages(cfg):
        done = int(state["done"].get(stage.name, 0))
        if done >= stage.epochs:
            log.info("stage %s already finished (%d epochs)", stage.name, done)
            _keep_stage_end(exp, ckpt_dir, state, stage)
            continue
        _set_trainable(model, stage, cfg.finetune_prefix_loss)
        lr = stage.lr
        if cfg.lr_schedule == "cosine":
            # Decays to 10% over the stage; optimizer.iterations (restored on resume) drives it.
            lr = keras.optimizers.schedules.CosineDecay(stage.lr, decay_steps=max(1, stage.epochs * steps_per_epoch),
                                                        alpha=0.1)
        model.compile(optimizer=keras.optimizers.Adam(lr))
        if done > 0 and state.get("stage") == stage.name:
            ok = load_optimizer(model.optimizer, model.trainable_variables, own_optimizer)
            log.info("stage %s resumes at epoch %d (optimizer state %s)", stage.name, done + 1, "restored" if ok else "fresh")
        if not model.optimizer.built:
            model.optimizer.build(model.trainable_variables)
        _multiworker_workarounds(model)
        trained = [model.codec_modules[i] for i in stage.train_modules]
        quantized_epochs = stage.epochs - stage.pretrain
        schedule = Schedule(cfg.alpha_start, cfg.alpha_end,
                            max(1, int(cfg.anneal_fraction * quantized_epochs * steps_per_epoch)))
        tau_ctrl = TauController(model.tau, _tau_targets(cfg, model, stage), cfg.tau_step, active_from_epoch=stage.pretrain,
                                 tau_init=cfg.tau_init, calibrate=cfg.rate_calibration, signed=cfg.tau_signed)
        callbacks = [   # fine-tuning keeps the quantizers' final values: nothing scheduled
            QuantizerSchedule([m.quantizer for m in trained] if stage.name != "finetune" else [], schedule,
                              stage.pretrain, steps_per_epoch),
            PretrainBypass(trained if stage.name != "finetune" else [], stage.pretrain),
            tau_ctrl,
            EpochCheckpoint(ckpt_dir, stage.name, state, os.path.join(out, "metrics.csv"), stage.epochs),
            keras.callbacks.TensorBoard(os.path.join(out, "tensorboard", stage.name), write_graph=False),
            FaultPoints(),
            *extra_callbacks,
        ]
        log.info("stage %s: %d active modules, training %s, %d epochs, lr %g", stage.name, stage.active,
                 [i + 1 for i in stage.train_modules], stage.epochs, stage.lr)
        model.fit(train_ds, epochs=stage.epochs, initial_epoch=done, steps_per_epoch=steps_per_epoch,
                  validation_data=val_ds, validation_steps=cfg.validation_steps, callbacks=callbacks,
                  verbose=1 if sys.stdout.isatty() else 2)
        for m in model.codec_modules:
            m.bypass.assign(0.0)
        for name, (h, target) in tau_ctrl.collapsed.items():
            what = "the LSF codes" if name.endswith("lsf") else f"module {name.rsplit('_', 1)[1]}"
            log.error("stage %s ended with %s collapsed (%s %.4f bits/symbol, target %.3f): it adds almost nothing "
                      "to the stream. Retrain it, e.g. with fewer epochs: collapsed codes were not seen to recover "
                      "(docs/DESIGN.md, 'A third module with twice the positions').",
                      stage.name, what, name, h, target)
    model.num_active = cfg.num_modules
    model.prefix_loss = False
    return state
