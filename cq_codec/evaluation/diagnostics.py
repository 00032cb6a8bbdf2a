"""Error-allocation diagnostics: where in time and frequency a codec puts its error (issue 14).

All functions take 1-D float signals `[N]` at 16 kHz (`constants.SAMPLE_RATE`). `diagnose`
aligns the decoded signal to the reference with `metrics.align` first (the same codec-delay
compensation `metrics.score` uses for SI-SDR and PESQ); the other functions take signals that
are already aligned and of equal length.

Definitions (x = reference, y = decoded, e = y - x):

- STFT: Hann window of 512 samples (32 ms, 31.25 Hz bins), hop 128 (`scipy.signal.ShortTimeFFT`,
  edges zero padded so every sample is covered).
- Per-band SNR: `10 log10(sum |X|^2 / sum |X - Y|^2)` over all frames of the clip and the STFT
  bins whose centre frequency f satisfies lo <= f < hi (the band ending at 8 kHz includes the
  Nyquist bin), for the bands 0-0.5, 0.5-1, 1-2, 2-4, 4-6 and 6-8 kHz (`BANDS_KHZ`). Columns
  `snr_0_05`, `snr_05_1`, `snr_1_2`, `snr_2_4`, `snr_4_6`, `snr_6_8`.
- Segmental SNR (`seg_snr`): non-overlapping 20 ms frames (320 samples); each frame's SNR
  `10 log10(sum x^2 / sum e^2)` is clamped to [-10, 35] dB; the mean is taken over the active
  frames: those whose reference energy is non-zero and within 40 dB of the clip's loudest frame.
- Oracle (`oracle_pesq_wb`): PESQ-WB of `x + e_o`, where `e_o` has exactly the codec's error
  energy `sum e^2` but follows the reference's spectrogram bin by bin: its STFT is
  `g |X(t, f)| exp(j phi(t, f))` with uniformly random phases phi (seeded, so the figure is
  reproducible), inverted with the ISTFT and scaled to the energy `sum e^2` in the time domain.
  Random phase, because with the reference's own phase `e_o = g x` and `x + e_o` is only the
  reference at another level. It tells how much of the PESQ gap is where the error goes rather
  than how much there is (issue 14: 2.44 as coded -> 4.24, 15 clips at 24 kbps). It is not an
  upper bound for every codec: noise is what it puts in, so a codec whose error is partly a
  phase mismatch that PESQ forgives (Opus, AMR-WB) can score above its own oracle.
- Long-term average spectra: the per-bin mean over frames of `|X|^2` (speech) and `|X - Y|^2`
  (error), plotted in dB against frequency by `plot_error_spectra`.

PESQ failures (silent or too-short clips) give NaN with a `metrics.MetricWarning`, like `score`.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterable, Sequence

import numpy as np
from scipy.signal import ShortTimeFFT
from scipy.signal.windows import hann

from constants import SAMPLE_RATE
from cq_codec.evaluation import metrics

__all__ = ["BANDS_KHZ", "COLUMNS", "NOTES", "N_FFT", "HOP", "band_column", "band_snr", "segmental_snr",
           "oracle_error", "oracle_pesq_wb", "long_term_spectra", "diagnose", "diagnose_many",
           "add_to_rows", "pop_spectra", "plot_error_spectra"]

BANDS_KHZ = ((0.0, 0.5), (0.5, 1.0), (1.0, 2.0), (2.0, 4.0), (4.0, 6.0), (6.0, 8.0))
N_FFT = 512
HOP = 128
SEG_FRAME = 320                  # 20 ms
SEG_CLAMP_DB = (-10.0, 35.0)
SEG_ACTIVE_DB = 40.0             # active frame: energy within this many dB of the loudest frame
SPEECH_PSD, ERROR_PSD = "_speech_psd", "_error_psd"   # per-clip arrays in a row (popped before CSV)
_EPS = 1e-12                     # as metrics.snr: a perfect band gives a large finite SNR


def band_column(lo_khz: float, hi_khz: float) -> str:
    """The column name of a band: (0.5, 1) -> 'snr_05_1'."""
    return "snr_" + "_".join(f"{v:g}".replace(".", "") for v in (lo_khz, hi_khz))


COLUMNS = tuple(band_column(lo, hi) for lo, hi in BANDS_KHZ) + ("seg_snr", "oracle_pesq_wb")
NOTES = ("Diagnostics (cq_codec/evaluation/diagnostics.py, after the same delay alignment as SI-SDR / PESQ): "
         "snr_<lo>_<hi> = per-band SNR in dB over the whole clip, 10 log10(sum |X|^2 / sum |X - Y|^2) over the "
         "STFT bins (Hann 512, hop 128) from lo to hi kHz (05 = 0.5); seg_snr = mean over active 20 ms frames "
         "(within 40 dB of the loudest) of the frame SNR clamped to [-10, 35] dB; oracle_pesq_wb = PESQ-WB of "
         "the reference plus the codec's error energy redistributed to follow the reference's spectrogram bin "
         "by bin (magnitude proportional to |X|, seeded random phase). error_spectra.png: long-term average "
         "spectra of the speech and of the error per row (dashed: the oracle's error spectrum).")


def _stft(n_fft: int | None = None) -> ShortTimeFFT:
    """Hann STFT of `n_fft` (default N_FFT, hop HOP; otherwise hop n_fft / 4)."""
    if n_fft is None:
        return ShortTimeFFT(hann(N_FFT, sym=False), hop=HOP, fs=SAMPLE_RATE)
    if isinstance(n_fft, bool) or int(n_fft) != n_fft or n_fft < 4:
        raise ValueError(f"n_fft must be an integer >= 4, got {n_fft!r}")
    return ShortTimeFFT(hann(int(n_fft), sym=False), hop=int(n_fft) // 4, fs=SAMPLE_RATE)


def _pair(reference, decoded) -> tuple[np.ndarray, np.ndarray]:
    return metrics._check_pair(reference, decoded)


def _check_bands(bands: Sequence[tuple[float, float]]) -> None:
    nyquist = SAMPLE_RATE / 2000.0
    if not len(bands):
        raise ValueError("bands must not be empty")
    for band in bands:
        if len(band) != 2 or not 0 <= band[0] < band[1] <= nyquist:
            raise ValueError(f"each band must be (lo, hi) kHz with 0 <= lo < hi <= {nyquist:g}, got {band!r}")


def band_snr(reference, decoded, bands: Sequence[tuple[float, float]] = BANDS_KHZ) -> dict[str, float]:
    """Per-band SNR in dB of equal-length aligned `[N]` signals: {band_column(lo, hi): dB}."""
    ref, dec = _pair(reference, decoded)
    _check_bands(bands)
    sft = _stft()
    ref_pow = np.abs(sft.stft(ref)) ** 2
    err_pow = np.abs(sft.stft(dec - ref)) ** 2
    freqs_khz = sft.f / 1000.0
    nyquist = SAMPLE_RATE / 2000.0
    out = {}
    for lo, hi in bands:
        sel = (freqs_khz >= lo) & ((freqs_khz < hi) | ((hi == nyquist) & (freqs_khz == nyquist)))
        if not np.any(sel):
            raise ValueError(f"band {lo:g}-{hi:g} kHz holds no STFT bin (bins are {SAMPLE_RATE / N_FFT:g} Hz apart)")
        out[band_column(lo, hi)] = float(10.0 * np.log10((ref_pow[sel].sum() + _EPS) / (err_pow[sel].sum() + _EPS)))
    return out


def segmental_snr(reference, decoded, frame: int = SEG_FRAME, clamp_db: tuple[float, float] = SEG_CLAMP_DB,
                  active_db: float = SEG_ACTIVE_DB) -> float:
    """Segmental SNR in dB of equal-length aligned `[N]` signals (see the module docstring).

    Frames: non-overlapping `frame` samples, a last partial frame dropped (a clip shorter than a
    frame is one frame). NaN when no frame is active (silent reference)."""
    ref, dec = _pair(reference, decoded)
    if frame < 1:
        raise ValueError(f"frame must be >= 1 sample, got {frame}")
    if not clamp_db[0] < clamp_db[1]:
        raise ValueError(f"clamp_db must be (low, high) with low < high, got {clamp_db!r}")
    frame = min(frame, ref.size)
    count = ref.size // frame
    err = (dec - ref)[: count * frame].reshape(count, frame)
    ref = ref[: count * frame].reshape(count, frame)
    sig_e = (ref ** 2).sum(axis=1)
    err_e = (err ** 2).sum(axis=1)
    active = (sig_e > 0) & (sig_e >= sig_e.max() * 10.0 ** (-active_db / 10.0))
    if not np.any(active):
        return float("nan")
    seg = 10.0 * np.log10((sig_e[active] + _EPS) / (err_e[active] + _EPS))
    return float(np.mean(np.clip(seg, *clamp_db)))


def oracle_error(reference, decoded, phase: str = "random", seed: int = 0, n_fft: int | None = None) -> np.ndarray:
    """The codec's error energy redistributed to follow the reference's spectrogram: `[N]`.

    Its STFT is `g |X| exp(j phi)` (phase 'random': uniform phases from `seed`; 'reference':
    phi = angle X, which makes it `g * reference`), scaled after the ISTFT so that
    `sum(out ** 2) == sum((decoded - reference) ** 2)`. `n_fft`: another STFT window (hop n_fft / 4)."""
    ref, dec = _pair(reference, decoded)
    if phase not in ("random", "reference"):
        raise ValueError(f"phase must be 'random' or 'reference', got {phase!r}")
    energy = float(np.sum((dec - ref) ** 2))
    if energy == 0.0:
        return np.zeros_like(ref)
    if not np.any(ref):
        raise ValueError("the reference is silent: there is no spectrogram for the error to follow")
    sft = _stft(n_fft)
    spec = sft.stft(ref)
    if phase == "random":
        phi = np.random.default_rng(seed).uniform(0.0, 2.0 * np.pi, spec.shape)
        spec = np.abs(spec) * np.exp(1j * phi)
    shaped = sft.istft(spec, k1=ref.size)
    return shaped * np.sqrt(energy / np.sum(shaped ** 2))


def oracle_pesq_wb(reference, decoded, name: str = "<clip>", phase: str = "random", seed: int = 0,
                   n_fft: int | None = None) -> float:
    """PESQ-WB of `reference + oracle_error(reference, decoded)` against `reference` (NaN + warning
    if PESQ fails or the reference is silent)."""
    ref, dec = _pair(reference, decoded)
    if not np.any(ref):
        warnings.warn(f"oracle PESQ-WB of clip {name!r}: silent reference, returning NaN",
                      metrics.MetricWarning, stacklevel=2)
        return float("nan")
    return metrics.pesq_wb(ref, ref + oracle_error(ref, dec, phase, seed, n_fft), name)


def long_term_spectra(reference, decoded) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(frequencies Hz `[F]`, speech power `[F]`, error power `[F]`): per-bin means over the STFT
    frames of |X|^2 and |X - Y|^2 (F = 257)."""
    ref, dec = _pair(reference, decoded)
    sft = _stft()
    return (sft.f, np.mean(np.abs(sft.stft(ref)) ** 2, axis=1), np.mean(np.abs(sft.stft(dec - ref)) ** 2, axis=1))


