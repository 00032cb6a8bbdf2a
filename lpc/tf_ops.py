"""Differentiable LPC ops in TensorFlow (float32, batched, no Python loops over batch or time).

These mirror the numpy reference (`lpc.lsf`, `lpc.analysis`, `lpc.filters`) for use inside
models and losses. Static shapes are checked (ValueError); values are checked for NaN/Inf only
when executing eagerly (inside tf.function they are not, to keep graphs cheap).
"""

import numpy as np
import tensorflow as tf

import constants as C
from lpc.lsf import lsf_ceiling

__all__ = ["repair_lsf_tf", "lsf_to_lpc_tf", "subframe_lsf_tf", "per_sample_filters_tf", "residual_tf",
           "synthesis_error_tf", "pitch_synthesis_tf"]

_P = C.LPC_ORDER


def _as_tensor(x, name, rank=None, tail=None):
    """float32 tensor with checked static rank / trailing dims; NaN check when eager."""
    x = tf.convert_to_tensor(x, dtype_hint=tf.float32)
    if not x.dtype.is_floating:
        raise TypeError(f"{name} must be a float tensor, got {x.dtype.name}")
    x = tf.cast(x, tf.float32)
    shape = x.shape
    if rank is not None and shape.rank is not None and shape.rank != rank:
        raise ValueError(f"{name} must have rank {rank}, got shape {shape}")
    if tail is not None:
        if shape.rank is not None and shape.rank < len(tail):
            raise ValueError(f"{name} must have shape [..., {tail}], got {shape}")
        got = shape[-len(tail):] if shape.rank is not None else None
        if got is not None:
            for g, want in zip(got, tail):
                if want is not None and g is not None and g != want:
                    raise ValueError(f"{name} must have trailing shape {list(tail)}, got {shape}")
    if tf.executing_eagerly() and not bool(tf.reduce_all(tf.math.is_finite(x))):
        raise ValueError(f"{name} contains NaN or Inf values")
    return x


def _sections_product(cos_w):
    """prod_i (1 - 2 cos(w_i) z^-1 + z^-2): cos_w [..., m] -> coefficients [..., 2 m + 1]."""
    m = cos_w.shape[-1]
    lead = tf.shape(cos_w)[:-1]
    poly = tf.ones(tf.concat([lead, [1]], 0), cos_w.dtype)
    rank = cos_w.shape.rank
    for i in range(m):  # fixed LPC_ORDER / 2 sections, not a loop over data
        c = -2.0 * cos_w[..., i:i + 1]
        pad = lambda t, left, right: tf.pad(t, [[0, 0]] * (rank - 1) + [[left, right]])
        poly = pad(poly, 0, 2) + c * pad(poly, 1, 1) + pad(poly, 2, 0)
    return poly


def repair_lsf_tf(lsf, min_gap: float = C.LSF_MIN_GAP):
    """`lpc.repair_lsf` in TensorFlow (differentiable almost everywhere): sort, push each value up
    to its lower neighbour + min_gap, clip to pi - (16 - i) min_gap. [..., 16] -> [..., 16];
    bit-identical to the numpy version on float32 input (same operations in the same order)."""
    lsf = tf.sort(lsf, axis=-1)
    cols = tf.unstack(lsf, axis=-1)
    prev = tf.zeros_like(cols[0])
    out = []
    for c in cols:
        prev = tf.maximum(c, prev + min_gap)
        out.append(prev)
    return tf.minimum(tf.stack(out, axis=-1), tf.constant(lsf_ceiling(min_gap, len(cols)), lsf.dtype))


def lsf_to_lpc_tf(lsf):
    """LSFs to LPC coefficients, differentiable (products of second-order sections).

    The polynomial products run in float64 (the coefficients of a 16th-order A(z) lose ~1e-4 to
    float32 cancellation otherwise); the result is cast to float32.

    Args:
      lsf: [..., LPC_ORDER] radians; lsf[..., 0::2] are roots of P, lsf[..., 1::2] of Q.
    Returns:
      a [..., LPC_ORDER + 1] float32 with a[..., 0] == 1.
    """
    lsf = tf.cast(_as_tensor(lsf, "lsf", tail=(_P,)), tf.float64)
    rank = lsf.shape.rank
    p_def = _sections_product(tf.cos(lsf[..., 0::2]))
    q_def = _sections_product(tf.cos(lsf[..., 1::2]))
    pad = lambda t, left, right: tf.pad(t, [[0, 0]] * (rank - 1) + [[left, right]])
    p_full = pad(p_def, 0, 1) + pad(p_def, 1, 0)  # P = P' (1 + z^-1)
    q_full = pad(q_def, 0, 1) - pad(q_def, 1, 0)  # Q = Q' (1 - z^-1)
    return tf.cast(0.5 * (p_full + q_full)[..., :_P + 1], tf.float32)


def _subframe_weights():
    return tf.constant((np.arange(C.NUM_SUBFRAMES) + 1.0) / C.NUM_SUBFRAMES, tf.float32)


