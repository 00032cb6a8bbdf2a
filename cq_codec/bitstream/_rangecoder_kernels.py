"""The numba kernels of `cq_codec.bitstream.rangecoder` (imported only when a compiled coder is made:
importing numba costs a process about 100 MB). Cached on disk by numba after the first compile."""

import numba
import numpy as np

PRECISION = 24
_U = numba.uint64


@numba.njit(cache=True, nogil=True)
def encode_kernel(symbols, cdf, contextual, state, out, n_out):
    """Encodes symbols [R, K]; state = [lower, range, inverted count, first inverted word];
    appends words to out from n_out; returns the new n_out (-1: out is full)."""
    rows, k_streams = symbols.shape
    shift_p = _U(PRECISION)
    w32 = _U(32)
    low_bound = _U(1) << w32
    lower, rng, n_inv, first_inv = state[0], state[1], np.int64(state[2]), state[3]
    for outer in range(k_streams if not contextual else rows):
        for inner in range(rows if not contextual else k_streams):
            i, k = (inner, outer) if not contextual else (outer, inner)
            s = symbols[i, k]
            ctx = 0
            if contextual and i > 0:
                ctx = symbols[i - 1, k] + 1
            left = cdf[k, ctx, s]
            prob = cdf[k, ctx, s + 1] - left
            scale = rng >> shift_p
            rng = scale * prob
            new_lower = lower + scale * left
            if n_inv > 0 and new_lower + rng > new_lower:
                if n_out + n_inv > out.shape[0]:
                    return -1
                if new_lower < lower:
                    out[n_out] = (first_inv + _U(1)) & _U(0xFFFFFFFF)
                    fill = _U(0)
                else:
                    out[n_out] = first_inv
                    fill = _U(0xFFFFFFFF)
                n_out += 1
                for _ in range(1, n_inv):
                    out[n_out] = fill
                    n_out += 1
                n_inv = 0
            lower = new_lower
            if rng < low_bound:
                rng = rng << w32
                lower_word = lower >> w32
                lower = lower << w32
                if n_inv > 0:
                    n_inv += 1
                elif lower + rng > lower:
                    if n_out >= out.shape[0]:
                        return -1
                    out[n_out] = lower_word
                    n_out += 1
                else:
                    n_inv = 1
                    first_inv = lower_word
    state[0], state[1], state[2], state[3] = lower, rng, _U(n_inv), first_inv
    return n_out

@numba.njit(cache=True, nogil=True)
def decode_kernel(words, cdf, contextual, rows, state, out):
    """Decodes rows [rows, K] into out; state = [lower, range, point, next word position].
    Returns -1, or the flat index of the first symbol whose quantile is out of range."""
    k_streams = cdf.shape[0]
    a_max = cdf.shape[2] - 1
    shift_p = _U(PRECISION)
    w32 = _U(32)
    low_bound = _U(1) << w32
    total = _U(1) << shift_p
    n_words = words.shape[0]
    lower, rng, point, pos = state[0], state[1], state[2], np.int64(state[3])
    for outer in range(k_streams if not contextual else rows):
        for inner in range(rows if not contextual else k_streams):
            i, k = (inner, outer) if not contextual else (outer, inner)
            ctx = 0
            if contextual and i > 0:
                ctx = out[i - 1, k] + 1
            scale = rng >> shift_p
            quantile = (point - lower) // scale
            if quantile >= total:
                state[0], state[1], state[2], state[3] = lower, rng, point, _U(pos)
                return outer * (rows if not contextual else k_streams) + inner
            lo, hi = 0, a_max          # cdf[lo] <= quantile < cdf[hi]
            while hi - lo > 1:
                mid = (lo + hi) >> 1
                if cdf[k, ctx, mid] <= quantile:
                    lo = mid
                else:
                    hi = mid
            left = cdf[k, ctx, lo]
            lower = lower + scale * left
            rng = scale * (cdf[k, ctx, lo + 1] - left)
            out[i, k] = lo
            if rng < low_bound:
                lower = lower << w32
                rng = rng << w32
                point = point << w32
                if pos < n_words:
                    point = point | _U(words[pos])
                    pos += 1
    state[0], state[1], state[2], state[3] = lower, rng, point, _U(pos)
    return -1
