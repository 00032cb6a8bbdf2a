#!/usr/bin/env python3
"""Decoder-side noise filling of the residual's high band: a study (issue 14), not a codec option.

The cascade, trained to minimise an error, outputs little where it cannot code: on held-out
voices the shipped model's decoded (gain-normalised) residual lacks 12-14 dB of the target's
energy above 4-5 kHz at one and two modules. The gain-shape stream tells the decoder each frame's
residual energy (the cascade codes the residual over its coded sub-frame RMS, so the frame it
should output has energy 512 / residual_scale^2), so a decoder can add noise for the missing
energy, band by band, before the gains, the pitch synthesis and 1/A(z) shape it (AMR-WB's high
band and Opus's folding work so). This script measures whether PESQ-WB / STOI / SI-SDR reward
it: each clip is compressed once per operating point, then decoded with each setting.

Usage: python scripts/noise_fill_study.py [--split val] [--max_clips 24] [--model path]
         [--settings "4000:0.3,4000:0.6"]   (start_hz:level pairs; the first row is no fill)
Result (docs/DESIGN.md "Noise filling"): every setting lowered PESQ-WB; not in the decoder.
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))   # this checkout's code

import numpy as np  # noqa: E402
from absl import app, flags  # noqa: E402

import constants as C  # noqa: E402
from lpc.dsp import frame_window  # noqa: E402

flags.DEFINE_string("split", "val", "which split's clips")
flags.DEFINE_integer("max_clips", 24, "clips, spread over the split's voices")
flags.DEFINE_string("data_dir", "data/many", "demo-corpus directory")
flags.DEFINE_string("model", None, "model.keras (default: the shipped model)")
flags.DEFINE_string("settings", "4000:0.3,4000:0.6,4000:1,3000:0.5,5000:0.6", "start_hz:level pairs")
flags.DEFINE_integer("seed", 1234, "split seed (as scripts/bitrate_scaling.py)")
FLAGS = flags.FLAGS


class NoiseFill:
    """Adds the missing energy of the high bands to decoded, gain-normalised residual frames.

    Args:
      start_hz: lowest frequency filled (bands of `band_hz` from here to 8 kHz).
      level: fraction of the expected band energy the fill restores (0 = off, 1 = all of it).
      band_hz: width of the bands the deficit is measured in.
      seed: the noise's seed (with each frame's index in the stream).
    """

    def __init__(self, start_hz: float = 4000.0, level: float = 0.5, band_hz: float = 500.0, seed: int = 20201):
        if not 0 <= start_hz < C.SAMPLE_RATE / 2:
            raise ValueError(f"start_hz must be in [0, {C.SAMPLE_RATE // 2}); got {start_hz!r}")
        if not 0 <= level <= 1:
            raise ValueError(f"level must be in [0, 1]; got {level!r}")
        if not band_hz > 0:
            raise ValueError(f"band_hz must be positive; got {band_hz!r}")
        self.start_hz, self.level, self.band_hz, self.seed = float(start_hz), float(level), float(band_hz), int(seed)
        f = np.fft.rfftfreq(C.FRAME_SIZE, 1.0 / C.SAMPLE_RATE)
        band = np.floor((f - self.start_hz) / self.band_hz).astype(int)
        band[f < self.start_hz] = -1
        self._band = band                                   # each rfft bin's band (-1: not filled)
        self._bands = int(band.max()) + 1
        # |X_k|^2 -> energy: the one-sided spectrum counts interior bins twice.
        self._twice = np.where((np.arange(len(f)) == 0) | (np.arange(len(f)) == len(f) - 1), 1.0, 2.0)
        self._share = np.bincount(band[band >= 0], weights=self._twice[band >= 0],
                                  minlength=self._bands) / np.sum(self._twice)
        self._window = frame_window()

    def __repr__(self) -> str:
        return f"NoiseFill(start_hz={self.start_hz:g}, level={self.level:g}, band_hz={self.band_hz:g}, seed={self.seed})"

    def band_energies(self, frames: np.ndarray) -> np.ndarray:
        """[N, 512] -> [N, bands] energy (sum of squares) of each frame in each filled band."""
        p = np.abs(np.fft.rfft(frames, axis=-1)) ** 2 * self._twice / C.FRAME_SIZE
        sel = self._band >= 0
        out = np.zeros((len(frames), self._bands))
        for b in range(self._bands):     # a handful of bands
            out[:, b] = p[:, sel & (self._band == b)].sum(axis=-1)
        return out

    def __call__(self, frames: np.ndarray, first_frame: int, residual_scale: float) -> np.ndarray:
        """Decoded frames [N, 512] of the gain-normalised residual (frame `first_frame` of the
        stream first) -> the frames with the fill added (float64)."""
        frames = np.asarray(frames, np.float64)
        if self.level == 0 or len(frames) == 0:
            return frames
        expected = C.FRAME_SIZE / float(residual_scale) ** 2 * self._share       # [bands]
        missing = np.maximum(self.level * expected - self.band_energies(frames), 0.0)   # [N, bands]
        noise = np.stack([np.random.default_rng((self.seed, first_frame + i)).standard_normal(C.FRAME_SIZE)
                          for i in range(len(frames))])
        spec = np.fft.rfft(noise, axis=-1)
        spec[:, self._band < 0] = 0.0
        have = self.band_energies(np.fft.irfft(spec, n=C.FRAME_SIZE, axis=-1))
        gain = np.sqrt(missing / np.maximum(have, 1e-12))                        # [N, bands]
        per_bin = np.zeros(spec.shape)
        per_bin[:, self._band >= 0] = gain[:, self._band[self._band >= 0]]
        fill = np.fft.irfft(spec * per_bin, n=C.FRAME_SIZE, axis=-1) * self._window
        return frames + fill


def _filled_decoder(codec, fill):
    """Wraps the codec's backend so each decode_frames call adds `fill`; returns a reset function."""
    backend, state = codec._backend, {"frame": 0}
    plain = backend.decode_frames

    def decode_frames(modules):
        frames = plain(modules)
        if fill is None:
            return frames
        out = fill(frames, state["frame"], codec.model.residual_scale)
        state["frame"] += len(frames)
        return out.astype(np.float32)

    backend.decode_frames = decode_frames
    def reset():
        state["frame"] = 0
    def restore():
        backend.decode_frames = plain
    return reset, restore


