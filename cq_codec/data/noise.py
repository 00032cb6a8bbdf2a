"""Noise for denoising codecs: sources, mixing at an exact SNR, noisy training examples.

Sources (all numpy; `sample(n, rng, exclude=None) -> float64 [n]` with unit RMS):
- `ColouredNoise`: stationary Gaussian noise with a 1/f^beta power spectrum (beta drawn per
  call from `beta_range`: 0 white, 1 pink, 2 brown), shaped in the FFT domain.
- `BabbleNoise`: the sum of several *other* utterances of the corpus (a talker id equal to
  `exclude` is never used, so babble never contains the clean utterance).
- `FolderNoise`: random crops of every wav/flac/ogg under `--noise_dir` (16 kHz mono).
- `MixtureNoise`: picks one of several sources per call.

`mix_at_snr(clean, noise, snr_db)` scales the noise so that 10 log10(sum clean^2 / sum noise^2)
equals `snr_db` exactly (utterance-level SNR over the whole clip).

`FrameNoiser` makes noisy training examples from the frame cache (docs/DESIGN.md): for each
frame it mixes noise into the span of the utterance that the frame's three LPC analysis windows
cover (hop t's window is samples [t*480 + 240 - 512, t*480 + 240 + 512)), returns the noisy
example `x_noisy` [528] and the LSFs of the noisy signal `lsf_noisy` [3, 16] computed with
`lpc.lpc_from_frames` + `lpc.lpc_to_lsf` (the same analysis as `lpc.analyze`). Noise is mixed in
the preprocessed domain (high-pass + pre-emphasis are linear, so this equals preprocessing the
noisy waveform, up to the SNR being measured after pre-emphasis); the SNR is relative to the
power of the whole clean utterance.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np

import constants as C
import lpc

__all__ = ["NoiseSource", "ColouredNoise", "BabbleNoise", "FolderNoise", "MixtureNoise",
           "mix_at_snr", "measured_snr_db", "default_noise", "FrameNoiser", "SPAN_BEFORE", "SPAN_AFTER"]

# A frame starting at sample s needs noisy samples [s - SPAN_BEFORE, s + SPAN_AFTER): the LPC
# windows of hops t-1 .. t+1 (the example's 16 history samples lie inside).
SPAN_BEFORE = C.HOP_SIZE + C.LPC_WINDOW // 2 - C.HOP_SIZE // 2          # 752
SPAN_AFTER = C.HOP_SIZE + C.HOP_SIZE // 2 + C.LPC_WINDOW // 2            # 1232


def _unit_rms(x: np.ndarray) -> np.ndarray:
    r = float(np.sqrt(np.mean(np.square(x))))
    return x / r if r > 1e-12 else x


def _check_n(n) -> int:
    if isinstance(n, bool) or int(n) != n or n < 1:
        raise ValueError(f"number of noise samples must be a positive integer, got {n!r}")
    return int(n)


class NoiseSource:
    """Base class: `sample(n, rng, exclude=None)` -> unit-RMS float64 [n]."""

    name = "noise"

    def sample(self, n: int, rng: np.random.Generator, exclude=None) -> np.ndarray:
        raise NotImplementedError


class ColouredNoise(NoiseSource):
    """Stationary Gaussian noise with power spectrum ~ 1/f^beta (f >= `f_min` Hz)."""

    name = "coloured"

    def __init__(self, beta_range: tuple[float, float] = (0.0, 2.0), f_min: float = 50.0):
        lo, hi = (float(b) for b in beta_range)
        if not (0.0 <= lo <= hi <= 4.0):
            raise ValueError(f"beta_range must satisfy 0 <= low <= high <= 4, got {beta_range}")
        if not f_min > 0:
            raise ValueError(f"f_min must be positive, got {f_min}")
        self.beta_range, self.f_min = (lo, hi), float(f_min)

    def sample(self, n, rng, exclude=None):
        n = _check_n(n)
        beta = rng.uniform(*self.beta_range)
        spec = np.fft.rfft(rng.standard_normal(n))
        f = np.maximum(np.fft.rfftfreq(n, 1.0 / C.SAMPLE_RATE), self.f_min)
        return _unit_rms(np.fft.irfft(spec * f ** (-beta / 2.0), n))


class _Bank(NoiseSource):
    """Random crops of stored signals; `ids[i]` names the talker/file of `signals[i]`."""

    def __init__(self, signals: Sequence[np.ndarray], ids: Sequence | None = None, min_seconds: float = 0.05):
        keep = [(np.asarray(s, np.float64), i) for s, i in zip(signals, ids if ids is not None else range(len(signals)))
                if np.asarray(s).ndim == 1 and len(s) >= min_seconds * C.SAMPLE_RATE and np.any(s)]
        if not keep:
            raise ValueError(f"{type(self).__name__}: no usable (1-D, non-silent, >= {min_seconds} s) signals given")
        self.signals = [s for s, _ in keep]
        self.ids = [i for _, i in keep]

    def _crop(self, k: int, n: int, rng) -> np.ndarray:
        s = self.signals[k]
        if len(s) < n:
            s = np.tile(s, -(-n // len(s)))
        start = int(rng.integers(0, len(s) - n + 1))
        return s[start:start + n]

    def _choices(self, exclude) -> np.ndarray:
        allowed = np.array([i for i, t in enumerate(self.ids) if exclude is None or t != exclude])
        if len(allowed) == 0:
            raise ValueError(f"{type(self).__name__}: every signal belongs to the excluded id {exclude!r}")
        return allowed


class BabbleNoise(_Bank):
    """Babble: the sum of `talkers` random crops of other utterances, each at unit RMS."""

    name = "babble"

    def __init__(self, utterances: Sequence[np.ndarray], ids: Sequence | None = None,
                 talkers: tuple[int, int] = (3, 6)):
        super().__init__(utterances, ids)
        if not 1 <= talkers[0] <= talkers[1]:
            raise ValueError(f"talkers must be (min, max) with 1 <= min <= max, got {talkers}")
        self.talkers = (int(talkers[0]), int(talkers[1]))

    def sample(self, n, rng, exclude=None):
        n = _check_n(n)
        allowed = self._choices(exclude)
        k = int(rng.integers(self.talkers[0], self.talkers[1] + 1))
        picks = rng.choice(allowed, size=min(k, len(allowed)), replace=False)
        return _unit_rms(sum(_unit_rms(self._crop(int(p), n, rng)) for p in picks))


class FolderNoise(_Bank):
    """Crops of the noise recordings under a folder (any wav/flac/ogg; downmixed, 16 kHz)."""

    name = "folder"

    def __init__(self, noise_dir: str):
        from cq_codec.data.audio import AUDIO_EXTENSIONS, load_audio
        if not os.path.isdir(noise_dir):
            raise FileNotFoundError(f"--noise_dir {noise_dir!r} is not a folder")
        paths = sorted(os.path.join(r, f) for r, _, fs in os.walk(noise_dir) for f in fs
                       if f.lower().endswith(tuple(AUDIO_EXTENSIONS)))
        if not paths:
            raise ValueError(f"--noise_dir {noise_dir!r} holds no audio files ({', '.join(AUDIO_EXTENSIONS)})")
        super().__init__([load_audio(p) for p in paths], paths)

    def sample(self, n, rng, exclude=None):
        n = _check_n(n)
        return _unit_rms(self._crop(int(rng.choice(self._choices(exclude))), n, rng))


class MixtureNoise(NoiseSource):
    """One of `sources` per call, chosen with probabilities `weights` (default uniform)."""

    name = "mixture"

    def __init__(self, sources: Sequence[NoiseSource], weights: Sequence[float] | None = None):
        if not sources or not all(isinstance(s, NoiseSource) for s in sources):
            raise TypeError("MixtureNoise needs a non-empty list of NoiseSource objects")
        w = np.ones(len(sources)) if weights is None else np.asarray(weights, np.float64)
        if w.shape != (len(sources),) or np.any(w < 0) or w.sum() <= 0:
            raise ValueError(f"weights must be {len(sources)} non-negative numbers with a positive sum, got {weights}")
        self.sources, self.weights = list(sources), w / w.sum()

    def sample(self, n, rng, exclude=None):
        return self.sources[int(rng.choice(len(self.sources), p=self.weights))].sample(n, rng, exclude)


def measured_snr_db(clean: np.ndarray, noise: np.ndarray) -> float:
    """10 log10(sum clean^2 / sum noise^2)."""
    return float(10.0 * np.log10(np.sum(np.square(clean, dtype=np.float64)) /
                                 np.sum(np.square(noise, dtype=np.float64))))


def mix_at_snr(clean: np.ndarray, noise: np.ndarray, snr_db: float) -> tuple[np.ndarray, np.ndarray]:
    """clean [N], noise [N] -> (noisy [N], scaled noise [N]) with measured_snr_db(clean, scaled) == snr_db."""
    clean, noise = np.asarray(clean, np.float64), np.asarray(noise, np.float64)
    if clean.ndim != 1 or clean.shape != noise.shape:
        raise ValueError(f"clean and noise must be 1-D of equal length, got {clean.shape} and {noise.shape}")
    if not np.isfinite(snr_db):
        raise ValueError(f"snr_db must be finite, got {snr_db}")
    pc, pn = np.sum(np.square(clean)), np.sum(np.square(noise))
    if pc <= 0 or pn <= 0:
        raise ValueError("cannot set an SNR with a silent clean signal or silent noise")
    scaled = noise * np.sqrt(pc / pn / 10.0 ** (snr_db / 10.0))
    return clean + scaled, scaled


def default_noise(train_wavs: Sequence[np.ndarray] | None = None, ids: Sequence | None = None,
                  noise_dir: str | None = None) -> NoiseSource:
    """`--noise_dir` if given, else coloured noise + babble of `train_wavs` (half each)."""
    if noise_dir:
        return FolderNoise(noise_dir)
    sources = [ColouredNoise()]
    if train_wavs:
        sources.append(BabbleNoise(train_wavs, ids))
    return MixtureNoise(sources)


class FrameNoiser:
    """Noisy versions of cached training frames (see the module docstring).

    `noiser(arrays, sel, rng)` with `arrays = cache.arrays(split)` and frame indices `sel` [B]
    returns {'x_noisy': float32 [B, 528], 'lsf_noisy': float32 [B, 3, 16]}, normalised by `std`
    like `x`. Noise: `source` (raw-domain noise, preprocessed here) or, when `source` is None,
    babble from the cache itself (other utterances' loud frames, already preprocessed); the SNR
    of each example is drawn uniformly from `snr_db` (low, high).
    """

    def __init__(self, std: float, snr_db: tuple[float, float] = (0.0, 15.0), source: NoiseSource | None = None,
                 babble_talkers: tuple[int, int] = (3, 6)):
        if not std > 0:
            raise ValueError(f"std must be positive, got {std}")
        lo, hi = (float(v) for v in snr_db)
        if not lo <= hi:
            raise ValueError(f"snr_db must be (low, high) with low <= high, got {snr_db}")
        self.std, self.snr_db, self.source, self.talkers = float(std), (lo, hi), source, babble_talkers
        self._layout = {}

    def _utterances(self, arrays: dict) -> dict:
        """Per frame: utterance index, local hop, the utterance's segment start/hops and power."""
        key = id(arrays["starts"])
        if key not in self._layout:
            idx, starts = np.asarray(arrays["lsf_index"]), np.asarray(arrays["starts"])
            first = np.flatnonzero(idx[:, 0] == idx[:, 1])  # t = 0 of each utterance (hop t-1 clamped to t)
            utt = np.cumsum(np.isin(np.arange(len(starts)), first)) - 1
            hops = np.diff(np.r_[first, len(starts)])
            seg0 = starts[first]                      # segment start = 16 history zeros, then y
            power = np.array([np.mean(np.square(np.asarray(arrays["signal"][s + 16:s + 16 + (h - 1) * C.HOP_SIZE + C.FRAME_SIZE],
                                                           np.float64))) for s, h in zip(seg0, hops)])
            self._layout = {key: dict(utt=utt, local=np.arange(len(starts)) - first[utt], hops=hops, seg0=seg0,
                                      power=power, loud=np.flatnonzero(np.asarray(arrays["rms"]) >= 1e-3))}
        return self._layout[key]

    def _babble(self, arrays, lay, u: int, n: int, rng) -> np.ndarray:
        loud = lay["loud"][lay["utt"][lay["loud"]] != u]
        if len(loud) == 0:
            raise ValueError("babble from the cache needs loud frames of at least one other utterance")
        k = int(rng.integers(self.talkers[0], self.talkers[1] + 1))
        out = np.zeros(n)
        sig = arrays["signal"]
        for f in rng.choice(loud, size=k):
            centre = int(arrays["starts"][f]) + 16 + C.FRAME_SIZE // 2
            lo = max(0, centre - n // 2)
            crop = np.asarray(sig[lo:lo + n], np.float64)
            out[:len(crop)] += _unit_rms(crop) if np.any(crop) else 0.0
        return _unit_rms(out)

    def __call__(self, arrays: dict, sel: np.ndarray, rng: np.random.Generator) -> dict:
        lay = self._utterances(arrays)
        n = SPAN_BEFORE + SPAN_AFTER
        win = np.arange(C.LPC_WINDOW)
        x_noisy = np.zeros((len(sel), 16 + C.FRAME_SIZE), np.float32)
        lsf_noisy = np.zeros((len(sel), 3, C.LPC_ORDER), np.float32)
        for b, f in enumerate(np.asarray(sel)):
            u, t = int(lay["utt"][f]), int(lay["local"][f])
            hops = int(lay["hops"][u])
            y0 = int(lay["seg0"][u]) + 16                    # signal index of the utterance's sample 0
            y_len = (hops - 1) * C.HOP_SIZE + C.FRAME_SIZE   # samples of y kept in the segment
            pos = t * C.HOP_SIZE - SPAN_BEFORE + np.arange(n)  # utterance sample index of the span
            inside = (pos >= 0) & (pos < y_len)
            clean = np.zeros(n)
            clean[inside] = arrays["signal"][y0 + pos[inside]]
            if self.source is None:
                noise = self._babble(arrays, lay, u, n, rng)
            else:
                warm = 256                                   # filter warm-up samples, dropped
                raw = self.source.sample(n + warm, rng)
                noise = _unit_rms(lpc.preemphasis(lpc.highpass(raw)[0])[0][warm:])
            snr = rng.uniform(*self.snr_db)
            gain = np.sqrt(lay["power"][u] / 10.0 ** (snr / 10.0))
            noisy = np.where(inside, clean + gain * noise, 0.0)
            x_noisy[b] = noisy[SPAN_BEFORE - 16:SPAN_BEFORE + C.FRAME_SIZE] / self.std
            local = np.clip(np.array([t - 1, t, t + 1]), 0, hops - 1)
            starts = (local - t) * C.HOP_SIZE + C.HOP_SIZE // 2 - C.LPC_WINDOW // 2 + SPAN_BEFORE
            frames = noisy[starts[:, None] + win]
            lsf_noisy[b] = lpc.lpc_to_lsf(lpc.lpc_from_frames(frames))
        return {"x_noisy": x_noisy, "lsf_noisy": lsf_noisy}
