"""Objective speech-quality metrics with codec-delay alignment.

All functions take 1-D float signals of shape `[N]` at 16 kHz (`constants.SAMPLE_RATE`).

- PESQ: ITU-T P.862.2 wideband on the 16 kHz signals and P.862 narrowband on 8 kHz versions
  (resampled with soxr), via the `pesq` package. PESQ raises on silent or too-short input;
  `score` turns that into NaN with a warning that names the clip, so one bad clip never stops
  a whole study.
- STOI: Taal et al., "An algorithm for intelligibility prediction of time-frequency weighted
  noisy speech", IEEE TASLP 2011, via `pystoi`.
- SI-SDR: Le Roux et al., "SDR - half-baked or well done?", ICASSP 2019 (zero-mean signals,
  optimal scaling of the reference).
- SNR: plain waveform SNR in dB.

A codec's decoded output usually lags its input by the codec's algorithmic delay, which ruins
waveform metrics. `align` estimates the lag by FFT cross-correlation within a bounded search
range, compensates it and trims both signals to a common length; `score` reports the lag found
(`delay_samples`, positive = decoded is late) so callers can check it.
"""

from __future__ import annotations

import concurrent.futures
import multiprocessing
import warnings
from typing import Iterable, Sequence

import numpy as np
import pesq as pesq_lib
import pystoi
import soxr

from constants import BITS_PER_KBIT, SAMPLE_RATE

__all__ = [
    "MetricWarning",
    "align",
    "estimate_delay",
    "measured_kbps",
    "pesq_nb",
    "pesq_wb",
    "score",
    "score_many",
    "si_sdr",
    "snr",
    "stoi",
]

NB_SAMPLE_RATE = 8000
DEFAULT_MAX_DELAY_MS = 100.0
_EPS = 1e-12


class MetricWarning(UserWarning):
    """A metric could not be computed for one clip (its value is NaN)."""


def _check_signal(x, what: str) -> np.ndarray:
    """Validate a mono signal and return it as float64 `[N]`."""
    x = np.asarray(x)
    if x.ndim != 1:
        raise ValueError(f"{what} must be a 1-D mono signal, got shape {x.shape}")
    if x.size == 0:
        raise ValueError(f"{what} is empty")
    if not np.issubdtype(x.dtype, np.number) or np.iscomplexobj(x):
        raise TypeError(f"{what} must be a real numeric array, got dtype {x.dtype}")
    x = x.astype(np.float64)
    if not np.all(np.isfinite(x)):
        raise ValueError(f"{what} contains NaN or infinite samples")
    return x


def _check_sr(sr) -> None:
    if sr != SAMPLE_RATE:
        raise ValueError(
            f"sample rate must be {SAMPLE_RATE} Hz, got {sr!r}: resample to {SAMPLE_RATE} Hz first")


def _check_pair(reference, decoded) -> tuple[np.ndarray, np.ndarray]:
    ref = _check_signal(reference, "reference")
    dec = _check_signal(decoded, "decoded")
    if ref.size != dec.size:
        raise ValueError(f"reference and decoded differ in length ({ref.size} vs {dec.size}): "
                         "call align() first")
    return ref, dec


def estimate_delay(reference, decoded, max_delay: int) -> int:
    """Lag of `decoded` behind `reference` in samples, by FFT cross-correlation.

    Args:
        reference: `[N]` signal.
        decoded: `[M]` signal, possibly delayed (or advanced) copy of `reference`.
        max_delay: search range: the result lies in `[-max_delay, max_delay]`.

    Returns:
        d (int): `decoded[n + d]` best matches `reference[n]` (positive = decoded is late).
    """
    ref = _check_signal(reference, "reference")
    dec = _check_signal(decoded, "decoded")
    if max_delay < 0:
        raise ValueError(f"max_delay must be >= 0, got {max_delay}")
    if not np.any(ref) or not np.any(dec):
        return 0  # a silent signal carries no timing information
    n = ref.size + dec.size - 1
    nfft = 1 << int(np.ceil(np.log2(n)))
    # c[k] = sum_n dec[n + k] * ref[n]: circular index k < 0 wraps to nfft + k.
    corr = np.fft.irfft(np.fft.rfft(dec, nfft) * np.conj(np.fft.rfft(ref, nfft)), nfft)
    hi = min(max_delay, dec.size - 1)
    lo = min(max_delay, ref.size - 1)
    lags = np.arange(-lo, hi + 1)
    values = corr[lags % nfft]
    return int(lags[np.argmax(values)])


