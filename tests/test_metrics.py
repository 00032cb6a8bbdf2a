"""Tests for cq_codec.evaluation.metrics: SI-SDR, alignment, PESQ, STOI, parallel scoring."""

import math
import os
import shutil
import subprocess

import numpy as np
import pytest
import soundfile as sf
import soxr

from cq_codec.evaluation import metrics

FIXTURE = os.path.join(os.path.dirname(__file__), "fixtures", "real_speech.wav")
SR = 16000


@pytest.fixture(scope="module")
def speech(tmp_path_factory):
    """About 4 s of speech at 16 kHz, float64 `[N]`: the real fixture, else espeak-ng."""
    if os.path.exists(FIXTURE):
        x, sr = sf.read(FIXTURE, dtype="float64")
    else:
        if shutil.which("espeak-ng") is None:
            pytest.skip("neither tests/fixtures/real_speech.wav nor espeak-ng is available")
        path = str(tmp_path_factory.mktemp("tts") / "s.wav")
        subprocess.run(["espeak-ng", "-w", path, "The quick brown fox jumps over the lazy dog."],
                       check=True, capture_output=True)
        x, sr = sf.read(path, dtype="float64")
    assert sr in (SR, 22050)
    return soxr.resample(x, sr, SR) if sr != SR else x


def noisy(x, snr_db, seed=0):
    """`x` plus independent white noise at exactly `snr_db` (empirical powers)."""
    noise = np.random.default_rng(seed).standard_normal(x.size)
    noise *= np.sqrt(np.sum(x ** 2) / np.sum(noise ** 2) / 10 ** (snr_db / 10))
    return x + noise


def test_si_sdr_identity_scaling_and_known_value(speech):
    assert metrics.si_sdr(speech, speech) > 100.0
    y = noisy(speech, 10.0)
    base = metrics.si_sdr(speech, y)
    assert abs(base - 10.0) < 0.5
    assert metrics.si_sdr(speech, 0.3 * y) == pytest.approx(base, abs=1e-6)
    assert metrics.si_sdr(speech, -7.0 * y) == pytest.approx(base, abs=1e-6)
    assert abs(metrics.si_sdr(speech, noisy(speech, 20.0, seed=1)) - 20.0) < 0.5


def test_snr_known_value_and_not_scale_invariant(speech):
    y = noisy(speech, 15.0)
    assert abs(metrics.snr(speech, y) - 15.0) < 0.5
    assert metrics.snr(speech, 0.5 * y) < 10.0


@pytest.mark.parametrize("delay", [0, 37, -23, 800, -1600])
def test_align_recovers_integer_delay(speech, delay):
    x = speech
    if delay >= 0:
        y = np.concatenate([np.zeros(delay), x])
    else:
        y = x[-delay:]
    y = noisy(y, 20.0, seed=3)
    ref, dec, found = metrics.align(x, y)
    assert found == delay
    assert ref.shape == dec.shape
    assert ref.size == x.size - max(0, -delay)
    assert metrics.si_sdr(ref, dec) > 19.0  # aligned: only the added noise remains


def test_align_search_is_bounded(speech):
    y = np.concatenate([np.zeros(2000), speech])
    found = metrics.estimate_delay(speech, y, max_delay=1600)
    assert abs(found) <= 1600
    assert metrics.estimate_delay(speech, y, max_delay=2400) == 2000


def test_pesq_wb_clean_high_and_drops_with_noise(speech):
    clean = metrics.pesq_wb(speech, speech)
    assert clean > 4.0
    assert metrics.pesq_wb(speech, noisy(speech, 20.0)) < clean - 0.5
    assert metrics.pesq_nb(speech, speech) > 4.0


def test_stoi_in_unit_interval_and_monotonic(speech):
    high = metrics.stoi(speech, noisy(speech, 10.0))
    low = metrics.stoi(speech, noisy(speech, -5.0))
    assert 0.0 <= low < high <= 1.0


def test_score_reports_all_metrics_and_delay(speech):
    y = np.concatenate([np.zeros(50), noisy(speech, 25.0)])
    result = metrics.score(speech, y)
    assert set(result) == {"pesq_wb", "pesq_nb", "stoi", "si_sdr", "snr", "delay_samples",
                           "num_samples"}
    assert result["delay_samples"] == 50
    assert result["num_samples"] == speech.size
    assert abs(result["si_sdr"] - 25.0) < 0.5
    assert all(math.isfinite(result[k]) for k in ("pesq_wb", "pesq_nb", "stoi", "snr"))


def _same(a, b):
    """Equal score dicts, NaN equal to NaN."""
    return a.keys() == b.keys() and all(
        (np.isnan(a[k]) and np.isnan(b[k])) or a[k] == b[k] for k in a)


def test_score_many_parallel_equals_serial(speech):
    short = speech[:SR * 2]
    pairs = [(short, noisy(short, 10.0)), (short, np.concatenate([np.zeros(20), short])),
             (short, np.zeros_like(short))]
    with pytest.warns(metrics.MetricWarning, match="clip2"):
        serial = metrics.score_many(pairs, processes=1)
    with pytest.warns(metrics.MetricWarning, match="clip2"):
        parallel = metrics.score_many(pairs, processes=2)
    assert len(serial) == len(parallel) == 3
    assert all(_same(a, b) for a, b in zip(serial, parallel))
    assert serial[1]["delay_samples"] == 20


def test_silent_input_gives_nan_pesq_with_warning(speech):
    silent = np.zeros(SR)
    with pytest.warns(metrics.MetricWarning, match="'quiet'.*NaN"):
        result = metrics.score(speech[:SR], silent, name="quiet")
    assert math.isnan(result["pesq_wb"]) and math.isnan(result["pesq_nb"])
    assert result["delay_samples"] == 0
    with pytest.warns(metrics.MetricWarning, match="tiny"):  # too short for PESQ
        value = metrics.pesq_wb(speech[SR:SR + 400], speech[SR:SR + 400], name="tiny")
    assert math.isnan(value)


def test_bad_input_raises(speech):
    x = speech[:SR]
    with pytest.raises(ValueError, match="16000"):
        metrics.score(x, x, sr=8000)
    with pytest.raises(ValueError, match="1-D"):
        metrics.score(np.stack([x, x]), x)
    with pytest.raises(ValueError, match="empty"):
        metrics.score(np.zeros(0), x)
    with pytest.raises(ValueError, match="NaN"):
        metrics.score(x, np.full_like(x, np.nan))
    with pytest.raises(ValueError, match="length"):
        metrics.si_sdr(x, x[:-1])
    with pytest.raises(ValueError, match="pair 0"):
        metrics.score_many([(x,)])


def test_measured_kbps():
    assert metrics.measured_kbps(1000, 16000, 16000) == pytest.approx(8.0)  # 8000 bit in 1 s
    assert metrics.measured_kbps(2250, 32000) == pytest.approx(9.0)
    with pytest.raises(ValueError):
        metrics.measured_kbps(10, 0)
    with pytest.raises(ValueError):
        metrics.measured_kbps(-1, 100)
