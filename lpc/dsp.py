"""Streaming pre-processing (high-pass, pre/de-emphasis) and codec framing (numpy, float64).

Every filter takes and returns a `state` so a signal can be processed chunk by chunk and give
exactly the result of processing it whole (see docs/DESIGN.md, "Signal path").
"""

import functools

import numpy as np
import scipy.signal

import constants as C
from lpc._validate import as_float_array, check_state

__all__ = [
    "highpass", "preemphasis", "deemphasis", "frame_window", "frame_signal", "overlap_add",
    "highpass_coefficients",
]


@functools.lru_cache(maxsize=None)
def highpass_coefficients():
    """(b, a) of the 2nd-order Butterworth high-pass at constants.HIGHPASS_CUTOFF_HZ."""
    b, a = scipy.signal.butter(2, C.HIGHPASS_CUTOFF_HZ, btype="highpass", fs=C.SAMPLE_RATE)
    b.setflags(write=False)
    a.setflags(write=False)
    return b, a


def highpass(x, state=None):
    """2nd-order Butterworth high-pass (cut-off constants.HIGHPASS_CUTOFF_HZ), streaming.

    Args:
      x: [N] signal.
      state: [2] filter state returned by the previous call (None: zero initial state).
    Returns:
      (y [N] float64, state [2]): the filtered signal and the state for the next call
      (scipy.signal.lfilter's transposed direct-form II state).
    """
    x = as_float_array(x, "x", 1, 1)
    b, a = highpass_coefficients()
    zi = check_state(state, 2, "state")
    y, zf = scipy.signal.lfilter(b, a, x, zi=zi)
    return y, zf


def preemphasis(x, state=None):
    """Pre-emphasis y[n] = x[n] - PREEMPHASIS * x[n-1], streaming.

    Args:
      x: [N] signal.
      state: [1] the last input sample of the previous call (None: 0).
    Returns:
      (y [N] float64, state [1]).
    """
    x = as_float_array(x, "x", 1, 1)
    prev = check_state(state, 1, "state")
    zi = -C.PREEMPHASIS * prev
    y, _ = scipy.signal.lfilter([1.0, -C.PREEMPHASIS], [1.0], x, zi=zi)
    new_state = x[-1:].copy() if len(x) else prev.copy()
    return y, new_state


def deemphasis(y, state=None):
    """De-emphasis x[n] = y[n] + PREEMPHASIS * x[n-1] (inverse of `preemphasis`), streaming.

    Args:
      y: [N] pre-emphasised signal.
      state: [1] the last output sample of the previous call (None: 0).
    Returns:
      (x [N] float64, state [1]).
    """
    y = as_float_array(y, "y", 1, 1)
    prev = check_state(state, 1, "state")
    zi = C.PREEMPHASIS * prev
    x, _ = scipy.signal.lfilter([1.0], [1.0, -C.PREEMPHASIS], y, zi=zi)
    new_state = x[-1:].copy() if len(x) else prev.copy()
    return x, new_state


@functools.lru_cache(maxsize=None)
def _frame_window():
    n = np.arange(C.OVERLAP)
    rise = np.sin(0.5 * np.pi * (n + 0.5) / C.OVERLAP) ** 2
    w = np.ones(C.FRAME_SIZE)
    w[:C.OVERLAP] = rise
    w[-C.OVERLAP:] = rise[::-1]  # cos^2 half: rise[::-1][n] = 1 - rise[n]
    w.setflags(write=False)
    return w


def frame_window():
    """[FRAME_SIZE] codec frame window: sin^2 rise over the first OVERLAP samples, flat, cos^2
    fall over the last OVERLAP. The fall of frame t and the rise of frame t+1 sum to one."""
    return _frame_window().copy()


def frame_signal(x, num_frames):
    """Cuts `x` into windowed codec frames.

    Frame t covers samples [t * HOP_SIZE, t * HOP_SIZE + FRAME_SIZE) (zero padded past the end)
    and is multiplied by `frame_window()`.

    Args:
      x: [N] signal.
      num_frames: number of frames T (>= 1).
    Returns:
      [T, FRAME_SIZE] float64 windowed frames.
    """
    x = as_float_array(x, "x", 1, 1)
    if int(num_frames) != num_frames or num_frames < 1:
        raise ValueError(f"num_frames must be a positive integer, got {num_frames!r}")
    num_frames = int(num_frames)
    total = (num_frames - 1) * C.HOP_SIZE + C.FRAME_SIZE
    padded = np.zeros(total)
    n = min(total, len(x))
    padded[:n] = x[:n]
    frames = np.lib.stride_tricks.sliding_window_view(padded, C.FRAME_SIZE)[::C.HOP_SIZE]
    return frames * _frame_window()


def overlap_add(frames):
    """Overlap-adds (already windowed) codec frames with hop HOP_SIZE.

    Args:
      frames: [T, FRAME_SIZE].
    Returns:
      [(T - 1) * HOP_SIZE + FRAME_SIZE] float64. For frames from `frame_signal(x, T)` this
      equals `x` on [OVERLAP, T * HOP_SIZE) (the complementary window edges sum to one).
    """
    frames = as_float_array(frames, "frames", 2, 2)
    if frames.shape[1] != C.FRAME_SIZE or frames.shape[0] < 1:
        raise ValueError(f"frames must have shape [T >= 1, {C.FRAME_SIZE}], got {frames.shape}")
    num = frames.shape[0]
    out = np.zeros((num + 1) * C.HOP_SIZE)
    # Flat parts [0, HOP) of every frame tile the output; the overlap tails add on top.
    out[:num * C.HOP_SIZE] = frames[:, :C.HOP_SIZE].reshape(-1)
    tails = out[C.HOP_SIZE:].reshape(num, C.HOP_SIZE)[:, :C.OVERLAP]
    tails += frames[:, C.HOP_SIZE:]
    return out[:(num - 1) * C.HOP_SIZE + C.FRAME_SIZE]
