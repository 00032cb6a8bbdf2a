"""Analytic FLOPs of a CQ codec (convolutions only; FLOPs = 2 x multiply-adds, forward pass)."""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

import constants as C

__all__ = ["count_flops"]


def count_flops(model, num_active: int | None = None) -> float:
    """Forward FLOPs per 512-sample frame of the codec's first `num_active` modules (default: the
    model's `num_active`; convolutions only),
    from one call that records each Conv1D's output length. Times `C.FRAMES_PER_SECOND` gives
    FLOPs per second of audio."""
    records = []
    originals = {}
    for cls in (keras.layers.Conv1D, keras.layers.DepthwiseConv1D):
        originals[cls] = cls.call

        def wrapped(self, inputs, _orig=originals[cls], _cls=cls):
            out = _orig(self, inputs)
            k = self.kernel_size[0]
            cin = inputs.shape[-1]
            if _cls is keras.layers.DepthwiseConv1D:
                macs = out.shape[1] * k * cin
            else:
                macs = out.shape[1] * k * cin * self.filters
            records.append(macs)
            return out

        cls.call = wrapped
    try:
        batch = {"x": tf.zeros([1, C.LPC_ORDER + C.FRAME_SIZE]), "lsf": tf.constant(
            np.tile(np.linspace(0.2, 3.0, C.LPC_ORDER, dtype=np.float32), (1, 3, 1)))}
        model.forward(batch, training=False, num_active=num_active)
    finally:
        for cls, fn in originals.items():
            cls.call = fn
    return 2.0 * sum(records)
