"""Compiled (numba) loops of the decoder's recursive filters: the switched all-pole LPC synthesis,
the long-term (pitch) synthesis and the postfilter's pole-zero formant filter.

Each is the direct-form recursion the numpy / scipy reference in `lpc.filters`, `lpc.ltp` and
`lpc.postfilter` computes sub-frame by sub-frame (one scipy call per sub-frame there, so those
loops were Python-call bound: ~8 us a sub-frame). The pitch synthesis does the same operations in
the same order as its reference (bit-identical); the LPC synthesis and the formant filter sum the
taps in direct form where scipy's transposed form keeps a state, so they agree with the reference
to float64 rounding (~1e-14 of the signal's peak; tests/test_kernels.py). Only the decoder runs
them, so no code and no byte of a `.nac` file depends on them.

Imported only when `lpc.filters.compiled()` is true (importing numba costs a process about 100 MB);
numba caches the compiled kernels on disk after the first run.
"""

import numba
import numpy as np

import constants as C

_P = C.LPC_ORDER   # a compile-time constant: numba unrolls the tap loops


@numba.njit(cache=True, nogil=True)
def lpc_synthesis(e, a, hist, sub):
    """x[n] = e[n] - sum_{k>=1} a[s, k] x[n - k], a switched every `sub` samples (row s of a
    [S, P + 1]); `hist`: the last P outputs before, oldest first. -> [P + len(e)] (history first)."""
    p = _P
    out = np.empty(e.shape[0] + p)
    out[:p] = hist
    for s in range(a.shape[0]):
        for i in range(sub):
            n = p + s * sub + i
            acc = e[s * sub + i]
            for k in range(p, 0, -1):   # the newest output last: the loop-carried path is one tap
                acc -= a[s, k] * out[n - k]
            out[n] = acc
    return out


@numba.njit(cache=True, nogil=True)
def pitch_synthesis(y, e2, starts, lags, gains, sub, offset):
    """In place, for each predicted sub-frame j: y[q] = e2[q - offset] + gains[j] * y[q - lags[j]]
    for q in [starts[j], starts[j] + sub), in increasing q (y's first `offset` samples are the
    history; elsewhere y already holds e2)."""
    for j in range(starts.shape[0]):
        lag, b = lags[j], gains[j]
        for q in range(starts[j], starts[j] + sub):
            y[q] = e2[q - offset] + b * y[q - lag]


@numba.njit(cache=True, nogil=True)
def pole_zero(xin, yhist, b, d, hop):
    """y[n] = sum_k b[t, k] x[n - k] - sum_{k>=1} d[t, k] y[n - k], (b, d) switched every `hop`
    samples (row t); `xin`: the last P inputs before, then the input; `yhist`: the last P outputs
    before. -> [P + len(input)] outputs, history first."""
    p = _P
    n_in = xin.shape[0] - p
    out = np.empty(n_in + p)
    out[:p] = yhist
    for t in range(b.shape[0]):
        for i in range(hop):
            n = p + t * hop + i
            acc = 0.0
            for k in range(p, -1, -1):
                acc += b[t, k] * xin[n - k]
            for k in range(p, 0, -1):   # the newest output last: the loop-carried path is one tap
                acc -= d[t, k] * out[n - k]
            out[n] = acc
    return out