def diagnose(reference, decoded, name: str = "<clip>", oracle: bool = True, spectra: bool = True,
             max_delay_ms: float = metrics.DEFAULT_MAX_DELAY_MS, seed: int = 0) -> dict:
    """Every diagnostic of one clip after `metrics.align` (as `metrics.score`).

    Args:
        reference: `[N]` input at 16 kHz; decoded: `[M]` codec output at 16 kHz.
        name: clip name in warnings. oracle: compute `oracle_pesq_wb` (one PESQ run).
        spectra: add the per-clip long-term spectra under SPEECH_PSD / ERROR_PSD (`[257]` arrays).
        seed: the oracle's random phases.

    Returns:
        {snr_<band>..., seg_snr, oracle_pesq_wb (NaN when oracle=False)[, SPEECH_PSD, ERROR_PSD]}.
    """
    ref, dec, _ = metrics.align(reference, decoded, SAMPLE_RATE, max_delay_ms)
    out = band_snr(ref, dec)
    out["seg_snr"] = segmental_snr(ref, dec)
    out["oracle_pesq_wb"] = oracle_pesq_wb(ref, dec, name, seed=seed) if oracle else float("nan")
    if spectra:
        _, out[SPEECH_PSD], out[ERROR_PSD] = long_term_spectra(ref, dec)
    return out


