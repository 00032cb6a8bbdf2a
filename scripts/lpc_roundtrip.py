"""LPC analysis -> synthesis round trip over wav files: reconstruction SNR and prediction gain.

Runs the numpy reference chain of docs/DESIGN.md on every file:
high-pass -> pre-emphasis -> analyze -> subframe_lpc -> residual -> synthesis -> de-emphasis,
and prints, per file and over all files (energy-weighted):
- the round-trip SNR (dB) of the output against the high-passed input (float rounding only);
- the prediction gain (dB) of the residual: energy of the pre-emphasised signal / residual.

Usage:
  python scripts/lpc_roundtrip.py tests/fixtures/real_speech.wav
  python scripts/lpc_roundtrip.py --data_dir /path/to/wavs
"""

import glob
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
import soundfile as sf  # noqa: E402
import soxr  # noqa: E402
from absl import app, flags  # noqa: E402

import constants as C  # noqa: E402
import lpc  # noqa: E402

__all__ = ["roundtrip"]

FLAGS = flags.FLAGS
flags.DEFINE_string("data_dir", None, "Folder searched recursively for *.wav files.")
flags.DEFINE_float("lsf_step", 0.0, "If > 0, quantize LSFs to this grid (rad, then repair_lsf) "
                   "on both sides, as the codec does.")


def roundtrip(x, lsf_step=0.0):
    """Runs the chain on a 16 kHz signal x [N].

    Returns:
      dict of energies: signal (high-passed), error (reconstruction), pre (pre-emphasised),
      residual; and the number of samples used (a whole number of hops).
    """
    hops = len(x) // C.HOP_SIZE
    if hops < 1:
        raise ValueError(f"signal too short: {len(x)} samples < one hop ({C.HOP_SIZE})")
    x = x[:hops * C.HOP_SIZE]
    hp, _ = lpc.highpass(x)
    pre, _ = lpc.preemphasis(hp)
    lsf = lpc.analyze(pre, hops)
    if lsf_step > 0:
        lsf = lpc.repair_lsf(np.round(lsf / lsf_step) * lsf_step)
    a_sub = lpc.subframe_lpc(lsf)
    e, _ = lpc.residual(pre, a_sub)
    y, _ = lpc.synthesis(e, a_sub)
    out, _ = lpc.deemphasis(y)
    return dict(signal=np.sum(hp ** 2), error=np.sum((out - hp) ** 2), pre=np.sum(pre ** 2),
                residual=np.sum(e ** 2), samples=len(x))


def _db(num, den):
    return 10.0 * np.log10(num / den) if den > 0 else float("inf")


def _load(path):
    x, sr = sf.read(path, dtype="float64", always_2d=True)
    x = x.mean(axis=1)
    if sr != C.SAMPLE_RATE:
        x = soxr.resample(x, sr, C.SAMPLE_RATE)
    return x


def main(argv):
    paths = list(argv[1:])
    if FLAGS.data_dir:
        paths += sorted(glob.glob(os.path.join(FLAGS.data_dir, "**", "*.wav"), recursive=True))
    if not paths:
        raise app.UsageError("give wav paths or --data_dir")
    total = dict(signal=0.0, error=0.0, pre=0.0, residual=0.0, samples=0)
    start = time.time()
    for path in paths:
        res = roundtrip(_load(path), FLAGS.lsf_step)
        for k in total:
            total[k] += res[k]
        print(f"{path}: {res['samples'] / C.SAMPLE_RATE:.2f} s  round-trip SNR "
              f"{_db(res['signal'], res['error']):.1f} dB  prediction gain "
              f"{_db(res['pre'], res['residual']):.2f} dB")
    seconds = total["samples"] / C.SAMPLE_RATE
    print(f"ALL ({len(paths)} files, {seconds:.1f} s audio, {time.time() - start:.2f} s wall): "
          f"round-trip SNR {_db(total['signal'], total['error']):.1f} dB, prediction gain "
          f"{_db(total['pre'], total['residual']):.2f} dB")


if __name__ == "__main__":
    app.run(main)
