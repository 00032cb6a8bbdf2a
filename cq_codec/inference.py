"""Whole-utterance encoding and decoding with a trained `CQCodec` (hard quantization).

wav -> high-pass -> pre-emphasis -> / std -> LSFs per hop -> quantized LSF codes -> residual with
the quantized, interpolated A(z) -> windowed 512-sample frames -> cascade codes; and back:
codes -> frames -> overlap-add -> 1/A(z) -> de-emphasis -> * std. The encoder and the decoder
rebuild A(z) from the same LSF codes with the same functions, so 1/A(z) inverts A(z) exactly.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import tensorflow as tf

import constants as C
import lpc

__all__ = ["Codes", "encode", "decode", "preprocess", "num_hops_for"]


@dataclasses.dataclass
class Codes:
    """What the bitstream carries for one utterance.

    lsf: int32 [T, 16] LSF codes, one row per hop; modules: list (one per module used) of int32
    [T, positions, S]; num_samples: the length of the original signal at 16 kHz.
    """

    lsf: np.ndarray
    modules: list
    num_samples: int


def num_hops_for(num_samples: int) -> int:
    return max(1, -(-int(num_samples) // C.HOP_SIZE))


def preprocess(wav: np.ndarray, signal_std: float) -> np.ndarray:
    """16 kHz mono float wav [N] -> normalised pre-emphasised signal [N] (what the model sees)."""
    y, _ = lpc.highpass(np.asarray(wav, np.float64))
    y, _ = lpc.preemphasis(y)
    return y / signal_std


def _filters_from_lsf_codes(model, lsf_codes: np.ndarray) -> np.ndarray:
    lsf_q = model.lsf_quantizer.decode(tf.constant(lsf_codes[None], tf.int32))
    from cq_codec.models.cq import repair_lsf_tf
    lsf_q = repair_lsf_tf(lsf_q)[0].numpy().astype(np.float64)
    return lpc.subframe_lpc(lsf_q)


def encode(model, wav: np.ndarray, num_active: int | None = None, batch_frames: int = 256) -> Codes:
    """Float wav [N] at 16 kHz -> Codes (hard codes of the first `num_active` modules)."""
    wav = np.asarray(wav, np.float64)
    if wav.ndim != 1 or wav.size == 0:
        raise ValueError(f"encode expects a non-empty 1-D 16 kHz signal; got shape {wav.shape}")
    if not np.all(np.isfinite(wav)):
        raise ValueError("encode: the signal contains NaN or infinite samples")
    n = model.num_active if num_active is None else int(num_active)
    if not 1 <= n <= len(model.codec_modules):
        raise ValueError(f"num_active must be in 1..{len(model.codec_modules)}; got {num_active}")
    hops = num_hops_for(wav.size)
    x = np.zeros(hops * C.HOP_SIZE)
    x[: wav.size] = preprocess(wav, model.signal_std)
    lsf = lpc.analyze(x, num_hops=hops)
    _, lsf_out = model.quantize_lsf(tf.constant(lsf[None], tf.float32), training=False)
    lsf_codes = lsf_out.codes[0].numpy().astype(np.int32)
    e, _ = lpc.residual(x, _filters_from_lsf_codes(model, lsf_codes))
    frames = lpc.frame_signal(e, hops).astype(np.float32)
    per_module = [[] for _ in range(n)]
    for s in range(0, hops, batch_frames):
        for i, c in enumerate(model.encode_frames(frames[s: s + batch_frames], num_active=n)):
            per_module[i].append(c.numpy().astype(np.int32))
    return Codes(lsf=lsf_codes, modules=[np.concatenate(p) for p in per_module], num_samples=int(wav.size))


def decode(model, codes: Codes, batch_frames: int = 256) -> np.ndarray:
    """Codes -> float32 wav [num_samples] at 16 kHz (any prefix of the modules)."""
    hops = codes.lsf.shape[0]
    a_sub = _filters_from_lsf_codes(model, codes.lsf)
    frames = []
    for s in range(0, hops, batch_frames):
        chunk = [tf.constant(c[s: s + batch_frames]) for c in codes.modules]
        frames.append(model.decode_frames(chunk).numpy())
    e_hat = lpc.overlap_add(np.concatenate(frames).astype(np.float64))[: hops * C.HOP_SIZE]
    y, _ = lpc.synthesis(e_hat, a_sub)
    y, _ = lpc.deemphasis(y * model.signal_std)
    return y[: codes.num_samples].astype(np.float32)
