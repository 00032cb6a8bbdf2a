"""Input checks shared by the numpy LPC functions: clear errors instead of silent NaNs."""

import numpy as np

__all__ = ["as_float_array", "check_shape_tail", "check_state"]


def as_float_array(x, name, min_ndim=1, max_ndim=None):
    """Returns `x` as a finite float64 array, or raises TypeError/ValueError naming `name`.

    Args:
      x: array-like of real numbers.
      name: argument name used in error messages.
      min_ndim / max_ndim: allowed number of dimensions.
    """
    arr = np.asarray(x)
    if arr.dtype == object or not (np.issubdtype(arr.dtype, np.floating)
                                   or np.issubdtype(arr.dtype, np.integer)):
        raise TypeError(f"{name} must be a real numeric array, got dtype {arr.dtype}")
    if arr.ndim < min_ndim or (max_ndim is not None and arr.ndim > max_ndim):
        want = f">= {min_ndim}" if max_ndim is None else (
            f"{min_ndim}" if min_ndim == max_ndim else f"{min_ndim}..{max_ndim}")
        raise ValueError(f"{name} must have {want} dimensions, got shape {arr.shape}")
    arr = arr.astype(np.float64, copy=False)
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} contains NaN or Inf values")
    return arr


def check_shape_tail(arr, tail, name):
    """Raises ValueError unless `arr.shape` ends with `tail` (a tuple of ints)."""
    if arr.shape[arr.ndim - len(tail):] != tuple(tail) or arr.ndim < len(tail):
        raise ValueError(f"{name} must have shape [..., {', '.join(map(str, tail))}], "
                         f"got {arr.shape}")


def check_state(state, size, name):
    """Returns a float64 state vector of `size` (zeros when None) or raises ValueError."""
    if state is None:
        return np.zeros(size)
    st = as_float_array(state, name, 1, 1)
    if st.shape != (size,):
        raise ValueError(f"{name} must have shape [{size}], got {st.shape}")
    return st
