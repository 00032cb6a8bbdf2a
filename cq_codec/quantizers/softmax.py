"""Soft-to-hard scalar quantizer (Agustsson et al., NeurIPS 2017; Kankanahalli, ICASSP 2018).

Each scalar z is softly assigned to K trainable bins, p_k = softmax_k(-alpha * |z - b_k|).
Training outputs the soft value sum_k p_k b_k (or, with `straight_through`, the hard value
forward and the soft gradient backward); inference outputs the nearest bin.

Bins have shape `[G, K]`. G = 1: one shared grid for every dimension of z (D = 1 in the
residual codec: one code per value). G = D: each dimension has its own K bins (the CQ LSF
quantizer: 16 LSFs, each with a 16-point uniform grid over its range). Either way there is one
code stream per dimension, S = D.
"""

import keras
import numpy as np
import tensorflow as tf

from cq_codec.quantizers import entropy
from cq_codec.quantizers.base import Quantizer, QuantizerOutput, Schedule

__all__ = ["SoftmaxQuantizer", "uniform_grids"]

_ALPHA_MODES = ("fixed", "trainable")


def uniform_grids(lows, highs, num_bins):
    """Per-dimension uniform grids: `[G]`, `[G]`, K -> float32 `[G, K]` (row g spans
    [lows[g], highs[g]])."""
    lows = np.asarray(lows, np.float64).reshape(-1)
    highs = np.asarray(highs, np.float64).reshape(-1)
    if lows.shape != highs.shape:
        raise ValueError(f"lows and highs must have the same length, got {lows.shape} and "
                         f"{highs.shape}")
    if not isinstance(num_bins, int) or num_bins < 2:
        raise ValueError(f"num_bins must be an int >= 2, got {num_bins!r}")
    if np.any(highs <= lows):
        raise ValueError("every high must exceed its low")
    t = np.linspace(0.0, 1.0, num_bins)
    return (lows[:, None] + (highs - lows)[:, None] * t[None, :]).astype(np.float32)