def align(reference, decoded, sr: int = SAMPLE_RATE,
          max_delay_ms: float = DEFAULT_MAX_DELAY_MS) -> tuple[np.ndarray, np.ndarray, int]:
    """Compensate the codec delay and trim both signals to a common length.

    Args:
        reference: `[N]` input signal.
        decoded: `[M]` codec output.
        sr: sample rate of both.
        max_delay_ms: bound of the delay search, in ms either way.

    Returns:
        (reference `[L]`, decoded `[L]`, delay in samples (positive = decoded was late)).
    """
    ref = _check_signal(reference, "reference")
    dec = _check_signal(decoded, "decoded")
    delay = estimate_delay(ref, dec, int(round(max_delay_ms * sr / 1000.0)))
    if delay > 0:
        dec = dec[delay:]
    elif delay < 0:
        ref = ref[-delay:]
    length = min(ref.size, dec.size)
    if length == 0:
        raise ValueError(f"nothing left to compare after compensating a delay of {delay} samples")
    return ref[:length], dec[:length], delay


def si_sdr(reference, decoded) -> float:
    """Scale-invariant SDR in dB (Le Roux et al., ICASSP 2019) of equal-length `[N]` signals."""
    ref, dec = _check_pair(reference, decoded)
    ref = ref - ref.mean()
    dec = dec - dec.mean()
    scale = np.dot(dec, ref) / (np.dot(ref, ref) + _EPS)
    target = scale * ref
    noise = dec - target
    return float(10.0 * np.log10((np.dot(target, target) + _EPS) / (np.dot(noise, noise) + _EPS)))


def snr(reference, decoded) -> float:
    """Waveform SNR in dB, `10 log10(|ref|^2 / |ref - dec|^2)`, of equal-length `[N]` signals."""
    ref, dec = _check_pair(reference, decoded)
    err = ref - dec
    return float(10.0 * np.log10((np.dot(ref, ref) + _EPS) / (np.dot(err, err) + _EPS)))


def _pesq(ref: np.ndarray, dec: np.ndarray, fs: int, mode: str, name: str) -> float:
    if np.max(np.abs(ref)) == 0.0 or np.max(np.abs(dec)) == 0.0:
        warnings.warn(f"PESQ-{mode.upper()} of clip {name!r}: silent signal, returning NaN",
                      MetricWarning, stacklevel=3)
        return float("nan")
    try:
        return float(pesq_lib.pesq(fs, ref, dec, mode))
    except pesq_lib.PesqError as err:
        warnings.warn(f"PESQ-{mode.upper()} of clip {name!r} failed "
                      f"({type(err).__name__}: {err}), returning NaN", MetricWarning, stacklevel=3)
        return float("nan")


def pesq_wb(reference, decoded, name: str = "<clip>") -> float:
    """PESQ-WB (P.862.2, MOS-LQO) of equal-length 16 kHz `[N]` signals; NaN + warning on failure."""
    ref, dec = _check_pair(reference, decoded)
    return _pesq(ref, dec, SAMPLE_RATE, "wb", name)


def pesq_nb(reference, decoded, name: str = "<clip>") -> float:
    """PESQ-NB (P.862) of equal-length 16 kHz `[N]` signals, scored on 8 kHz soxr resamples."""
    ref, dec = _check_pair(reference, decoded)
    ref8 = soxr.resample(ref, SAMPLE_RATE, NB_SAMPLE_RATE)
    dec8 = soxr.resample(dec, SAMPLE_RATE, NB_SAMPLE_RATE)
    return _pesq(ref8, dec8, NB_SAMPLE_RATE, "nb", name)


def stoi(reference, decoded, extended: bool = False) -> float:
    """STOI (Taal et al. 2011; extended=True gives ESTOI) of equal-length 16 kHz `[N]` signals."""
    ref, dec = _check_pair(reference, decoded)
    return float(pystoi.stoi(ref, dec, SAMPLE_RATE, extended=extended))


def measured_kbps(num_bytes: int, num_samples: int, sr: int = SAMPLE_RATE) -> float:
    """Bitrate in kbps (1 kbps = 1000 bit/s) of `num_bytes` coding `num_samples` samples at `sr`."""
    if num_bytes < 0:
        raise ValueError(f"num_bytes must be >= 0, got {num_bytes}")
    if num_samples <= 0:
        raise ValueError(f"num_samples must be > 0, got {num_samples}")
    if sr <= 0:
        raise ValueError(f"sr must be > 0, got {sr}")
    return 8.0 * num_bytes * sr / num_samples / BITS_PER_KBIT


