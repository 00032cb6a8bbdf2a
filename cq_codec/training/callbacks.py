"""Keras callbacks of the greedy schedule: pretrain bypass, the quantizers' schedules, entropy (tau)
control, checkpoints."""

from __future__ import annotations

import csv
import json
import logging
import os
import shutil

import keras
import numpy as np

from cq_codec.quantizers.base import Schedule
from cq_codec.training.atomic import atomic_dir, atomic_write, replace_dir

log = logging.getLogger("cq_codec.training")

__all__ = ["QuantizerSchedule", "PretrainBypass", "TauController", "EpochCheckpoint", "FaultPoints", "save_optimizer",
           "load_optimizer", "checkpoint_dirs", "latest_checkpoint", "read_checkpoint_state", "write_metrics",
           "fault_point"]


class PretrainBypass(keras.callbacks.Callback):
    """Quantization off for the first `pretrain_epochs` epochs of a stage (the original's
    "pretrain" epochs), on afterwards. Toggles variables, so nothing is retraced."""

    def __init__(self, modules, pretrain_epochs: int):
        super().__init__()
        self.modules = list(modules)
        self.pretrain_epochs = int(pretrain_epochs)

    def on_epoch_begin(self, epoch, logs=None):
        for m in self.modules:
            m.bypass.assign(1.0 if epoch < self.pretrain_epochs else 0.0)


class QuantizerSchedule(keras.callbacks.Callback):
    """Drives every trained quantizer's schedule (`Quantizer.anneal(step, schedule)`: the softmax
    quantizers' alpha, the Gumbel quantizers' temperature; the others schedule nothing) before
    every training batch. `step` counts from the stage's first quantized batch (`begin_epoch`,
    after the quantization-free epochs, which keep the step-0 values); it comes from the epoch and
    batch index, so a resumed stage continues the schedule where it stopped."""

    def __init__(self, quantizers, schedule: Schedule, begin_epoch: int, steps_per_epoch: int):
        super().__init__()
        self.quantizers = list(quantizers)
        self.schedule = schedule
        self.begin_epoch = int(begin_epoch)
        self.steps_per_epoch = int(steps_per_epoch)
        self._epoch = 0

    def step(self, batch: int) -> int:
        return max(0, (self._epoch - self.begin_epoch) * self.steps_per_epoch + batch)

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch
        self.on_train_batch_begin(0)

    def on_train_batch_begin(self, batch, logs=None):
        for q in self.quantizers:
            q.anneal(self.step(batch), self.schedule)