def main(argv):
    del argv
    import cq_codec
    from cq_codec.data import corpora, splits
    from cq_codec.evaluation import studies
    from cq_codec.evaluation.metrics import score_many
    parts = splits.split_utterances(corpora.discover(FLAGS.data_dir, "demo"), seed=FLAGS.seed)
    clips = studies.load_clips(studies.select_clips(parts[FLAGS.split], FLAGS.max_clips))
    codec = cq_codec.load(FLAGS.model)
    if codec.model.gain_quantizer is None:
        raise SystemExit("noise filling needs a model that codes per-sub-frame gains (--gain_subframes)")
    points = range(1, codec.num_modules + 1)
    data = {k: [codec.compress(x, C.SAMPLE_RATE, num_modules=k) for _, x in clips] for k in points}
    settings = [None] + [NoiseFill(float(s), float(l)) for s, l in (p.split(":") for p in FLAGS.settings.split(",") if p)]
    print(f"{len(clips)} {FLAGS.split} clips; PESQ-WB / STOI / SI-SDR at {', '.join(map(str, points))} modules")
    for fill in settings:
        reset, restore = _filled_decoder(codec, fill)
        res = []
        for k in points:
            pairs = []
            for (_, x), d in zip(clips, data[k]):
                reset()
                pairs.append((x, codec.decompress(d)[0][: len(x)]))
            s = score_many(pairs, processes=2)
            res.append([np.mean([r[m] for r in s]) for m in ("pesq_wb", "stoi", "si_sdr")])
        restore()
        res = np.array(res)
        print(f"{str(fill) if fill else 'no fill':60s} PESQ-WB " + " / ".join(f"{v:.3f}" for v in res[:, 0])
              + "  STOI " + " / ".join(f"{v:.3f}" for v in res[:, 1]) + "  SI-SDR " + " / ".join(f"{v:.2f}" for v in res[:, 2]),
              flush=True)


if __name__ == "__main__":
    app.run(main)
