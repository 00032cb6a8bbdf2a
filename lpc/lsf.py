"""LPC <-> line spectral frequencies (numpy, float64, vectorised over leading axes).

With A(z) of even order p, P(z) = A(z) + z^-(p+1) A(1/z) and Q(z) = A(z) - z^-(p+1) A(1/z)
have their roots on the unit circle, interlaced, when A is minimum phase (Itakura 1975; Soong &
Juang, ICASSP 1984). P has a trivial root at z = -1 and Q at z = +1; removing them leaves two
symmetric polynomials of degree p, whose p/2 conjugate root pairs give the LSFs. Writing a
symmetric polynomial on the unit circle as a Chebyshev series in x = cos(w) (Kabal & Ramachandran,
IEEE TASSP 1986) turns root finding into the real roots of a degree p/2 polynomial, found here
as eigenvalues of its colleague matrix for all frames at once.
"""

import functools

import numpy as np

import constants as C
from lpc._validate import as_float_array, check_shape_tail

__all__ = ["lpc_to_lsf", "lsf_to_lpc", "repair_lsf", "lsf_ceiling"]

_P = C.LPC_ORDER
_H = _P // 2


@functools.lru_cache(maxsize=None)
def _colleague_base(n):
    """Constant part of the (scaled) colleague matrix of a degree-n Chebyshev series, plus the
    column scale; as in numpy.polynomial.chebyshev.chebcompanion."""
    mat = np.zeros((n, n))
    scl = np.array([1.0] + [np.sqrt(0.5)] * (n - 1))
    top = mat.reshape(-1)[1::n + 1]
    bot = mat.reshape(-1)[n::n + 1]
    top[0] = np.sqrt(0.5)
    top[1:] = 0.5
    bot[...] = top
    return mat, scl


def _cheb_roots(t):
    """Roots of Chebyshev series t [..., n + 1] (t[..., n] != 0): complex [..., n]."""
    n = t.shape[-1] - 1
    base, scl = _colleague_base(n)
    mats = np.broadcast_to(base, t.shape[:-1] + (n, n)).copy()
    mats[..., :, -1] -= (t[..., :-1] / t[..., -1:]) * (scl / scl[-1]) * 0.5
    return np.linalg.eigvals(mats)


def _symmetric_to_angles(c):
    """Angles in [0, pi] of the roots of symmetric polynomials c [..., p + 1]: [..., p / 2]."""
    # c(e^{jw}) e^{j p/2 w} = c[p/2] + 2 sum_k c[p/2 - k] cos(k w) = sum_k t_k T_k(cos w).
    t = np.concatenate([c[..., _H:_H + 1], 2.0 * c[..., _H - 1::-1]], axis=-1)
    x = _cheb_roots(t).real
    return np.arccos(np.clip(x, -1.0, 1.0))


def lpc_to_lsf(a, min_gap=C.LSF_MIN_GAP):
    """LPC coefficients to line spectral frequencies.

    Args:
      a: [..., LPC_ORDER + 1] with a[..., 0] == 1.
      min_gap: passed to `repair_lsf` (None: only sort, no repair). Repairing changes nothing
        for a minimum-phase A whose LSFs are already min_gap apart.
    Returns:
      lsf [..., LPC_ORDER] radians, increasing in (0, pi).
    """
    a = as_float_array(a, "a")
    check_shape_tail(a, (_P + 1,), "a")
    if not np.allclose(a[..., 0], 1.0):
        raise ValueError("a[..., 0] must be 1")
    ext = np.concatenate([a, np.zeros(a.shape[:-1] + (1,))], axis=-1)
    rev = ext[..., ::-1]
    p_full, q_full = ext + rev, ext - rev  # degree p + 1
    # Deflate the trivial roots: P / (1 + z^-1), Q / (1 - z^-1).
    p_def = np.empty(a.shape)
    q_def = np.empty(a.shape)
    p_def[..., 0] = p_full[..., 0]
    q_def[..., 0] = q_full[..., 0]
    for k in range(1, _P + 1):
        p_def[..., k] = p_full[..., k] - p_def[..., k - 1]
        q_def[..., k] = q_full[..., k] + q_def[..., k - 1]
    angles = np.concatenate([_symmetric_to_angles(p_def), _symmetric_to_angles(q_def)], -1)
    lsf = np.sort(angles, axis=-1)
    return lsf if min_gap is None else repair_lsf(lsf, min_gap)