@keras.saving.register_keras_serializable(package="cq_codec")
class SoftmaxQuantizer(Quantizer):
    """Soft-to-hard scalar quantizer.

    Args:
      num_bins: K, bins per grid (ignored when `initial_bins` is given). Default 32.
      initial_bins: optional `[G, K]` initial codebook (one row per dimension), e.g. from
        `uniform_grids`. Default: one grid linspace(-1, 1, num_bins).
      alpha: softness at build time. Default 300.
      alpha_mode: "fixed" (set by `anneal` from the stage's `Schedule`, or `set_alpha`) or
        "trainable" (a trained weight, never scheduled).
      alpha_start, anneal_steps: not used (a stage's `Schedule` sets alpha); kept in the config so
        a saved model's config, and so its identity in `.nac` headers, reads back unchanged.
      sparsity_weight: weight of the sparsity penalty sum_k sqrt(p_k) in `aux_loss`
        (default 0: the loss module applies its own weight to `metrics["sparsity"]`).
      straight_through: training forward pass uses hard values; gradients the soft ones, or
        with `straight_through="identity"` the identity to z (Bengio et al. 2013) plus the hard
        values' to the bins, so the encoder keeps a reconstruction gradient however hard alpha is
        (with soft gradients and alpha = 300 a collapsed code cannot recover; measured).
      trainable_bins: whether the bins are trained.
    Input `z [B, T, D]`; output codes `[B, T, D]` (S = D).
    """

    def __init__(self, num_bins=32, initial_bins=None, alpha=300.0, alpha_mode="fixed",
                 alpha_start=10.0, anneal_steps=10000, sparsity_weight=0.0,
                 straight_through=False, trainable_bins=True, **kwargs):
        super().__init__(**kwargs)
        if initial_bins is not None:
            init = np.asarray(initial_bins, np.float32)
            if init.ndim != 2 or init.shape[1] < 2 or not np.all(np.isfinite(init)):
                raise ValueError("initial_bins must be a finite [G, K] matrix with K >= 2, got "
                                 f"shape {init.shape}")
            num_bins = int(init.shape[1])
        else:
            if not isinstance(num_bins, int) or isinstance(num_bins, bool) or num_bins < 2:
                raise ValueError(f"num_bins must be an int >= 2, got {num_bins!r}")
            init = np.linspace(-1.0, 1.0, num_bins, dtype=np.float32)[None, :]
        if alpha_mode not in _ALPHA_MODES:
            raise ValueError(f"alpha_mode must be one of {_ALPHA_MODES}, got {alpha_mode!r}")
        for name, value in (("alpha", alpha), ("alpha_start", alpha_start)):
            if not float(value) > 0:
                raise ValueError(f"{name} must be > 0, got {value!r}")
        if not isinstance(anneal_steps, int) or anneal_steps < 1:
            raise ValueError(f"anneal_steps must be an int >= 1, got {anneal_steps!r}")
        if float(sparsity_weight) < 0:
            raise ValueError(f"sparsity_weight must be >= 0, got {sparsity_weight!r}")
        self.num_bins = num_bins
        self.num_groups = int(init.shape[0])
        self._initial_bins = init
        self._custom_bins = initial_bins is not None
        self.alpha_target = float(alpha)
        self.alpha_mode = alpha_mode
        self.alpha_start = float(alpha_start)
        self.anneal_steps = anneal_steps
        self.sparsity_weight = float(sparsity_weight)
        if straight_through not in (False, True, "identity"):
            raise ValueError(f"straight_through must be False, True or 'identity', got {straight_through!r}")
        self.straight_through = straight_through
        self.trainable_bins = bool(trainable_bins)
        self.bins = self.add_weight(
            shape=init.shape, initializer=keras.initializers.Constant(init),
            trainable=self.trainable_bins, name="bins")
        self.alpha = self.add_weight(
            shape=(), initializer=keras.initializers.Constant(self.alpha_target),
            trainable=alpha_mode == "trainable", name="alpha")
        # A variable, not a Python flag, so it can be toggled without retracing.
        self.bypass = self.add_weight(shape=(), initializer="zeros", trainable=False,
                                      name="bypass")

    @property
    def codebook_sizes(self):
        """One stream per dimension; only known for G > 1 or after build."""
        return [self.num_bins] * self._dim()

    def _dim(self):
        if self.num_groups > 1:
            return self.num_groups
        return getattr(self, "_input_dim", 1)

    def build(self, input_shape):
        dim = self._last_dim(input_shape)
        if self.num_groups > 1 and dim != self.num_groups:
            raise ValueError(f"{self.name}: z has {dim} dimensions but initial_bins has "
                             f"{self.num_groups} rows (one per dimension)")
        self._input_dim = int(dim)

    def set_bypass(self, on):
        """Bypass quantization (quantized = z, in training and inference alike) for the
        pretrain epochs; codes, bits and metrics are still computed. No retracing."""
        self.bypass.assign(1.0 if on else 0.0)

    def set_alpha(self, value):
        """Sets alpha (from a callback)."""
        if not float(value) > 0:
            raise ValueError(f"alpha must be > 0, got {value!r}")
        self.alpha.assign(float(value))

    def anneal(self, step, schedule=None):
        """alpha = alpha_start * (alpha_end / alpha_start) ** min(step / alpha_steps, 1) of the
        `Schedule`; a trainable alpha is left to the optimizer (returns None)."""
        super().anneal(step, schedule)
        if self.alpha_mode == "trainable":
            return None
        schedule = schedule or Schedule()
        frac = min(float(step) / max(1, int(schedule.alpha_steps)), 1.0)
        value = float(schedule.alpha_start) * (float(schedule.alpha_end) / float(schedule.alpha_start)) ** frac
        self.set_alpha(value)
        return value

    def _assign(self, z):
        """z `[B, T, D]` -> (probs `[B, T, D, K]`, codes `[B, T, D]`, soft `[B, T, D]`)."""
        bins = tf.convert_to_tensor(self.bins)
        dist = tf.abs(z[..., None] - bins)  # [B, T, D, K]; bins [G, K] broadcasts over D
        probs = tf.nn.softmax(-tf.convert_to_tensor(self.alpha) * dist, axis=-1)
        codes = tf.argmin(dist, axis=-1, output_type=tf.int32)
        soft = tf.reduce_sum(probs * bins, axis=-1)
        return probs, codes, soft

    def call(self, z, training=None):
        """z `[B, T, D]` -> QuantizerOutput with codes `[B, T, D]`."""
        training = bool(training)
        z = self._check_input(z, self._dim() if self.built else None)
        probs, codes, soft = self._assign(z)
        hard = self.decode(codes)
        if not training:
            q = hard
        elif self.straight_through == "identity":
            q = hard + (z - tf.stop_gradient(z))
        elif self.straight_through:
            q = soft + tf.stop_gradient(hard - soft)
        else:
            q = soft
        bypass = tf.convert_to_tensor(self.bypass)
        q = bypass * z + (1.0 - bypass) * q
        bits, metrics = self._entropy_terms(probs, codes, self.num_bins, training)
        sparsity = entropy.sparsity_penalty(entropy.assignment_histogram(probs))
        metrics.update(sparsity=sparsity, alpha=tf.convert_to_tensor(self.alpha))
        return QuantizerOutput(q, codes, bits, self.sparsity_weight * sparsity, metrics)

    def decode(self, codes):
        """codes `[B, T, D]` -> bin values `[B, T, D]`."""
        codes = self._check_codes(codes, self._dim() if self.built else None)
        bins = tf.convert_to_tensor(self.bins)
        if self.num_groups == 1:
            return tf.gather(bins[0], codes)
        # bins [G, K], codes [B, T, G] -> bins[g, codes[..., g]] via a flat index.
        offsets = tf.range(self.num_groups, dtype=tf.int32) * self.num_bins
        return tf.gather(tf.reshape(bins, [-1]), codes + offsets)

    # ---- numpy inference (no eager TensorFlow calls: the codec's LSF path, chunk by chunk) ----
    def bins_numpy(self) -> np.ndarray:
        """The bins `[G, K]` as float32 numpy."""
        return np.asarray(keras.ops.convert_to_numpy(self.bins), np.float32)

    def encode_numpy(self, z) -> np.ndarray:
        """z `[..., D]` -> int32 codes `[..., D]`: the nearest bin, as `call` at inference
        (float32 |z - b|, the first index on ties), so the codes are the graph's exactly."""
        z = np.asarray(z, np.float32)
        return np.argmin(np.abs(z[..., None] - self.bins_numpy()), axis=-1).astype(np.int32)

    def decode_numpy(self, codes) -> np.ndarray:
        """int codes `[..., D]` -> float32 bin values `[..., D]` (`decode` in numpy)."""
        codes = np.asarray(codes)
        bins = self.bins_numpy()
        if bins.shape[0] == 1:
            return bins[0][codes]
        if codes.shape[-1] != bins.shape[0]:
            raise ValueError(f"{self.name}: codes have {codes.shape[-1]} streams, the bins {bins.shape[0]} rows")
        return bins[np.arange(bins.shape[0]), codes]

    def get_config(self):
        config = super().get_config()
        config.update(
            num_bins=self.num_bins,
            initial_bins=self._initial_bins.tolist() if self._custom_bins else None,
            alpha=self.alpha_target, alpha_mode=self.alpha_mode, alpha_start=self.alpha_start,
            anneal_steps=self.anneal_steps, sparsity_weight=self.sparsity_weight,
            straight_through=self.straight_through, trainable_bins=self.trainable_bins)
        return config