class TauController(keras.callbacks.Callback):
    """Adapts each trained stream's entropy weight tau toward its target bits/symbol.

    The original moved tau by +-0.015 once per epoch; measured here, that left the entropy at
    twice its target after 10 epochs. This is a multiplicative (log-domain integral) controller
    run every `every` training steps on the running mean of the batch entropy:
    tau <- clip(tau * exp(gain * (H - target') / target'), tau_min, tau_max), starting from
    `tau_init` when tau is 0. `targets` maps a tau index (0 = LSFs, i = module i) to
    (metric name, target bits/symbol).

    Signed control (`signed=True`): tau is an unconstrained Lagrange multiplier, so when a
    stream's codes sit below the target even with no penalty (Gumbel's argmax codes: 6.3 bits
    against 6.6 in their quantization-free epoch) tau can turn negative and reward entropy. The
    integral state u moves by gain * (H - target') / target' and tau = c * sinh(u) with
    c = `signed_scale`: for tau >> c this is the multiplicative rule above, near 0 it is linear
    and crosses zero.

    Validation calibration (`calibrate=True`): the codes' entropy on held-out speech differs
    from the training batches' (measured: the softmax quantizer's validation entropy sat 17 %
    under target while its training entropy was on target). At each epoch end with a
    `val_<metric>` in the logs, the ratio r = (training entropy over the last `every * 3` steps)
    / (validation entropy) is folded into a scale (geometric mean with the previous one, clipped
    to [0.5, 2]) and the training batches are steered to target' = target * scale, so that the
    held-out entropy lands on the target. The scale restarts at 1 when a run resumes.

    Collapse: at each controlled epoch's end, a stream whose mean training entropy that epoch
    fell under `COLLAPSE_FRACTION` of its target is logged as a warning and listed in
    `collapsed` (name -> (entropy, target)); a later epoch back above it clears the entry. A
    collapsed module codes nearly one symbol everywhere: it adds nothing to the stream.
    """

    COLLAPSE_FRACTION = 0.05

    def __init__(self, tau_var, targets: dict, gain: float, every: int = 20, active_from_epoch: int = 0,
                 tau_init: float = 0.5, tau_min: float = 1e-3, tau_max: float = 50.0, calibrate: bool = False,
                 signed: bool = False, signed_scale: float = 0.05):
        super().__init__()
        self.tau = tau_var
        self.targets = dict(targets)
        self.gain = float(gain)
        self.every = int(every)
        self.active_from_epoch = int(active_from_epoch)
        self.tau_init, self.tau_min, self.tau_max = float(tau_init), float(tau_min), float(tau_max)
        self.calibrate = bool(calibrate)
        self.signed, self.signed_scale = bool(signed), float(signed_scale)
        self.scale = {k: 1.0 for k in self.targets}
        self._epoch = 0
        self._sums = {k: 0.0 for k in self.targets}
        self._recent = {k: [] for k in self.targets}   # the last 3 windows' mean entropies
        self._count = 0
        self._epoch_sums = {k: 0.0 for k in self.targets}
        self._epoch_count = 0
        self.collapsed = {}

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch
        self._epoch_sums = {k: 0.0 for k in self.targets}
        self._epoch_count = 0
        if epoch >= self.active_from_epoch and self.targets:
            tau = self.tau.numpy()
            for idx in self.targets:
                if tau[idx] == 0 or (tau[idx] < 0 and not self.signed):
                    tau[idx] = self.tau_init
            self.tau.assign(tau)

    def on_train_batch_end(self, batch, logs=None):
        if self._epoch < self.active_from_epoch or not logs:
            return
        for idx, (name, _) in self.targets.items():
            h = float(logs.get(name, 0.0))
            self._sums[idx] += h
            self._epoch_sums[idx] += h
        self._count += 1
        self._epoch_count += 1
        if self._count < self.every:
            return
        tau = self.tau.numpy()
        for idx, (_, target) in self.targets.items():
            h = self._sums[idx] / self._count
            self._recent[idx] = (self._recent[idx] + [h])[-3:]
            goal = target * self.scale[idx]
            step = self.gain * (h - goal) / goal
            if self.signed:
                c = self.signed_scale
                tau[idx] = float(np.clip(c * np.sinh(np.arcsinh(tau[idx] / c) + step), -self.tau_max, self.tau_max))
            else:
                tau[idx] = float(np.clip(tau[idx] * np.exp(step), self.tau_min, self.tau_max))
            self._sums[idx] = 0.0
        self._count = 0
        self.tau.assign(tau)

    def on_epoch_end(self, epoch, logs=None):
        if epoch >= self.active_from_epoch and self._epoch_count:
            self._check_collapse(epoch)
        if not self.calibrate or epoch < self.active_from_epoch or not logs:
            return
        for idx, (name, _) in self.targets.items():
            val = logs.get(f"val_{name}")
            if val is None or not self._recent[idx] or float(val) <= 0:
                continue
            ratio = float(np.clip(np.mean(self._recent[idx]) / float(val), 0.5, 2.0))
            self.scale[idx] = float(np.clip(np.sqrt(self.scale[idx] * ratio), 0.5, 2.0))

    def _check_collapse(self, epoch: int) -> None:
        for idx, (name, target) in self.targets.items():
            h = self._epoch_sums[idx] / self._epoch_count
            if h < self.COLLAPSE_FRACTION * target:
                self.collapsed[name] = (h, target)
                log.warning("epoch %d: %s is %.4f bits/symbol against a target of %.3f: the codes have collapsed "
                            "to nearly one symbol (tau %.3g)", epoch + 1, name, h, target, float(self.tau.numpy()[idx]))
            else:
                self.collapsed.pop(name, None)


def save_optimizer(optimizer, path: str) -> None:
    np.savez(path, *[v.numpy() for v in optimizer.variables])


def load_optimizer(optimizer, variables, path: str) -> bool:
    """Restore optimizer slots saved by `save_optimizer`; False when they do not fit."""
    if not os.path.exists(path):
        return False
    optimizer.build(variables)
    data = np.load(path)
    values = [data[f"arr_{i}"] for i in range(len(data.files))]
    if len(values) != len(optimizer.variables) or any(v.shape != tuple(o.shape) for v, o in zip(values, optimizer.variables)):
        return False
    for o, v in zip(optimizer.variables, values):
        o.assign(v)
    return True


# ------------------------------------------------------------------ checkpoints
# `checkpoints/ckpt-<seq>/` holds one epoch's weights, optimizer slots and state.json; it appears
# by one rename (atomic.atomic_dir), so a run killed at any moment leaves complete checkpoints
# only, and the newest is the highest <seq>. Older ones are removed after a newer one exists.
# `checkpoints/end-<stage>/` keeps the checkpoint of each finished stage (mode 0's
# --from_where_step). metrics.csv is rewritten from the checkpoint's history, so it never holds
# a row of an epoch whose checkpoint was lost, nor the same epoch twice.
CKPT_PREFIX = "ckpt-"
WEIGHTS = "weights.weights.h5"
OPTIMIZER = "optimizer.npz"
STATE = "state.json"

# Test hook: CQ_CODEC_KILL_AT="<point>:<n>" SIGKILLs this process at the n-th pass of a named
# point (epoch_batch, ckpt_weights, ckpt_renamed, model_write): the fault tests kill a run at
# deterministic moments. Unset in normal use.
_KILL_COUNTS: dict = {}


