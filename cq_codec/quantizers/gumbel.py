"""Gumbel-softmax quantizer (Jang et al., "Categorical reparameterization with Gumbel-softmax",
ICLR 2017), straight-through variant: hard one-hot samples forward, the relaxed sample's
gradient backward. Logits come from z through a Dense layer; the code indexes a K x D_out
embedding. The temperature is a non-trainable variable annealed from a callback
(tau = max(min_temperature, temperature * exp(-anneal_rate * step)), Jang et al. 2017).
"""

import math

import keras
import tensorflow as tf

from cq_codec.quantizers import entropy
from cq_codec.quantizers.base import Quantizer, QuantizerOutput

__all__ = ["GumbelQuantizer"]


@keras.saving.register_keras_serializable(package="cq_codec")
class GumbelQuantizer(Quantizer):
    """Straight-through Gumbel-softmax quantizer; one code stream (S = 1).

    Args:
      codebook_size: K (default 256).
      output_dim: D_out of the embedding (default: D of z, so quantized has z's shape).
      temperature: initial temperature (default 1.0).
      min_temperature: floor of the annealing schedule (default 0.5).
      anneal_rate: r in tau = max(min, temperature * exp(-r * step)) (default 1e-4).
      diversity_weight: weight of the codebook diversity term (K - perplexity) / K on the
        batch-mean softmax (Baevski et al., wav2vec 2.0, 2020) in `aux_loss` (default 0).
      seed: integer seed of the Gumbel noise.
      entropy_temperature: in training, the entropy estimate (what the rate penalty acts on) is
        taken from softmax(logits / entropy_temperature). 1.0 (the default, as before) spreads
        the soft assignments without moving the argmax codes: with tau rewarding entropy
        (-1.38) the inference codes still fell to 17 % under target. 0.1 makes the estimate a
        differentiable stand-in for the argmax codes' histogram, and rate control then holds
        them near the target (results/quantizers).
    Input `z [B, T, D]`; codes `[B, T, 1]`; quantized `[B, T, D_out]`.
    """

    def __init__(self, codebook_size=256, output_dim=None, temperature=1.0,
                 min_temperature=0.5, anneal_rate=1e-4, diversity_weight=0.0, seed=None,
                 entropy_temperature=1.0, **kwargs):
        super().__init__(**kwargs)
        if not isinstance(codebook_size, int) or isinstance(codebook_size, bool) \
                or codebook_size < 2:
            raise ValueError(f"codebook_size must be an int >= 2, got {codebook_size!r}")
        if output_dim is not None and (not isinstance(output_dim, int) or output_dim < 1):
            raise ValueError(f"output_dim must be None or an int >= 1, got {output_dim!r}")
        for name, value in (("temperature", temperature), ("min_temperature", min_temperature),
                            ("entropy_temperature", entropy_temperature)):
            if not float(value) > 0:
                raise ValueError(f"{name} must be > 0, got {value!r}")
        for name, value in (("anneal_rate", anneal_rate), ("diversity_weight", diversity_weight)):
            if float(value) < 0:
                raise ValueError(f"{name} must be >= 0, got {value!r}")
        self.codebook_size = codebook_size
        self.output_dim = output_dim
        self.initial_temperature = float(temperature)
        self.min_temperature = float(min_temperature)
        self.anneal_rate = float(anneal_rate)
        self.diversity_weight = float(diversity_weight)
        self.entropy_temperature = float(entropy_temperature)
        self.seed = seed
        self.seed_generator = keras.random.SeedGenerator(seed)
        self.to_logits = keras.layers.Dense(codebook_size, name="logits")
        self.temperature = self.add_weight(
            shape=(), initializer=keras.initializers.Constant(self.initial_temperature),
            trainable=False, name="temperature")

    @property
    def codebook_sizes(self):
        return [self.codebook_size]

    def build(self, input_shape):
        dim = self._last_dim(input_shape)
        self.dim = int(dim)
        self.to_logits.build(input_shape)
        out = self.output_dim or self.dim
        self.embedding = self.add_weight(
            shape=(self.codebook_size, out), name="embedding",
            initializer=keras.initializers.RandomNormal(stddev=1.0, seed=self.seed))

    def anneal(self, step, schedule=None):
        """Sets tau = max(min_temperature, temperature * exp(-anneal_rate * step)) (its own rate;
        the `Schedule` plans the softmax quantizers' alpha)."""
        super().anneal(step, schedule)
        value = max(self.min_temperature,
                    self.initial_temperature * math.exp(-self.anneal_rate * step))
        self.temperature.assign(value)
        return value

    def call(self, z, training=None):
        """z `[B, T, D]` -> QuantizerOutput with codes `[B, T, 1]`."""
        training = bool(training)
        z = self._check_input(z, self.dim)
        logits = self.to_logits(z)  # [B, T, K]
        probs = tf.nn.softmax(logits, -1)
        embedding = tf.convert_to_tensor(self.embedding)
        if training:
            u = keras.random.uniform(tf.shape(logits), minval=1e-6, maxval=1.0 - 1e-6,
                                     seed=self.seed_generator)
            gumbel = -tf.math.log(-tf.math.log(u))
            y_soft = tf.nn.softmax((logits + gumbel) / tf.convert_to_tensor(self.temperature))
            sampled = tf.argmax(y_soft, -1, output_type=tf.int32)
            y_hard = tf.one_hot(sampled, self.codebook_size, dtype=tf.float32)
            y = y_hard + y_soft - tf.stop_gradient(y_soft)  # straight-through
            quantized = tf.einsum("btk,kd->btd", y, embedding)
            # The codes (and the hard-entropy metrics rate control reads) are what inference will
            # code: argmax of the noise-free logits. The noisy samples measured 8.0 bits where
            # inference coded 5.3 (results/quantizers, session 2).
            codes = tf.argmax(logits, -1, output_type=tf.int32)
        else:
            codes = tf.argmax(logits, -1, output_type=tf.int32)
            quantized = tf.gather(embedding, codes)
        codes = codes[..., None]
        sharp = probs if self.entropy_temperature == 1.0 or not training else \
            tf.nn.softmax(logits / self.entropy_temperature, -1)
        bits, metrics = self._entropy_terms(sharp[:, :, None, :], codes, self.codebook_size,
                                            training)
        soft_perplexity = entropy.perplexity(entropy.assignment_histogram(probs[:, :, None]))
        diversity = (self.codebook_size - soft_perplexity) / self.codebook_size
        metrics.update(diversity=diversity, temperature=tf.convert_to_tensor(self.temperature))
        return QuantizerOutput(quantized, codes, bits, self.diversity_weight * diversity,
                               metrics)

    def decode(self, codes):
        """codes `[B, T, 1]` -> embedding rows `[B, T, D_out]`."""
        codes = self._check_codes(codes, 1)
        return tf.gather(tf.convert_to_tensor(self.embedding), codes[..., 0])

    def get_config(self):
        config = super().get_config()
        config.update(codebook_size=self.codebook_size, output_dim=self.output_dim,
                      temperature=self.initial_temperature,
                      min_temperature=self.min_temperature, anneal_rate=self.anneal_rate,
                      diversity_weight=self.diversity_weight, seed=self.seed)
        if self.entropy_temperature != 1.0:   # absent = 1.0: older models keep their identity
            config["entropy_temperature"] = self.entropy_temperature
        return config