def score(reference, decoded, sr: int = SAMPLE_RATE, name: str = "<clip>",
          max_delay_ms: float = DEFAULT_MAX_DELAY_MS) -> dict:
    """All metrics of one clip after delay compensation.

    Args:
        reference: `[N]` input signal at 16 kHz.
        decoded: `[M]` codec output at 16 kHz (M may differ from N).
        sr: must be 16000.
        name: clip name used in warnings.
        max_delay_ms: bound of the delay search.

    Returns:
        dict with `pesq_wb`, `pesq_nb`, `stoi`, `si_sdr`, `snr` (floats, PESQ may be NaN),
        `delay_samples` (int, positive = decoded was late) and `num_samples` (compared length).
    """
    _check_sr(sr)
    ref, dec, delay = align(reference, decoded, sr, max_delay_ms)
    return {
        "pesq_wb": pesq_wb(ref, dec, name),
        "pesq_nb": pesq_nb(ref, dec, name),
        "stoi": stoi(ref, dec),
        "si_sdr": si_sdr(ref, dec),
        "snr": snr(ref, dec),
        "delay_samples": delay,
        "num_samples": int(ref.size),
    }


def _score_worker(args) -> tuple[dict, list[tuple[str, type]]]:
    """Score one clip in a worker process; warnings are returned to be re-issued by the parent."""
    reference, decoded, sr, name, max_delay_ms = args
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = score(reference, decoded, sr, name, max_delay_ms)
    return result, [(str(w.message), w.category) for w in caught]


def score_many(pairs: Iterable[Sequence], sr: int = SAMPLE_RATE, processes: int = 2,
               names: Sequence[str] | None = None,
               max_delay_ms: float = DEFAULT_MAX_DELAY_MS) -> list[dict]:
    """`score` over many clips, in parallel worker processes; same results as serial.

    Args:
        pairs: iterable of `(reference [N_i], decoded [M_i])`.
        sr: must be 16000.
        processes: number of worker processes; 1 (or a single clip) runs serially in-process.
        names: one name per clip for warnings (default `clip<i>`).
        max_delay_ms: bound of the delay search.

    Returns:
        list of `score` dicts, in the order of `pairs`.
    """
    _check_sr(sr)
    checked, names = check_pairs(pairs, names, processes)
    jobs = [(ref, dec, sr, name, max_delay_ms) for (ref, dec), name in zip(checked, names)]
    return run_jobs(score, _score_worker, jobs, processes)


def check_pairs(pairs: Iterable[Sequence], names: Sequence[str] | None, processes: int):
    """Validated `[(reference, decoded)]` float arrays and one name per clip (default `clip<i>`);
    ValueError naming the clip for anything else."""
    pairs = list(pairs)
    names = [f"clip{i}" for i in range(len(pairs))] if names is None else list(names)
    if len(names) != len(pairs):
        raise ValueError(f"got {len(names)} names for {len(pairs)} clips")
    if processes < 1:
        raise ValueError(f"processes must be >= 1, got {processes}")
    checked = []
    for i, pair in enumerate(pairs):
        if len(pair) != 2:
            raise ValueError(f"pair {i} must be (reference, decoded), got {len(pair)} items")
        checked.append((_check_signal(pair[0], f"reference of {names[i]!r}"),
                        _check_signal(pair[1], f"decoded of {names[i]!r}")))
    return checked, names


def run_jobs(fn, worker, jobs: list, processes: int) -> list:
    """`fn(*job)` for every job, serially for one process or one job, else in a forkserver
    pool through `worker` (which returns `(result, caught warnings)`); warnings re-raised here,
    results in the order of `jobs`."""
    if processes == 1 or len(jobs) <= 1:
        return [fn(*job) for job in jobs]
    # forkserver: never fork a parent that may hold TensorFlow's threads.
    context = multiprocessing.get_context("forkserver")
    with concurrent.futures.ProcessPoolExecutor(min(processes, len(jobs)),
                                                mp_context=context) as pool:
        outputs = list(pool.map(worker, jobs))
    results = []
    for result, caught in outputs:
        for message, category in caught:
            warnings.warn(message, category, stacklevel=3)
        results.append(result)
    return results