def subframe_lsf_tf(lsf_prev, lsf_cur):
    """Interpolated LSFs of one hop's sub-frames: prev + (j + 1) / NUM_SUBFRAMES * (cur - prev).

    Args:
      lsf_prev, lsf_cur: [..., LPC_ORDER] (same shape).
    Returns:
      [..., NUM_SUBFRAMES, LPC_ORDER] float32.
    """
    lsf_prev = _as_tensor(lsf_prev, "lsf_prev", tail=(_P,))
    lsf_cur = _as_tensor(lsf_cur, "lsf_cur", tail=(_P,))
    if not lsf_prev.shape.is_compatible_with(lsf_cur.shape):
        raise ValueError(f"lsf_prev {lsf_prev.shape} and lsf_cur {lsf_cur.shape} must match")
    w = _subframe_weights()[:, None]
    return lsf_prev[..., None, :] + w * (lsf_cur - lsf_prev)[..., None, :]


def _sample_to_filter_index():
    """[FRAME_SIZE] index into the 5 filters of a codec frame (4 sub-frames of hop t, then the
    first sub-frame of hop t + 1 for the last OVERLAP samples)."""
    idx = np.concatenate([np.repeat(np.arange(C.NUM_SUBFRAMES), C.SUBFRAME_SIZE),
                          np.full(C.OVERLAP, C.NUM_SUBFRAMES)])
    return tf.constant(idx, tf.int32)


def per_sample_filters_tf(lsf):
    """The filter in force at each sample of a codec frame.

    Args:
      lsf: [B, 3, LPC_ORDER] LSFs of hops t-1, t, t+1.
    Returns:
      a [B, FRAME_SIZE, LPC_ORDER + 1] float32: samples [0, HOP_SIZE) use hop t's sub-frames
      (interpolated between lsf[:, 0] and lsf[:, 1]); samples [HOP_SIZE, FRAME_SIZE) use hop
      t+1's first sub-frame (lsf[:, 1] + (lsf[:, 2] - lsf[:, 1]) / NUM_SUBFRAMES).
    """
    lsf = _as_tensor(lsf, "lsf", rank=3, tail=(3, _P))
    cur = subframe_lsf_tf(lsf[:, 0], lsf[:, 1])  # [B, 4, P]
    nxt = lsf[:, 1] + (lsf[:, 2] - lsf[:, 1]) / C.NUM_SUBFRAMES  # [B, P]
    a = lsf_to_lpc_tf(tf.concat([cur, nxt[:, None]], axis=1))  # [B, 5, P + 1]
    return tf.gather(a, _sample_to_filter_index(), axis=1)


def residual_tf(x, a):
    """Time-varying FIR residual e[n] = sum_k a[n, k] x[n - k] with LPC_ORDER history samples.

    Args:
      x: [B, LPC_ORDER + N] signal: LPC_ORDER history samples, then the N samples to filter.
      a: [B, N, LPC_ORDER + 1] filter per output sample.
    Returns:
      e [B, N] float32.
    """
    x = _as_tensor(x, "x", rank=2)
    a = _as_tensor(a, "a", rank=3, tail=(_P + 1,))
    n_x, n_a = x.shape[1], a.shape[1]
    if n_x is not None and n_a is not None and n_x != n_a + _P:
        raise ValueError(f"x must have {_P} + N samples for a with N = {n_a}, got {n_x}")
    frames = tf.signal.frame(x, _P + 1, 1, axis=-1)  # [B, N, P + 1]: x[n .. n + P]
    return tf.reduce_sum(a * tf.reverse(frames, axis=[-1]), axis=-1)


def synthesis_error_tf(err, a):
    """The error passed through 1/A(z) from zero state, by FFT with a truncated response.

    Uses n_fft = the power of two >= 2 N: Y = FFT(err) / FFT(a), keep the first N samples. This
    is exact except for the impulse response tail beyond n_fft - N samples (time-aliased), which
    is negligible for the damped responses of lag-windowed, gap-repaired LSF filters.

    Args:
      err: [B, N] residual-domain error.
      a: [B, LPC_ORDER + 1] one filter per example.
    Returns:
      [B, N] float32.
    """
    err = _as_tensor(err, "err", rank=2)
    a = _as_tensor(a, "a", rank=2, tail=(_P + 1,))
    n = err.shape[1]
    if n is None:
        raise ValueError("err must have a static length N")
    n_fft = int(2 ** int(np.ceil(np.log2(max(2 * n, _P + 1)))))
    spec = tf.signal.rfft(err, [n_fft]) / tf.signal.rfft(a, [n_fft])
    return tf.signal.irfft(spec, [n_fft])[:, :n]


def pitch_synthesis_tf(err, lag, gain, iterations: int = 8):
    """The error through the pitch synthesis filter y[n] = err[n] + b y[n - T] (zero history),
    with lag T and gain b per sample (T = 0: not predicted), as the decoder's
    `lpc.ltp.LongTermPredictor.synthesis_filter` shapes the cascade's noise.

    Fixed-point iterations y <- err + b y[n - T]: the k-th one is exact for every sample whose
    chain n, n - T, ... reaches the frame start within k steps (all of a 512-sample frame for
    lags >= 512 / k); beyond, the truncated terms carry b^(k+1) <= 0.34 at k = 8, b <= 0.875.

    Args:
      err: [B, N] residual-domain error; lag: int [B, N]; gain: [B, N].
    Returns:
      [B, N] float32.
    """
    err = _as_tensor(err, "err", rank=2)
    lag = tf.cast(lag, tf.int32)
    gain = tf.cast(gain, err.dtype)
    src = tf.range(tf.shape(err)[1])[None, :] - lag
    gain = tf.where((lag > 0) & (src >= 0), gain, 0.0)
    src = tf.maximum(src, 0)
    y = err
    for _ in range(int(iterations)):
        y = err + gain * tf.gather(y, src, batch_dims=1)
    return y
