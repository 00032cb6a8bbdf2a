"""Keras callbacks of the greedy schedule: pretrain bypass, entropy (tau) control, checkpoints."""

from __future__ import annotations

import csv
import json
import os

import keras
import numpy as np

__all__ = ["AlphaSchedule", "PretrainBypass", "TauController", "EpochCheckpoint", "save_optimizer", "load_optimizer"]


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


class AlphaSchedule(keras.callbacks.Callback):
    """Anneals the softness alpha of softmax quantizers geometrically from `start` to `end`
    over `steps` training steps counted from `begin_epoch` (soft-to-hard annealing, Agustsson
    et al., NeurIPS 2017); alpha stays at `end` afterwards. Quantizers without `set_alpha`
    (VQ, Gumbel, ...) are left alone."""

    def __init__(self, quantizers, start: float, end: float, steps: int, begin_epoch: int, steps_per_epoch: int):
        super().__init__()
        self.quantizers = [q for q in quantizers if hasattr(q, "set_alpha")]
        self.start, self.end = float(start), float(end)
        self.steps = max(1, int(steps))
        self.begin_epoch = int(begin_epoch)
        self.steps_per_epoch = int(steps_per_epoch)
        self._epoch = 0

    def value(self, step: int) -> float:
        frac = min(max(step, 0) / self.steps, 1.0)
        return self.start * (self.end / self.start) ** frac

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch
        self.on_train_batch_begin(0)

    def on_train_batch_begin(self, batch, logs=None):
        step = (self._epoch - self.begin_epoch) * self.steps_per_epoch + batch
        alpha = self.value(step)
        for q in self.quantizers:
            q.set_alpha(alpha)


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
    """

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

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch
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
            self._sums[idx] += float(logs.get(name, 0.0))
        self._count += 1
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
        if not self.calibrate or epoch < self.active_from_epoch or not logs:
            return
        for idx, (name, _) in self.targets.items():
            val = logs.get(f"val_{name}")
            if val is None or not self._recent[idx] or float(val) <= 0:
                continue
            ratio = float(np.clip(np.mean(self._recent[idx]) / float(val), 0.5, 2.0))
            self.scale[idx] = float(np.clip(np.sqrt(self.scale[idx] * ratio), 0.5, 2.0))


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


class EpochCheckpoint(keras.callbacks.Callback):
    """After every epoch: weights, optimizer slots, the resume state, a metrics.csv row.

    Files in `ckpt_dir`: `latest.weights.h5`, `latest.optimizer.npz`, `state.json`
    ({"done": {stage: epochs finished}, "stage": current stage}). Written to temporary names and
    renamed, so a run killed mid-write leaves the previous checkpoint intact.
    """

    def __init__(self, ckpt_dir: str, stage: str, state: dict, csv_path: str):
        super().__init__()
        self.ckpt_dir = ckpt_dir
        self.stage = stage
        self.state = state
        self.csv_path = csv_path

    def on_epoch_end(self, epoch, logs=None):
        d = self.ckpt_dir
        os.makedirs(d, exist_ok=True)
        self.model.save_weights(os.path.join(d, "tmp.weights.h5"))
        os.replace(os.path.join(d, "tmp.weights.h5"), os.path.join(d, "latest.weights.h5"))
        save_optimizer(self.model.optimizer, os.path.join(d, "tmp.optimizer.npz"))
        os.replace(os.path.join(d, "tmp.optimizer.npz"), os.path.join(d, "latest.optimizer.npz"))
        self.state["done"][self.stage] = epoch + 1
        self.state["stage"] = self.stage
        self.state["tau"] = [float(t) for t in self.model.tau.numpy()]
        with open(os.path.join(d, "state.tmp"), "w", encoding="utf-8") as fh:
            json.dump(self.state, fh, indent=1)
        os.replace(os.path.join(d, "state.tmp"), os.path.join(d, "state.json"))
        row = {"stage": self.stage, "epoch": epoch + 1}
        row.update({k: float(v) for k, v in (logs or {}).items()})
        row.update({f"tau_{i}": t for i, t in enumerate(self.state["tau"])})
        new = not os.path.exists(self.csv_path)
        fields = list(row)
        if not new:
            with open(self.csv_path, newline="", encoding="utf-8") as fh:
                header = next(csv.reader(fh), [])
            fields = header + [k for k in row if k not in header]
            if fields != header:  # a later stage adds columns: rewrite with the wider header
                with open(self.csv_path, newline="", encoding="utf-8") as fh:
                    rows = list(csv.DictReader(fh))
                with open(self.csv_path, "w", newline="", encoding="utf-8") as fh:
                    w = csv.DictWriter(fh, fields)
                    w.writeheader()
                    w.writerows(rows)
        with open(self.csv_path, "a", newline="", encoding="utf-8") as fh:
            w = csv.DictWriter(fh, fields)
            if new:
                w.writeheader()
            w.writerow(row)
