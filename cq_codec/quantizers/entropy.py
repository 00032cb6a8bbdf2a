"""Differentiable code-length estimates shared by every quantizer.

All estimates are zeroth order: one histogram per code stream over every position of a batch
(Agustsson et al., "Soft-to-hard vector quantization", NeurIPS 2017; Kankanahalli, ICASSP 2018).
Probabilities come in as assignments `[..., S, K]` (S streams, K symbols, each row sums to one):
soft assignments give a differentiable estimate, one-hot assignments give the exact empirical
entropy of the codes.
"""

import math

import tensorflow as tf

__all__ = [
    "assignment_histogram",
    "stream_entropy_bits",
    "total_bits",
    "sparsity_penalty",
    "perplexity",
    "utilisation",
]

_LN2 = math.log(2.0)
_SPARSITY_EPS = 1e-8


def _check_rank(probs, name="probs"):
    if probs.shape.rank is not None and probs.shape.rank < 2:
        raise ValueError(f"{name} must have shape [..., S, K], got {probs.shape}")


def assignment_histogram(probs):
    """Mean assignment over all leading positions.

    Args:
      probs: float `[..., S, K]` assignment probabilities (soft or one-hot).
    Returns:
      float `[S, K]`: per-stream symbol probabilities.
    """
    probs = tf.convert_to_tensor(probs, tf.float32)
    _check_rank(probs)
    s, k = probs.shape[-2], probs.shape[-1]
    return tf.reduce_mean(tf.reshape(probs, [-1, s, k]), axis=0)


def stream_entropy_bits(hist):
    """Entropy in bits of each stream's histogram, `[S, K] -> [S]`.

    Uses `xlogy`, whose gradient is zero (not NaN) at empty bins.
    """
    hist = tf.convert_to_tensor(hist, tf.float32)
    return -tf.reduce_sum(tf.math.xlogy(hist, hist), axis=-1) / _LN2


def hard_entropy_bits(hist, n):
    """Miller-Madow corrected entropy of hard-code histograms `[S, K]` (each from `n` codes),
    summed over streams: `sum_s H_s + (K_used_s - 1) / (2 n ln 2)`. The plug-in entropy of a
    batch is biased low by about that much (0.2-0.3 bits for 256 codes seen 512-1024 times)."""
    hist = tf.convert_to_tensor(hist, tf.float32)
    used = tf.reduce_sum(tf.cast(hist > 0, tf.float32), axis=-1)
    correction = (used - 1.0) / (2.0 * tf.maximum(tf.cast(n, tf.float32), 1.0) * _LN2)
    return tf.reduce_sum(stream_entropy_bits(hist) + correction)


def total_bits(probs):
    """Estimated total bits to code every position of every stream of a batch.

    Args:
      probs: float `[..., S, K]`.
    Returns:
      scalar float: `sum_s H_s * N`, N = number of positions (product of the leading axes).
    """
    probs = tf.convert_to_tensor(probs, tf.float32)
    _check_rank(probs)
    n = tf.cast(tf.size(probs) // (probs.shape[-2] * probs.shape[-1]), tf.float32)
    return tf.reduce_sum(stream_entropy_bits(assignment_histogram(probs))) * n


def sparsity_penalty(hist):
    """Soft-to-hard sparsity term `sum_k sqrt(p_k)`, averaged over streams (Agustsson 2017).

    `sqrt(p + eps) - sqrt(eps)` keeps the gradient finite at empty bins.
    Args:
      hist: float `[S, K]`.
    Returns:
      scalar float.
    """
    hist = tf.convert_to_tensor(hist, tf.float32)
    per_stream = tf.reduce_sum(tf.sqrt(hist + _SPARSITY_EPS) - math.sqrt(_SPARSITY_EPS), -1)
    return tf.reduce_mean(per_stream)


def perplexity(hist):
    """`2 ** H` per stream averaged over streams: the effective number of symbols used."""
    return tf.reduce_mean(tf.pow(2.0, stream_entropy_bits(hist)))


def utilisation(hist):
    """Fraction of each codebook with non-zero probability, averaged over streams."""
    hist = tf.convert_to_tensor(hist, tf.float32)
    return tf.reduce_mean(tf.cast(hist > 0.0, tf.float32))
