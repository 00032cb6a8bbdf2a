"""The interface every quantizer answers (docs/DESIGN.md, "Quantizers").

A quantizer is a Keras layer: `call(z [B, T, D], training=None) -> QuantizerOutput` and
`decode(codes [B, T, S]) -> quantized [B, T, D]`, plus `codebook_sizes` (the alphabet of each of
the S code streams) and `bits_per_second`, which states what the codes cost.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import keras
import tensorflow as tf

from cq_codec.quantizers import entropy

__all__ = ["QuantizerOutput", "Quantizer", "Schedule"]


class QuantizerOutput(NamedTuple):
    """What a quantizer returns.

    Attributes:
      quantized: float `[B, T, D]`: soft or straight-through in training, hard at inference.
      codes: int32 `[B, T, S]`: S parallel code streams.
      bits: scalar float: estimated total bits of the batch's codes (sum over streams of the
        zeroth-order entropy of the assignment histogram times the number of positions).
        Soft (differentiable) in training; the exact empirical entropy of the hard codes at
        inference.
      aux_loss: scalar float: commitment / codebook / sparsity terms, already weighted.
      metrics: dict of scalar float tensors; always has `perplexity`, `utilisation`,
        `bits_per_code` (entropy per position, summed over streams).
    """

    quantized: tf.Tensor
    codes: tf.Tensor
    bits: tf.Tensor
    aux_loss: tf.Tensor
    metrics: dict


class Schedule(NamedTuple):
    """One training stage's plan for the quantizers' scheduled hyper-parameters (what
    `Quantizer.anneal` reads). The softmax quantizers' softness alpha goes geometrically from
    `alpha_start` to `alpha_end` over `alpha_steps` quantized steps, then holds (soft-to-hard
    annealing, Agustsson et al. 2017). Gumbel quantizers anneal their temperature by the rate in
    their own config (Jang et al. 2017); the vector quantizers schedule nothing."""

    alpha_start: float = 20.0
    alpha_end: float = 300.0
    alpha_steps: int = 1


class Quantizer(keras.layers.Layer):
    """Base class: input checks, entropy bookkeeping, bitrate arithmetic and the schedule hook."""

    def anneal(self, step: int, schedule: Schedule | None = None):
        """Sets this quantizer's scheduled training hyper-parameters for quantized training step
        `step` of a stage (0 = its first quantized batch) under `schedule` (default: `Schedule()`);
        returns the value set, or None when the quantizer schedules nothing (this base class).
        `cq_codec.training.callbacks.QuantizerSchedule` calls it before every training batch."""
        if step < 0:
            raise ValueError(f"step must be >= 0, got {step!r}")
        return None

    @property
    def codebook_sizes(self):
        """list[int]: alphabet size of each of the S code streams."""
        raise NotImplementedError

    @property
    def num_streams(self):
        """int: S, the number of parallel code streams."""
        return len(self.codebook_sizes)

    def decode(self, codes):
        """int `[B, T, S]` codes -> float `[B, T, D]`, equal to the inference output."""
        raise NotImplementedError

    def bits_per_second(self, frames_per_second, codes_per_frame, bits_per_code=None):
        """Bitrate of the code streams.

        Args:
          frames_per_second: codec frames per second (e.g. `constants.FRAMES_PER_SECOND`).
          codes_per_frame: code positions (T) per frame; each position carries S codes.
          bits_per_code: measured bits per position summed over streams (e.g. the entropy,
            `metrics["bits_per_code"]`); None gives the fixed-length cost `sum_s log2 K_s`.
        Returns:
          float bits per second.
        """
        for name, value in (("frames_per_second", frames_per_second),
                            ("codes_per_frame", codes_per_frame)):
            if not isinstance(value, (int, float)) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"{name} must be a positive number, got {value!r}")
        if bits_per_code is None:
            bits_per_code = sum(math.log2(k) for k in self.codebook_sizes)
        elif float(bits_per_code) < 0:
            raise ValueError(f"bits_per_code must be >= 0, got {bits_per_code!r}")
        return float(frames_per_second) * float(codes_per_frame) * float(bits_per_code)

    # ---- helpers for subclasses -------------------------------------------------------
    def _last_dim(self, input_shape) -> int:
        """The static size of z's last axis (ValueError when unknown)."""
        dim = input_shape[-1]
        if dim is None:
            raise ValueError(f"{self.name}: the last axis of z must be known")
        return int(dim)

    @staticmethod
    def _inner_vq_config(vq_config, owner: str) -> dict:
        """A copy of `vq_config` for the inner VQs, refusing keys the owner sets itself."""
        vq_config = dict(vq_config or {})
        for key in ("codebook_size", "seed", "name"):
            if key in vq_config:
                raise ValueError(f"vq_config must not set {key!r}; pass it to the {owner} itself")
        return vq_config

    def _check_input(self, z, dim=None):
        """Casts z to float32 and checks it is `[B, T, D]` (with D == dim when given)."""
        z = tf.convert_to_tensor(z)
        if not z.dtype.is_floating:
            raise TypeError(f"{self.name}: z must be a float tensor, got dtype {z.dtype.name}")
        if z.shape.rank != 3:
            raise ValueError(f"{self.name}: z must have shape [B, T, D], got {z.shape}")
        if dim is not None and z.shape[-1] is not None and z.shape[-1] != dim:
            raise ValueError(f"{self.name}: z must have last dimension {dim}, got {z.shape}")
        return tf.cast(z, tf.float32)

    def _check_codes(self, codes, num_streams=None):
        """Checks codes are integer `[B, T, S]` with S == num_streams when given."""
        codes = tf.convert_to_tensor(codes)
        if not codes.dtype.is_integer:
            raise TypeError(f"{self.name}: codes must be integers, got {codes.dtype.name}")
        if codes.shape.rank != 3:
            raise ValueError(f"{self.name}: codes must have shape [B, T, S], got {codes.shape}")
        if num_streams is not None and codes.shape[-1] != num_streams:
            raise ValueError(f"{self.name}: codes must have {num_streams} streams "
                             f"(last axis), got shape {codes.shape}")
        return tf.cast(codes, tf.int32)

    @staticmethod
    def _entropy_terms(probs, codes, num_symbols, training, stream_weights=None):
        """Returns (bits, metrics) from assignments `[B, T, S, K]` and codes `[B, T, S]`.

        Training: bits from the soft histogram (differentiable). Inference: bits from the
        one-hot histogram, i.e. the empirical entropy of the codes. Metrics always come from
        the hard codes. `stream_weights` `[S]` (0/1) drops streams from `bits` (RVQ dropout).
        """
        hard = tf.one_hot(codes, num_symbols, dtype=tf.float32)
        hard_hist = entropy.assignment_histogram(hard)
        source = probs if training else hard
        if stream_weights is None:
            bits = entropy.total_bits(source)
        else:
            per_stream = entropy.stream_entropy_bits(entropy.assignment_histogram(source))
            positions = tf.cast(tf.size(codes) // codes.shape[-1], tf.float32)
            bits = tf.reduce_sum(per_stream * stream_weights) * positions
        n = tf.cast(tf.size(codes) // max(codes.shape[-1], 1), tf.float32)
        metrics = {
            "perplexity": entropy.perplexity(hard_hist),
            "utilisation": entropy.utilisation(hard_hist),
            "bits_per_code": bits / tf.maximum(n, 1.0),
            # What the entropy coder will see (hard codes), summed over streams: rate control
            # steers this, since the soft estimate differs from it (softmax, Gumbel: by 10-50%).
            "hard_bits_per_code": entropy.hard_entropy_bits(hard_hist, n),
        }
        return bits, metrics
