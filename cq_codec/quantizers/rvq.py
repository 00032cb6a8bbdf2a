"""Residual vector quantizer (Zeghidour et al., SoundStream, 2021).

N EMA vector quantizers in cascade, each coding what the earlier ones left. Quantizer dropout
(SoundStream): in training, with probability `dropout_prob` a batch uses a random number of
stages n ~ U{1..N}, so one model serves every bitrate; at inference `num_stages` (or the
`num_active_stages` attribute) picks how many stages to use.
"""

import keras
import tensorflow as tf

from cq_codec.quantizers.base import Quantizer, QuantizerOutput
from cq_codec.quantizers.vq import VectorQuantizer

__all__ = ["ResidualVectorQuantizer"]


@keras.saving.register_keras_serializable(package="cq_codec")
class ResidualVectorQuantizer(Quantizer):
    """N-stage residual VQ; S = number of stages used.

    Args:
      num_stages: N (default 8).
      codebook_size: K of every stage (default 256).
      dropout_prob: probability that a training batch uses a random number of stages.
      num_active_stages: stages used at inference when `call` gets no `num_stages` (default N).
        A Python attribute: a compiled predict function must be retraced after changing it,
        so prefer passing `num_stages` to `call`.
      seed: integer seed (stage i gets seed + i).
      vq_config: dict of further `VectorQuantizer` arguments for every stage.
    Input `z [B, T, D]`; codes `[B, T, n]`, n = stages used.
    """

    def __init__(self, num_stages=8, codebook_size=256, dropout_prob=0.5,
                 num_active_stages=None, seed=None, vq_config=None, **kwargs):
        super().__init__(**kwargs)
        if not isinstance(num_stages, int) or isinstance(num_stages, bool) or num_stages < 1:
            raise ValueError(f"num_stages must be an int >= 1, got {num_stages!r}")
        if not 0.0 <= float(dropout_prob) <= 1.0:
            raise ValueError(f"dropout_prob must be in [0, 1], got {dropout_prob!r}")
        vq_config = self._inner_vq_config(vq_config, "RVQ")
        self.num_stages = num_stages
        self.codebook_size = codebook_size
        self.dropout_prob = float(dropout_prob)
        self.seed = seed
        self.vq_config = vq_config
        self.stages = [
            VectorQuantizer(codebook_size=codebook_size, name=f"stage_{i}",
                            seed=None if seed is None else seed + i, **vq_config)
            for i in range(num_stages)]
        self.seed_generator = keras.random.SeedGenerator(seed)
        self.num_active_stages = num_stages if num_active_stages is None else num_active_stages

    @property
    def num_active_stages(self):
        return self._num_active_stages

    @num_active_stages.setter
    def num_active_stages(self, value):
        self._num_active_stages = self._check_stage_count(value, "num_active_stages")

    def _check_stage_count(self, value, name):
        if not isinstance(value, int) or isinstance(value, bool) \
                or not 1 <= value <= self.num_stages:
            raise ValueError(f"{name} must be an int in [1, {self.num_stages}], got {value!r}")
        return value

    @property
    def codebook_sizes(self):
        """Alphabet of every stage (all N; a stream cut to n stages uses the first n)."""
        return [self.codebook_size] * self.num_stages

    def build(self, input_shape):
        for stage in self.stages:
            stage.build(input_shape)
        self.dim = int(input_shape[-1])

    def call(self, z, training=None, num_stages=None):
        """z `[B, T, D]` -> QuantizerOutput with codes `[B, T, n]`.

        Args:
          num_stages: stages to use (default `num_active_stages`). In training, quantizer
            dropout may use fewer; the codes of every one of the n stages are returned.
        """
        training = bool(training)
        z = self._check_input(z, self.dim)
        n = self._check_stage_count(
            self.num_active_stages if num_stages is None else num_stages, "num_stages")
        n_active = tf.constant(n, tf.int32)
        if training and n > 1 and self.dropout_prob > 0:
            drop = keras.random.uniform((), seed=self.seed_generator) < self.dropout_prob
            random_n = keras.random.randint((), 1, n + 1, seed=self.seed_generator)
            n_active = tf.where(drop, tf.cast(random_n, tf.int32), n_active)
        residual, total, aux = z, tf.zeros_like(z), tf.constant(0.0)
        codes, probs, weights, metrics = [], [], [], {}
        for i, stage in enumerate(self.stages[:n]):
            active = tf.cast(i < n_active, tf.float32)
            q, c, p, a, m = stage.quantize_latents(residual, training, active)
            total = total + active * q
            residual = residual - q
            aux = aux + a
            codes.append(c)
            probs.append(p)
            weights.append(active)
            metrics[f"commitment_{i}"] = m["commitment"]
        codes = tf.stack(codes, axis=-1)
        bits, base_metrics = self._entropy_terms(
            tf.stack(probs, axis=-2), codes, self.codebook_size, training, tf.stack(weights))
        metrics.update(base_metrics)
        metrics["active_stages"] = tf.cast(n_active, tf.float32)
        return QuantizerOutput(total, codes, bits, aux, metrics)

    def decode(self, codes, num_stages=None):
        """codes `[B, T, S]` -> `[B, T, D]` from the first `num_stages` (default S) stages."""
        codes = self._check_codes(codes)
        if codes.shape[-1] > self.num_stages:
            raise ValueError(f"{self.name}: codes have {codes.shape[-1]} streams but the "
                             f"quantizer has {self.num_stages} stages")
        n = codes.shape[-1] if num_stages is None else num_stages
        if not isinstance(n, int) or not 1 <= n <= codes.shape[-1]:
            raise ValueError(f"num_stages must be an int in [1, {codes.shape[-1]}] (the "
                             f"number of code streams), got {num_stages!r}")
        total = tf.zeros(tf.concat([tf.shape(codes)[:-1], [self.dim]], 0))
        for i in range(n):
            total = total + self.stages[i].lookup(codes[..., i])
        return total

    def get_config(self):
        config = super().get_config()
        config.update(num_stages=self.num_stages, codebook_size=self.codebook_size,
                      dropout_prob=self.dropout_prob,
                      num_active_stages=self.num_active_stages, seed=self.seed,
                      vq_config=self.vq_config)
        return config