def _sections_product(cos_w):
    """prod_i (1 - 2 cos(w_i) z^-1 + z^-2) for cos_w [..., m]: coefficients [..., 2 m + 1]."""
    poly = np.zeros(cos_w.shape[:-1] + (2 * cos_w.shape[-1] + 1,))
    poly[..., 0] = 1.0
    for i in range(cos_w.shape[-1]):
        deg = 2 * i  # current degree
        c = -2.0 * cos_w[..., i:i + 1]
        prev = poly[..., :deg + 1].copy()
        poly[..., 1:deg + 2] += c * prev
        poly[..., 2:deg + 3] += prev
    return poly


def lsf_to_lpc(lsf):
    """Line spectral frequencies to LPC coefficients.

    Args:
      lsf: [..., LPC_ORDER] radians (increasing in (0, pi) for a minimum-phase result);
        lsf[..., 0::2] are the roots of P, lsf[..., 1::2] those of Q.
    Returns:
      a [..., LPC_ORDER + 1] with a[..., 0] == 1.
    """
    lsf = as_float_array(lsf, "lsf")
    check_shape_tail(lsf, (_P,), "lsf")
    p_def = _sections_product(np.cos(lsf[..., 0::2]))
    q_def = _sections_product(np.cos(lsf[..., 1::2]))
    zero = np.zeros(lsf.shape[:-1] + (1,))
    p_full = np.concatenate([p_def, zero], -1) + np.concatenate([zero, p_def], -1)
    q_full = np.concatenate([q_def, zero], -1) - np.concatenate([zero, q_def], -1)
    return 0.5 * (p_full + q_full)[..., :_P + 1]


def lsf_ceiling(min_gap=C.LSF_MIN_GAP, n=_P):
    """[n] float64: the largest value LSF i may take, pi - (n - i) * min_gap (room for the
    min_gap steps above it)."""
    return np.pi - min_gap * np.arange(n, 0, -1)


def repair_lsf(lsf, min_gap=C.LSF_MIN_GAP):
    """Sorts LSFs and enforces min_gap between neighbours and to 0 and pi.

    One algorithm, twinned in TensorFlow by `lpc.tf_ops.repair_lsf_tf`: a forward pass pushes
    each value up to at least its lower neighbour + min_gap (the first to min_gap), then every
    value is clipped to its ceiling pi - (16 - i) min_gap. (The same result, in exact
    arithmetic, as a forward push-up followed by a backward push-down.) Values already min_gap
    apart and under their ceilings are unchanged.

    Computes in float32 for float32 input (operation for operation what `repair_lsf_tf` does,
    so the two agree bit for bit: the codec's decoder runs this one, training the graph's),
    otherwise in float64.

    Args:
      lsf: [..., LPC_ORDER] radians.
      min_gap: minimum distance (rad), 0 <= min_gap < pi / (LPC_ORDER + 1).
    Returns:
      [..., LPC_ORDER] (float32 or float64), increasing, in [min_gap, pi - min_gap].
    """
    dtype = np.float32 if np.asarray(lsf).dtype == np.float32 else np.float64
    lsf = as_float_array(lsf, "lsf")
    check_shape_tail(lsf, (_P,), "lsf")
    if not 0.0 <= min_gap < np.pi / (_P + 1):
        raise ValueError(f"min_gap must be in [0, pi / {_P + 1}), got {min_gap}")
    lsf = np.sort(lsf.astype(dtype), axis=-1)
    gap = dtype(min_gap)
    prev = np.zeros(lsf.shape[:-1], dtype)
    out = np.empty_like(lsf)
    for k in range(_P):
        prev = np.maximum(lsf[..., k], prev + gap)
        out[..., k] = prev
    return np.minimum(out, lsf_ceiling(min_gap).astype(dtype))
