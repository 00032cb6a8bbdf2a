"""Residual vector quantizer (Zeghidour et al., SoundStream, 2021).

N EMA vector quantizers in cascade, each coding what the earlier ones left: N codebooks (the
RVQ's levels; "stage" is kept only in the names seed 000 gave them: the `num_stages` /
`stage_dims` arguments and flags, the `stages` sublayers and `num_active_stages`, which saved
models' configs and weight paths hold). Quantizer dropout (SoundStream): in training, with
probability `dropout_prob` a batch uses a random number of codebooks n ~ U{1..N}, so one model
serves every bitrate; at inference `num_stages` (or `num_active_codebooks`) picks how many
codebooks to use.

Codebooks may differ (seed 000's `--codebook_sizes 256,256,256 --stage_dims ...`): codebook i
has its own size K_i and may code a d_i-dimensional projection of the residual (a learned
linear map D -> d_i before it and d_i -> D after it, the factorised codes of DAC, Kumar et al.
2023); a codebook whose d_i equals D has no projection.
"""

import keras
import tensorflow as tf
from keras import layers

from cq_codec.quantizers.base import Quantizer, QuantizerOutput
from cq_codec.quantizers.vq import VectorQuantizer

__all__ = ["ResidualVectorQuantizer"]


@keras.saving.register_keras_serializable(package="cq_codec")
class ResidualVectorQuantizer(Quantizer):
    """Residual VQ of N codebooks; S = number of codebooks used.

    Args:
      num_stages: N, the number of codebooks (default 8).
      codebook_size: K of every codebook (default 256).
      codebook_sizes: per-codebook K_i (N entries; overrides `codebook_size`; unequal allowed).
      stage_dims: per-codebook code dims d_i (N entries; None = every codebook codes the full D).
      dropout_prob: probability that a training batch uses a random number of codebooks.
      num_active_stages: codebooks used at inference when `call` gets no `num_stages` (default
        N; also `num_active_codebooks`). A Python attribute: a compiled predict function must
        be retraced after changing it, so prefer passing `num_stages` to `call`.
      seed: integer seed (codebook i gets seed + i).
      vq_config: dict of further `VectorQuantizer` arguments for every codebook.
    Input `z [B, T, D]`; codes `[B, T, n]`, n = codebooks used.
    """

    def __init__(self, num_stages=8, codebook_size=256, dropout_prob=0.5,
                 num_active_stages=None, seed=None, vq_config=None, codebook_sizes=None,
                 stage_dims=None, **kwargs):
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
        if codebook_sizes is not None:
            codebook_sizes = [int(k) for k in codebook_sizes]
            if len(codebook_sizes) != num_stages or min(codebook_sizes) < 2:
                raise ValueError(f"codebook_sizes needs {num_stages} entries (one per stage), each "
                                 f">= 2; got {codebook_sizes}")
        if stage_dims is not None:
            stage_dims = [int(d) for d in stage_dims]
            if len(stage_dims) != num_stages or min(stage_dims) < 1:
                raise ValueError(f"stage_dims needs {num_stages} entries (one per stage), each "
                                 f">= 1; got {stage_dims}")
        self._sizes = codebook_sizes or [codebook_size] * num_stages
        self.stage_dims = stage_dims
        self.stages = [
            VectorQuantizer(codebook_size=self._sizes[i], name=f"stage_{i}",
                            seed=None if seed is None else seed + i, **vq_config)
            for i in range(num_stages)]
        self.seed_generator = keras.random.SeedGenerator(seed)
        self.num_active_stages = num_stages if num_active_stages is None else num_active_stages

    @property
    def num_codebooks(self) -> int:
        """N, the number of codebooks (the `num_stages` argument)."""
        return self.num_stages

    @property
    def num_active_codebooks(self) -> int:
        """Codebooks used at inference when `call` gets no `num_stages` (`num_active_stages`)."""
        return self._num_active_stages

    @num_active_codebooks.setter
    def num_active_codebooks(self, value):
        self.num_active_stages = value

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
        """Alphabet of every codebook (all N; a stream cut to n codebooks uses the first n)."""
        return list(self._sizes)

    def build(self, input_shape):
        self.dim = int(input_shape[-1])
        self.project_in, self.project_out = [], []
        for i, stage in enumerate(self.stages):
            d = self.dim if self.stage_dims is None else self.stage_dims[i]
            if d == self.dim:
                self.project_in.append(None)
                self.project_out.append(None)
                stage.build(input_shape)
                continue
            pin = layers.Dense(d, name=f"stage_{i}_in")
            pout = layers.Dense(self.dim, name=f"stage_{i}_out")
            pin.build(tuple(input_shape))
            pout.build(tuple(input_shape[:-1]) + (d,))
            stage.build(tuple(input_shape[:-1]) + (d,))
            self.project_in.append(pin)
            self.project_out.append(pout)

    def call(self, z, training=None, num_stages=None):
        """z `[B, T, D]` -> QuantizerOutput with codes `[B, T, n]`.

        Args:
          num_stages: codebooks to use (default `num_active_codebooks`). In training, quantizer
            dropout may use fewer; the codes of every one of the n codebooks are returned.
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
        k_max = max(self._sizes[:n])
        for i, stage in enumerate(self.stages[:n]):
            active = tf.cast(i < n_active, tf.float32)
            x = residual if self.project_in[i] is None else self.project_in[i](residual)
            q, c, p, a, m = stage.quantize_latents(x, training, active)
            if self.project_out[i] is not None:
                q = self.project_out[i](q)
            if self._sizes[i] < k_max:
                p = tf.pad(p, [[0, 0]] * (p.shape.rank - 1) + [[0, k_max - self._sizes[i]]])
            total = total + active * q
            residual = residual - q
            aux = aux + a
            codes.append(c)
            probs.append(p)
            weights.append(active)
            metrics[f"commitment_{i}"] = m["commitment"]
        codes = tf.stack(codes, axis=-1)
        bits, base_metrics = self._entropy_terms(
            tf.stack(probs, axis=-2), codes, k_max, training, tf.stack(weights))
        metrics.update(base_metrics)
        metrics["active_stages"] = tf.cast(n_active, tf.float32)
        return QuantizerOutput(total, codes, bits, aux, metrics)

    def decode(self, codes, num_stages=None):
        """codes `[B, T, S]` -> `[B, T, D]` from the first `num_stages` (default S) codebooks."""
        codes = self._check_codes(codes)
        if codes.shape[-1] > self.num_stages:
            raise ValueError(f"{self.name}: codes have {codes.shape[-1]} streams but the "
                             f"quantizer has {self.num_stages} codebooks")
        n = codes.shape[-1] if num_stages is None else num_stages
        if not isinstance(n, int) or not 1 <= n <= codes.shape[-1]:
            raise ValueError(f"num_stages must be an int in [1, {codes.shape[-1]}] (the "
                             f"number of code streams), got {num_stages!r}")
        total = tf.zeros(tf.concat([tf.shape(codes)[:-1], [self.dim]], 0))
        for i in range(n):
            q = self.stages[i].lookup(codes[..., i])
            if self.project_out[i] is not None:
                q = self.project_out[i](q)
            total = total + q
        return total

    def get_config(self):
        config = super().get_config()
        config.update(num_stages=self.num_stages, codebook_size=self.codebook_size,
                      dropout_prob=self.dropout_prob,
                      num_active_stages=self.num_active_stages, seed=self.seed,
                      vq_config=self.vq_config)
        # Only when set: an equal-codebook model's config reads as it did before the option.
        if self._sizes != [self.codebook_size] * self.num_stages:
            config["codebook_sizes"] = list(self._sizes)
        if self.stage_dims is not None:
            config["stage_dims"] = list(self.stage_dims)
        return config
