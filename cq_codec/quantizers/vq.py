"""Vector quantizer with an EMA codebook (van den Oord et al., "Neural discrete representation
learning", NeurIPS 2017; Razavi et al., VQ-VAE-2, NeurIPS 2019).

Cures for codebook collapse (as catalogued by vector-quantize-pytorch): k-means initialisation
on the first training batch, EMA updates with Laplace-smoothed cluster sizes, dead-code
replacement from random batch latents (Dhariwal et al., Jukebox, 2020). The encoder gets its
gradient through the straight-through estimator and a commitment loss (beta = 0.25).
"""

import keras
import tensorflow as tf

from cq_codec.quantizers.base import Quantizer, QuantizerOutput

__all__ = ["VectorQuantizer"]


def _positive_int(name, value, minimum=1):
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")


@keras.saving.register_keras_serializable(package="cq_codec")
class VectorQuantizer(Quantizer):
    """One codebook of K vectors of size D; one code stream (S = 1).

    Args:
      codebook_size: K (default 256).
      commitment_weight: beta, weight of ||z - sg(q)||^2 in `aux_loss` (default 0.25).
      decay: EMA decay of cluster sizes and sums (default 0.99); `use_ema=False` trains the
        codebook by gradient instead (adds the codebook loss ||sg(z) - q||^2).
      epsilon: Laplace smoothing of the cluster sizes (> 0: an empty cluster never divides
        by zero).
      kmeans_init: run `kmeans_iters` Lloyd iterations on the first training batch.
      dead_code_threshold: a code unused for this many training steps is re-seeded from a
        random latent of the batch (0 disables).
      entropy_temperature: softness of the assignment used for the `bits` estimate in
        training: p = softmax(-d / (temperature * mean nearest distance)), d = squared distance.
      seed: integer seed of the layer's random generator (init, dead codes).
    Input `z [B, T, D]`; codes `[B, T, 1]`.
    """

    def __init__(self, codebook_size=256, commitment_weight=0.25, decay=0.99, epsilon=1e-5,
                 use_ema=True, kmeans_init=True, kmeans_iters=10, dead_code_threshold=100,
                 entropy_temperature=0.5, seed=None, **kwargs):
        super().__init__(**kwargs)
        _positive_int("codebook_size", codebook_size, 2)
        _positive_int("kmeans_iters", kmeans_iters, 0)
        _positive_int("dead_code_threshold", dead_code_threshold, 0)
        if not 0.0 <= float(decay) < 1.0:
            raise ValueError(f"decay must be in [0, 1), got {decay!r}")
        if float(commitment_weight) < 0:
            raise ValueError(f"commitment_weight must be >= 0, got {commitment_weight!r}")
        if not float(epsilon) > 0:
            raise ValueError(f"epsilon must be > 0 (Laplace smoothing), got {epsilon!r}")
        if not float(entropy_temperature) > 0:
            raise ValueError(f"entropy_temperature must be > 0, got {entropy_temperature!r}")
        self.codebook_size = codebook_size
        self.commitment_weight = float(commitment_weight)
        self.decay = float(decay)
        self.epsilon = float(epsilon)
        self.use_ema = bool(use_ema)
        self.kmeans_init = bool(kmeans_init)
        self.kmeans_iters = kmeans_iters
        self.dead_code_threshold = dead_code_threshold
        self.entropy_temperature = float(entropy_temperature)
        self.seed = seed
        self.seed_generator = keras.random.SeedGenerator(seed)

    @property
    def codebook_sizes(self):
        return [self.codebook_size]

    def build(self, input_shape):
        dim = self._last_dim(input_shape)
        k = self.codebook_size
        self.dim = int(dim)
        self.codebook = self.add_weight(
            shape=(k, self.dim), name="codebook", trainable=not self.use_ema,
            initializer=keras.initializers.RandomNormal(stddev=1.0, seed=self.seed))
        self.ema_cluster_size = self.add_weight(shape=(k,), initializer="ones",
                                                trainable=False, name="ema_cluster_size")
        self.ema_embed_sum = self.add_weight(shape=(k, self.dim), initializer="zeros",
                                             trainable=False, name="ema_embed_sum")
        self.ema_embed_sum.assign(self.codebook)
        self.steps_unused = self.add_weight(shape=(k,), initializer="zeros", trainable=False,
                                            name="steps_unused")
        self.initialized = self.add_weight(shape=(), trainable=False, name="initialized",
                                           initializer="zeros" if self.kmeans_init else "ones")

    # ---- codebook maintenance ---------------------------------------------------------
    def _distances(self, flat, codebook):
        """flat `[N, D]`, codebook `[K, D]` -> squared distances `[N, K]`."""
        return (tf.reduce_sum(flat ** 2, 1, keepdims=True)
                - 2.0 * tf.matmul(flat, codebook, transpose_b=True)
                + tf.reduce_sum(codebook ** 2, 1)[None, :])

    def _random_rows(self, flat, count):
        """`count` rows of flat `[N, D]` drawn without replacement (cycled when N < count)."""
        n = tf.shape(flat)[0]
        perm = keras.random.shuffle(tf.range(n), seed=self.seed_generator)
        return tf.gather(flat, tf.gather(perm, tf.range(count) % n))

    def init_from(self, z):
        """k-means initialisation (Lloyd) of the codebook from latents `[..., D]`."""
        if not self.built:
            self.build(tf.TensorShape(z.shape))
        flat = tf.reshape(tf.cast(z, tf.float32), [-1, self.dim])
        centroids = self._random_rows(flat, self.codebook_size)
        for _ in range(self.kmeans_iters):
            onehot = tf.one_hot(tf.argmin(self._distances(flat, centroids), 1),
                                self.codebook_size)
            counts = tf.reduce_sum(onehot, 0)
            sums = tf.matmul(onehot, flat, transpose_a=True)
            centroids = tf.where(counts[:, None] > 0,
                                 sums / tf.maximum(counts, 1.0)[:, None], centroids)
        self.codebook.assign(centroids)
        self.ema_embed_sum.assign(centroids)
        self.ema_cluster_size.assign(tf.ones_like(self.ema_cluster_size))
        self.steps_unused.assign(tf.zeros_like(self.steps_unused))
        self.initialized.assign(1.0)
        return tf.constant(0)

    def _ema_update(self, flat, onehot, active):
        """EMA codebook step and dead-code replacement; gated by scalar `active` (0 or 1)."""
        on = active > 0.0
        counts = tf.reduce_sum(onehot, 0)
        sums = tf.matmul(onehot, flat, transpose_a=True)
        d = self.decay
        cs = tf.convert_to_tensor(self.ema_cluster_size)
        es = tf.convert_to_tensor(self.ema_embed_sum)
        cs = tf.where(on, d * cs + (1.0 - d) * counts, cs)
        es = tf.where(on, d * es + (1.0 - d) * sums, es)
        n = tf.reduce_sum(cs)
        smoothed = (cs + self.epsilon) / (n + self.codebook_size * self.epsilon) * n
        codebook = es / smoothed[:, None]
        unused = tf.convert_to_tensor(self.steps_unused)
        unused = tf.where(on, tf.where(counts > 0, 0.0, unused + 1.0), unused)
        replaced = tf.constant(0.0)
        if self.dead_code_threshold > 0:
            dead = unused >= float(self.dead_code_threshold)
            fresh = self._random_rows(flat, self.codebook_size)
            codebook = tf.where(dead[:, None], fresh, codebook)
            es = tf.where(dead[:, None], fresh, es)
            cs = tf.where(dead, 1.0, cs)
            unused = tf.where(dead, 0.0, unused)
            replaced = tf.reduce_sum(tf.cast(dead, tf.float32))
        self.ema_cluster_size.assign(cs)
        self.ema_embed_sum.assign(es)
        self.codebook.assign(codebook)
        self.steps_unused.assign(unused)
        return replaced

    def _replace_dead_codes_no_ema(self, flat, onehot, active):
        """Dead-code bookkeeping when the codebook is trained by gradient (no EMA)."""
        if self.dead_code_threshold == 0:
            return tf.constant(0.0)
        counts = tf.reduce_sum(onehot, 0)
        unused = tf.convert_to_tensor(self.steps_unused)
        unused = tf.where(active > 0.0, tf.where(counts > 0, 0.0, unused + 1.0), unused)
        dead = unused >= float(self.dead_code_threshold)
        fresh = self._random_rows(flat, self.codebook_size)
        self.codebook.assign(tf.where(dead[:, None], fresh, self.codebook))
        self.steps_unused.assign(tf.where(dead, 0.0, unused))
        return tf.reduce_sum(tf.cast(dead, tf.float32))

    # ---- forward ----------------------------------------------------------------------
    def quantize_latents(self, z, training=False, active=None):
        """Core step used by VQ, RVQ and PQ.

        Args:
          z: float `[B, T, D]`.
          training: Python bool; updates the codebook when True.
          active: optional scalar float (0 or 1); 0 freezes the codebook statistics (RVQ
            quantizer dropout).
        Returns:
          (quantized `[B, T, D]`, codes int32 `[B, T]`, probs `[B, T, K]`, aux_loss scalar
          (weighted, times `active`), metrics dict).
        """
        active = tf.constant(1.0) if active is None else tf.cast(active, tf.float32)
        shape = tf.shape(z)
        flat = tf.reshape(z, [-1, self.dim])
        if training and self.kmeans_init:
            tf.cond(self.initialized > 0.0, lambda: tf.constant(0),
                    lambda: self.init_from(flat))
        codebook = tf.convert_to_tensor(self.codebook)
        dist = self._distances(flat, codebook)
        codes_flat = tf.argmin(dist, axis=1, output_type=tf.int32)
        codes = tf.reshape(codes_flat, shape[:-1])
        hard = tf.gather(codebook, codes)
        commit = tf.reduce_mean(tf.square(z - tf.stop_gradient(hard)))
        metrics = {"commitment": commit}
        aux = self.commitment_weight * commit
        if training:
            onehot = tf.one_hot(codes_flat, self.codebook_size)
            if self.use_ema:
                replaced = self._ema_update(tf.stop_gradient(flat), onehot, active)
            else:
                aux += tf.reduce_mean(tf.square(tf.stop_gradient(z) - hard))
                replaced = self._replace_dead_codes_no_ema(
                    tf.stop_gradient(flat), onehot, active)
            metrics["replaced_codes"] = replaced
            quantized = z + tf.stop_gradient(hard - z)  # straight-through estimator
        else:
            quantized = hard
        scale = tf.stop_gradient(tf.reduce_mean(tf.reduce_min(dist, 1))) + 1e-12
        logits = -dist / (self.entropy_temperature * scale)
        probs = tf.reshape(tf.nn.softmax(logits, -1),
                           tf.concat([shape[:-1], [self.codebook_size]], 0))
        return quantized, codes, probs, aux * active, metrics

    def call(self, z, training=None):
        """z `[B, T, D]` -> QuantizerOutput with codes `[B, T, 1]`."""
        training = bool(training)
        z = self._check_input(z, self.dim)
        quantized, codes, probs, aux, extra = self.quantize_latents(z, training)
        codes = codes[..., None]
        bits, metrics = self._entropy_terms(probs[:, :, None, :], codes, self.codebook_size,
                                            training)
        metrics.update(extra)
        return QuantizerOutput(quantized, codes, bits, aux, metrics)

    def lookup(self, codes):
        """int `[...]` -> codebook rows `[..., D]`."""
        return tf.gather(tf.convert_to_tensor(self.codebook), codes)

    def decode(self, codes):
        """codes `[B, T, 1]` -> `[B, T, D]`."""
        codes = self._check_codes(codes, 1)
        return self.lookup(codes[..., 0])

    def get_config(self):
        config = super().get_config()
        config.update(
            codebook_size=self.codebook_size, commitment_weight=self.commitment_weight,
            decay=self.decay, epsilon=self.epsilon, use_ema=self.use_ema,
            kmeans_init=self.kmeans_init, kmeans_iters=self.kmeans_iters,
            dead_code_threshold=self.dead_code_threshold,
            entropy_temperature=self.entropy_temperature, seed=self.seed)
        return config
