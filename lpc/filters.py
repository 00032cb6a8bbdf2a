"""Switched time-varying LPC filters: residual e = A(z) x and synthesis x = e / A(z) (numpy).

A(z) is switched every SUBFRAME_SIZE samples (NUM_SUBFRAMES sub-frames per HOP_SIZE hop). The
FIR keeps the last LPC_ORDER input samples as history, the IIR the last LPC_ORDER output
samples (direct form), so `synthesis` inverts `residual` exactly and chunked processing with the
carried state equals whole-signal processing (docs/DESIGN.md, "Signal path").
"""

import importlib.util
import os
import warnings

import numpy as np
import scipy.signal

import constants as C
from lpc._validate import as_float_array, check_state

__all__ = ["residual", "synthesis", "lfilter_with_state", "kernels", "compiled", "KERNELS"]

_P = C.LPC_ORDER

try:   # scipy's compiled direct-form filter: `lfilter` minus ~20 us of argument handling per call
    from scipy.signal._sigtools import _linear_filter as _core_lfilter
except ImportError:  # pragma: no cover - a scipy without it: the public function (same numbers)
    _core_lfilter = None


KERNELS = ("numba", "numpy")
_KERNELS_ENV = "CQ_CODEC_KERNELS"


def kernels() -> str:
    """The implementation of the decoder's recursive filters (LPC synthesis, pitch synthesis, the
    postfilter's formant filter): `$CQ_CODEC_KERNELS`, else "numba" where numba can be imported
    (`lpc._kernels`: compiled loops, 3-8x faster, the same outputs to float64 rounding), else
    "numpy" (scipy per sub-frame, the reference). Neither changes a code or a byte."""
    name = os.environ.get(_KERNELS_ENV, "").strip().lower()
    if not name:
        return "numba" if _numba_available() else "numpy"
    if name not in KERNELS:
        raise ValueError(f"${_KERNELS_ENV} must be one of {', '.join(KERNELS)}; got {name!r}")
    if name == "numba" and not _numba_available():
        raise ValueError(f"${_KERNELS_ENV}=numba, but numba cannot be imported or the compiled filters do not load")
    return name


def compiled() -> bool:
    """Whether `kernels()` is "numba"."""
    return kernels() == "numba"


_NUMBA = []


def _numba_available() -> bool:
    """Whether the kernels load: numba installed, and `lpc._kernels` importable (numba refuses
    to define cached functions where it finds no writable cache directory); checked once, and a
    failure other than a missing numba is reported as a warning (the scipy path then runs)."""
    if not _NUMBA:
        ok = importlib.util.find_spec("numba") is not None
        if ok:
            try:
                from lpc import _kernels  # noqa: F401
            except Exception as err:   # noqa: BLE001 - any failure to load means: use the reference
                warnings.warn(f"lpc: the compiled filters did not load ({type(err).__name__}: {err}); "
                              "using the scipy reference (set CQ_CODEC_KERNELS=numpy to silence this)")
                ok = False
        _NUMBA.append(ok)
    return _NUMBA[0]


def lfilter_with_state(b, a, x, zi):
    """`scipy.signal.lfilter(b, a, x, zi=zi)` for 1-D float64 arrays with a[0] == 1 (the
    switched filters call it once per sub-frame, where the public function's argument checks
    cost twice the filtering): the same compiled routine, so the same numbers."""
    if _core_lfilter is not None:
        return _core_lfilter(b, a, x, -1, zi)
    return scipy.signal.lfilter(b, a, x, zi=zi)


def _check_inputs(sig, a_sub, name):
    sig = as_float_array(sig, name, 1, 1)
    a_sub = as_float_array(a_sub, "a_sub", 3, 3)
    if a_sub.shape[1:] != (C.NUM_SUBFRAMES, _P + 1):
        raise ValueError(f"a_sub must have shape [T, {C.NUM_SUBFRAMES}, {_P + 1}], "
                         f"got {a_sub.shape}")
    if not np.allclose(a_sub[..., 0], 1.0):
        raise ValueError("a_sub[..., 0] must be 1 (A(z) = 1 + sum_k a_k z^-k)")
    if len(sig) != a_sub.shape[0] * C.HOP_SIZE:
        raise ValueError(f"{name} must have T * {C.HOP_SIZE} = {a_sub.shape[0] * C.HOP_SIZE} "
                         f"samples for a_sub with T = {a_sub.shape[0]}, got {len(sig)}")
    return sig, a_sub.reshape(-1, _P + 1)


def residual(x, a_sub, state=None):
    """Prediction residual e[n] = sum_k a_k x[n - k] with A switched per sub-frame.

    Args:
      x: [T * HOP_SIZE] (pre-emphasised) signal.
      a_sub: [T, NUM_SUBFRAMES, LPC_ORDER + 1] filters (from `subframe_lpc`), a[..., 0] == 1.
      state: [LPC_ORDER] the previous call's last LPC_ORDER input samples, oldest first
        (None: zeros).
    Returns:
      (e [T * HOP_SIZE] float64, state [LPC_ORDER]).
    """
    x, a = _check_inputs(x, a_sub, "x")
    hist = check_state(state, _P, "state")
    padded = np.concatenate([hist, x])
    n_sub = a.shape[0]
    # Vectorised over all samples: one multiply-add per tap, coefficients per sub-frame.
    e = np.zeros((n_sub, C.SUBFRAME_SIZE))
    for k in range(_P + 1):
        seg = padded[_P - k:_P - k + len(x)].reshape(n_sub, C.SUBFRAME_SIZE)
        e += a[:, k:k + 1] * seg
    return e.reshape(-1), padded[-_P:].copy()


def synthesis(e, a_sub, state=None):
    """All-pole synthesis x[n] = e[n] - sum_{k>=1} a_k x[n - k] with A switched per sub-frame.

    The exact inverse of `residual` with the same `a_sub`. Computed by `lpc._kernels` or by scipy
    per sub-frame (`kernels()`); the two agree to float64 rounding.

    Args:
      e: [T * HOP_SIZE] residual.
      a_sub: [T, NUM_SUBFRAMES, LPC_ORDER + 1] filters, a[..., 0] == 1.
      state: [LPC_ORDER] the previous call's last LPC_ORDER output samples, oldest first
        (None: zeros).
    Returns:
      (x [T * HOP_SIZE] float64, state [LPC_ORDER]).
    """
    e, a = _check_inputs(e, a_sub, "e")
    hist = check_state(state, _P, "state")
    if compiled():
        from lpc import _kernels
        out = _kernels.lpc_synthesis(np.ascontiguousarray(e), np.ascontiguousarray(a), hist, C.SUBFRAME_SIZE)
        return out[_P:], out[-_P:].copy()
    out = np.empty(len(e) + _P)
    out[:_P] = hist
    sub = C.SUBFRAME_SIZE
    one = np.ones(1)
    a = np.ascontiguousarray(a, np.float64)
    e = np.ascontiguousarray(e, np.float64)
    correlate, lfilter = np.correlate, lfilter_with_state
    for s in range(a.shape[0]):
        start = _P + s * sub
        a_s = a[s]
        # Transposed-DF-II initial state reproducing the direct-form output history:
        # zi[m] = -sum_{j >= 0} a[m + 1 + j] * y[n - 1 - j]  (see scipy.signal.lfiltic).
        zi = -correlate(a_s[1:], out[start - _P:start][::-1], mode="full")[_P - 1:]
        out[start:start + sub] = lfilter(one, a_s, e[s * sub:(s + 1) * sub], zi)[0]
    return out[_P:], out[-_P:].copy()
