"""LPC front end of cq-codec: numpy reference DSP and differentiable TensorFlow ops.

See docs/DESIGN.md, section "lpc/". The numpy functions compute in float64; `lpc.tf_ops`
(float32, batched) is imported lazily so numpy-only users do not load TensorFlow.
"""

from lpc.analysis import (analysis_window, analyze, autocorrelation, lag_window, levinson,
                          lpc_from_frames, subframe_lpc)
from lpc.dsp import (deemphasis, frame_signal, frame_window, highpass, highpass_coefficients,
                     overlap_add, preemphasis)
from lpc.filters import residual, synthesis
from lpc.lsf import lpc_to_lsf, lsf_to_lpc, repair_lsf

_TF_NAMES = ("repair_lsf_tf", "lsf_to_lpc_tf", "subframe_lsf_tf", "per_sample_filters_tf", "residual_tf",
             "synthesis_error_tf")

__all__ = [
    "analysis_window", "analyze", "autocorrelation", "lag_window", "levinson",
    "lpc_from_frames", "subframe_lpc", "deemphasis", "frame_signal", "frame_window", "highpass",
    "highpass_coefficients", "overlap_add", "preemphasis", "residual", "synthesis",
    "lpc_to_lsf", "lsf_to_lpc", "repair_lsf", *_TF_NAMES,
]


def __getattr__(name):
    """Loads the TensorFlow ops on first use (PEP 562)."""
    if name in _TF_NAMES:
        from lpc import tf_ops
        return getattr(tf_ops, name)
    raise AttributeError(f"module 'lpc' has no attribute {name!r}")
