"""Per-sub-frame gain of the residual, coded as side information (gain-shape coding).

Classic codecs scale their excitation per sub-frame (AMR-WB's and SILK's coded gains), so their
coding noise rises and falls with the signal. Without it, the cascade's fixed quantizer bins put
about the same absolute noise in every frame, which fills the quiet stretches (issue 14's oracle:
equal SNR per 10 ms frame alone gained +0.31 PESQ-WB). With `GainQuantizer`, each windowed
residual frame (in the model's scaled units, where the training residual has unit RMS) is cut
into `subframes` equal parts; each part's RMS is quantized on a log grid (`step_db` dB steps from
`floor_db` up, `levels` levels; parts below the floor take the floor, so silence is not blown up
to full scale), and the cascade codes the residual divided by it. The decoder multiplies the
cascade's output by the same quantized gains, so gain quantization adds no error of its own: it
only sets where the cascade's noise sits. The gain codes ([frames, subframes] int32) are entropy
coded in the `.nac` payload after the LSF codes (`cq_codec.bitstream.codec_stream`).

numpy for inference (deterministic: the same path on the same input gives the same codes), a
TensorFlow twin for training (codes may differ from numpy's at exact rounding ties only).
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

import constants as C

__all__ = ["GainQuantizer", "GAIN_SUBFRAMES"]

GAIN_SUBFRAMES = (1, 2, 4, 8, 16)      # divisors of the 512-sample frame allowed as sub-frame counts


class GainQuantizer:
    """Log-grid scalar quantizer of sub-frame RMS gains. No trainable state.

    Args:
      subframes: gains per 512-sample frame (one of GAIN_SUBFRAMES).
      floor_db: the lowest gain level, dB relative to unit RMS (the scaled residual's overall RMS).
      step_db: spacing of the levels in dB.
      levels: number of levels (the code alphabet); the top level is floor_db + (levels-1) step_db.
    """

    def __init__(self, subframes: int = 4, floor_db: float = -40.0, step_db: float = 3.0, levels: int = 21):
        if isinstance(subframes, bool) or subframes not in GAIN_SUBFRAMES:
            raise ValueError(f"gain subframes must be one of {GAIN_SUBFRAMES}; got {subframes!r}")
        if not step_db > 0:
            raise ValueError(f"gain step_db must be > 0; got {step_db}")
        if isinstance(levels, bool) or int(levels) != levels or not 2 <= levels <= 256:
            raise ValueError(f"gain levels must be an int in [2, 256]; got {levels!r}")
        if not np.isfinite(floor_db):
            raise ValueError(f"gain floor_db must be finite; got {floor_db}")
        self.subframes, self.floor_db, self.step_db, self.levels = int(subframes), float(floor_db), float(step_db), int(levels)
        self.length = C.FRAME_SIZE // self.subframes
        # The gain of each code, float32 (what both sides multiply and divide by).
        self.table = (10.0 ** ((self.floor_db + self.step_db * np.arange(self.levels)) / 20.0)).astype(np.float32)

    def get_config(self) -> dict:
        return {"subframes": self.subframes, "floor_db": self.floor_db, "step_db": self.step_db, "levels": self.levels}

    @property
    def alphabet_size(self) -> int:
        return self.levels

    # ------------------------------------------------------------------ numpy (inference)
    def encode_numpy(self, frames, scale: float = 1.0) -> np.ndarray:
        """Windowed residual frames [N, 512] (times `scale`: the model's residual scale) -> int32
        codes [N, subframes]."""
        f = np.asarray(frames, np.float64)
        if f.ndim != 2 or f.shape[1] != C.FRAME_SIZE:
            raise ValueError(f"gain encode expects frames [N, {C.FRAME_SIZE}]; got shape {f.shape}")
        power = np.mean((f * scale).reshape(len(f), self.subframes, self.length) ** 2, axis=-1)
        db = 10.0 * np.log10(np.maximum(power, 1e-30))
        return np.clip(np.rint((db - self.floor_db) / self.step_db), 0, self.levels - 1).astype(np.int32)

    def decode_numpy(self, codes) -> np.ndarray:
        """int32 codes [N, subframes] -> float32 gains [N, subframes] (refuses codes off the grid)."""
        c = np.asarray(codes)
        if c.ndim != 2 or c.shape[1] != self.subframes or not np.issubdtype(c.dtype, np.integer):
            raise ValueError(f"gain codes must be an int array [N, {self.subframes}]; got {c.dtype} {c.shape}")
        if c.size and (c.min() < 0 or c.max() >= self.levels):
            raise ValueError(f"gain codes outside 0..{self.levels - 1}")
        return self.table[c]

    def per_sample(self, gains) -> np.ndarray:
        """Gains [N, subframes] -> [N, 512] (each sub-frame's gain repeated over its samples)."""
        return np.repeat(np.asarray(gains, np.float32), self.length, axis=-1)

    # ------------------------------------------------------------------ TensorFlow (training)
    def quantize_tf(self, frames) -> tf.Tensor:
        """Scaled windowed residual frames [B, 512] -> per-sample quantized gains [B, 512]
        (constant: no gradient flows through the gain)."""
        f = tf.stop_gradient(tf.cast(frames, tf.float32))
        power = tf.reduce_mean(tf.square(tf.reshape(f, [-1, self.subframes, self.length])), axis=-1)
        db = 10.0 * tf.math.log(tf.maximum(power, 1e-30)) / tf.math.log(10.0)
        codes = tf.clip_by_value(tf.round((db - self.floor_db) / self.step_db), 0.0, self.levels - 1.0)
        gains = tf.gather(tf.constant(self.table), tf.cast(codes, tf.int32))
        return tf.repeat(gains, self.length, axis=-1)
