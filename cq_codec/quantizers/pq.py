"""Product quantizer (Jegou et al., "Product quantization for nearest neighbor search",
TPAMI 2011): z is split into G sub-vectors, each coded by its own EMA vector quantizer."""

import keras
import tensorflow as tf

from cq_codec.quantizers.base import Quantizer, QuantizerOutput
from cq_codec.quantizers.vq import VectorQuantizer

__all__ = ["ProductQuantizer"]


@keras.saving.register_keras_serializable(package="cq_codec")
class ProductQuantizer(Quantizer):
    """G independent VQ codebooks over the G sub-vectors of z; S = G streams.

    Args:
      num_groups: G; the last axis D of z must be divisible by G (default 4).
      codebook_size: K of every group (default 256).
      seed: integer seed (group g gets seed + g).
      vq_config: dict of further `VectorQuantizer` arguments for every group.
    Input `z [B, T, D]`; codes `[B, T, G]`.
    """

    def __init__(self, num_groups=4, codebook_size=256, seed=None, vq_config=None, **kwargs):
        super().__init__(**kwargs)
        if not isinstance(num_groups, int) or isinstance(num_groups, bool) or num_groups < 1:
            raise ValueError(f"num_groups must be an int >= 1, got {num_groups!r}")
        vq_config = self._inner_vq_config(vq_config, "PQ")
        self.num_groups = num_groups
        self.codebook_size = codebook_size
        self.seed = seed
        self.vq_config = vq_config
        self.groups = [
            VectorQuantizer(codebook_size=codebook_size, name=f"group_{g}",
                            seed=None if seed is None else seed + g, **vq_config)
            for g in range(num_groups)]

    @property
    def codebook_sizes(self):
        return [self.codebook_size] * self.num_groups

    def build(self, input_shape):
        dim = input_shape[-1]
        if dim is None or dim % self.num_groups:
            raise ValueError(f"{self.name}: the last axis of z ({dim}) must be divisible by "
                             f"num_groups={self.num_groups}")
        self.dim = int(dim)
        sub_shape = tuple(input_shape[:-1]) + (self.dim // self.num_groups,)
        for vq in self.groups:
            vq.build(sub_shape)

    def call(self, z, training=None):
        """z `[B, T, D]` -> QuantizerOutput with codes `[B, T, G]`."""
        training = bool(training)
        z = self._check_input(z, self.dim)
        parts, codes, probs, metrics = [], [], [], {}
        aux = tf.constant(0.0)
        for g, (vq, sub) in enumerate(zip(self.groups, tf.split(z, self.num_groups, -1))):
            q, c, p, a, m = vq.quantize_latents(sub, training)
            parts.append(q)
            codes.append(c)
            probs.append(p)
            aux = aux + a
            metrics[f"commitment_{g}"] = m["commitment"]
        codes = tf.stack(codes, axis=-1)
        bits, base_metrics = self._entropy_terms(tf.stack(probs, axis=-2), codes,
                                                 self.codebook_size, training)
        metrics.update(base_metrics)
        return QuantizerOutput(tf.concat(parts, -1), codes, bits, aux, metrics)

    def decode(self, codes):
        """codes `[B, T, G]` -> `[B, T, D]`."""
        codes = self._check_codes(codes, self.num_groups)
        return tf.concat([vq.lookup(codes[..., g]) for g, vq in enumerate(self.groups)], -1)

    def get_config(self):
        config = super().get_config()
        config.update(num_groups=self.num_groups, codebook_size=self.codebook_size,
                      seed=self.seed, vq_config=self.vq_config)
        return config