def fault_point(name: str) -> None:
    spec = os.environ.get("CQ_CODEC_KILL_AT", "")
    if not spec:
        return
    point, _, n = spec.partition(":")
    if point != name:
        return
    _KILL_COUNTS[name] = _KILL_COUNTS.get(name, 0) + 1
    if _KILL_COUNTS[name] == int(n or 1):
        import signal
        os.kill(os.getpid(), signal.SIGKILL)


def checkpoint_dirs(ckpt_dir: str) -> list[str]:
    """Complete checkpoint directories, oldest first."""
    if not os.path.isdir(ckpt_dir):
        return []
    names = [n for n in os.listdir(ckpt_dir) if n.startswith(CKPT_PREFIX) and n[len(CKPT_PREFIX):].isdigit()]
    return [os.path.join(ckpt_dir, n) for n in sorted(names, key=lambda n: int(n[len(CKPT_PREFIX):]))]


def latest_checkpoint(ckpt_dir: str) -> str | None:
    dirs = checkpoint_dirs(ckpt_dir)
    return dirs[-1] if dirs else None


def read_checkpoint_state(path: str) -> dict:
    with open(os.path.join(path, STATE), encoding="utf-8") as fh:
        return json.load(fh)


def _legacy_state(ckpt_dir: str, csv_path: str) -> dict | None:
    """The layout before checkpoint directories: latest.weights.h5 / latest.optimizer.npz /
    state.json side by side (read so that older experiments resume)."""
    path = os.path.join(ckpt_dir, STATE)
    if not (os.path.exists(path) and os.path.exists(os.path.join(ckpt_dir, "latest.weights.h5"))):
        return None
    with open(path, encoding="utf-8") as fh:
        state = json.load(fh)
    history = []
    if os.path.exists(csv_path):
        with open(csv_path, newline="", encoding="utf-8") as fh:
            history = [{k: (v if k == "stage" else float(v) if v not in ("", None) else None) for k, v in r.items()}
                       for r in csv.DictReader(fh)]
    state.setdefault("history", history)
    state.setdefault("seq", 0)
    return state


def write_metrics(csv_path: str, history: list[dict]) -> None:
    """metrics.csv from a checkpoint's history (atomically; columns: the union in order)."""
    fields = []
    for row in history:
        fields += [k for k in row if k not in fields]
    with atomic_write(csv_path) as tmp:
        with open(tmp, "w", newline="", encoding="utf-8") as fh:
            w = csv.DictWriter(fh, fields)
            w.writeheader()
            for row in history:
                w.writerow({k: ("" if v is None else int(v) if k == "epoch" else v) for k, v in row.items()})


class EpochCheckpoint(keras.callbacks.Callback):
    """After every epoch: a checkpoint directory (weights, optimizer slots, the resume state with
    the metrics history), then metrics.csv. `state` is updated in place once the checkpoint
    exists. `stage_epochs`: the stage's epochs (its last one is also kept as end-<stage>).
    `writer=False` (a non-chief multi-worker replica) computes the same values but writes into
    its own scratch folder."""

    def __init__(self, ckpt_dir: str, stage: str, state: dict, csv_path: str, stage_epochs: int = 0):
        super().__init__()
        self.ckpt_dir = ckpt_dir
        self.stage = stage
        self.state = state
        self.csv_path = csv_path
        self.stage_epochs = int(stage_epochs)

    def on_epoch_end(self, epoch, logs=None):
        d = self.ckpt_dir
        os.makedirs(d, exist_ok=True)
        seq = int(self.state.get("seq", 0)) + 1
        new = {**self.state, "done": {**self.state.get("done", {}), self.stage: epoch + 1}, "stage": self.stage,
               "tau": [float(t) for t in self.model.tau.numpy()], "seq": seq}
        row = {"stage": self.stage, "epoch": epoch + 1}
        row.update({k: float(v) for k, v in (logs or {}).items()})
        row.update({f"tau_{i}": t for i, t in enumerate(new["tau"])})
        new["history"] = list(self.state.get("history", [])) + [row]
        final = os.path.join(d, f"{CKPT_PREFIX}{seq:06d}")
        with atomic_dir(final) as tmp:
            self.model.save_weights(os.path.join(tmp, WEIGHTS))
            fault_point("ckpt_weights")
            save_optimizer(self.model.optimizer, os.path.join(tmp, OPTIMIZER))
            with open(os.path.join(tmp, STATE), "w", encoding="utf-8") as fh:
                json.dump(new, fh, indent=1)
        self.state.clear()
        self.state.update(new)
        fault_point("ckpt_renamed")
        if self.stage_epochs and epoch + 1 >= self.stage_epochs:
            replace_dir(final, os.path.join(d, f"end-{self.stage}"))
        for old in checkpoint_dirs(d)[:-1]:
            shutil.rmtree(old, ignore_errors=True)
        write_metrics(self.csv_path, new["history"])


class FaultPoints(keras.callbacks.Callback):
    """Passes the `epoch_batch` fault point after every training batch (see `fault_point`)."""

    def on_train_batch_end(self, batch, logs=None):
        fault_point("epoch_batch")