def _worker(args) -> tuple[dict, list[tuple[str, type]]]:
    reference, decoded, name, oracle = args
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = diagnose(reference, decoded, name, oracle=oracle)
    return result, [(str(w.message), w.category) for w in caught]


def diagnose_many(pairs: Iterable[Sequence], processes: int = 2, names: Sequence[str] | None = None,
                  oracle: bool = True) -> list[dict]:
    """`diagnose` (with spectra) over `(reference, decoded)` pairs, in `processes` worker
    processes (forkserver, like `metrics.score_many`); results in the order of `pairs`."""
    checked, names = metrics.check_pairs(pairs, names, processes)
    jobs = [(ref, dec, name, oracle) for (ref, dec), name in zip(checked, names)]
    return metrics.run_jobs(lambda r, d, n, o: diagnose(r, d, n, oracle=o), _worker, jobs, processes)


def add_to_rows(rows: Sequence[dict], pairs: Sequence[Sequence], processes: int = 2) -> None:
    """Adds `diagnose_many` of `pairs` to the matching per-clip `rows` (in place; names from 'clip')."""
    if len(rows) != len(pairs):
        raise ValueError(f"got {len(rows)} rows for {len(pairs)} clips")
    for row, d in zip(rows, diagnose_many(pairs, processes, [str(r.get("clip", i)) for i, r in enumerate(rows)])):
        row.update(d)


def pop_spectra(rows: Sequence[dict], key: str = "label") -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Removes the per-clip spectra from `rows` (so they can go to CSV) and averages them per
    `key` value (first-seen order): {value: (frequencies Hz, speech power, error power)}, each the
    mean over that value's clips of the per-clip long-term spectra. Rows without spectra are skipped."""
    groups: dict = {}
    for r in rows:
        speech, error = r.pop(SPEECH_PSD, None), r.pop(ERROR_PSD, None)
        if speech is not None and error is not None:
            groups.setdefault(r[key], []).append((speech, error))
    freqs = _stft().f
    return {k: (freqs, np.mean([s for s, _ in v], axis=0), np.mean([e for _, e in v], axis=0))
            for k, v in groups.items()}


def _db(p: np.ndarray) -> np.ndarray:
    return 10.0 * np.log10(np.maximum(p, _EPS))


def plot_error_spectra(spectra: dict, path: str, columns: int = 4, title: str = "") -> None:
    """One panel per row label of `pop_spectra`: speech and error long-term spectra in dB against
    kHz, and dashed the oracle's error spectrum (the speech spectrum at the error's total power)."""
    if not spectra:
        raise ValueError(f"no spectra to plot to {path}")
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    columns = max(1, min(columns, len(spectra)))
    nrows = -(-len(spectra) // columns)
    fig, axes = plt.subplots(nrows, columns, figsize=(4 * columns, 3 * nrows), squeeze=False,
                             sharex=True, sharey=True)
    for ax, (label, (freqs, speech, error)) in zip(axes.flat, spectra.items()):
        khz = freqs / 1000.0
        ax.plot(khz, _db(speech), color="0.4", lw=1, label="speech")
        ax.plot(khz, _db(error), color="tab:red", lw=1, label="error")
        ax.plot(khz, _db(speech * error.sum() / max(speech.sum(), _EPS)), color="tab:red", lw=0.8, ls="--",
                label="oracle error")
        ax.set_title(str(label), fontsize=8)
        ax.grid(alpha=0.3)
    for ax in axes.flat[len(spectra):]:
        ax.axis("off")
    for ax in axes[-1]:
        ax.set_xlabel("frequency (kHz)")
    for ax in axes[:, 0]:
        ax.set_ylabel("power (dB)")
    axes.flat[0].legend(fontsize=7)
    fig.suptitle(title or "Long-term average spectra: speech and codec error")
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.3 / (3 * nrows)))      # leave room for the title
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    fig.savefig(path, dpi=80)
    plt.close(fig)
