"""Error-allocation diagnostics (cq_codec/evaluation/diagnostics.py) on generated signals."""

import numpy as np
import pytest

from cq_codec.evaluation import diagnostics as D
from cq_codec.evaluation import metrics, studies
from tests.conftest import speechlike

SR = 16000


def _band_noise(n, lo_hz, hi_hz, power, seed):
    """White noise kept to lo..hi Hz by zeroing whole-signal FFT bins, at mean power `power`."""
    rng = np.random.default_rng(seed)
    f = np.fft.rfftfreq(n, 1 / SR)
    noise = np.fft.irfft(np.fft.rfft(rng.standard_normal(n)) * ((f >= lo_hz) & (f <= hi_hz)), n)
    return noise * np.sqrt(power / np.mean(noise ** 2))


def test_columns_are_the_issue_bands():
    assert D.COLUMNS == ("snr_0_05", "snr_05_1", "snr_1_2", "snr_2_4", "snr_4_6", "snr_6_8", "seg_snr",
                         "oracle_pesq_wb")


@pytest.mark.parametrize("band", [(0.0, 0.5), (2.0, 4.0), (6.0, 8.0)])
def test_band_snr_of_band_limited_noise_is_the_level_put_in(band):
    # White speech stand-in plus noise confined 100 Hz inside one band: that band's SNR is the
    # in-band reference energy over the noise energy (both from the whole-signal FFT, so no
    # randomness in the expectation), within 0.15 dB (STFT window edges); the others stay clean.
    n = 2 * SR
    x = 0.1 * np.random.default_rng(1).standard_normal(n)
    lo, hi = band[0] * 1000, band[1] * 1000
    noise = _band_noise(n, lo + 100, hi - 100, 1e-3, seed=2)
    f = np.fft.rfftfreq(n, 1 / SR)
    in_band = (f >= lo) & (f < hi)
    expected = 10 * np.log10(np.sum(np.abs(np.fft.rfft(x)[in_band]) ** 2) / np.sum(np.abs(np.fft.rfft(noise)) ** 2))
    got = D.band_snr(x, x + noise)
    assert got[D.band_column(*band)] == pytest.approx(expected, abs=0.15)
    others = [v for k, v in got.items() if k != D.band_column(*band)]
    assert len(others) == len(D.BANDS_KHZ) - 1 and min(others) > expected + 30


def test_band_snr_of_a_scaled_copy_is_the_same_in_every_band():
    x = speechlike(1.0).astype(np.float64)
    got = D.band_snr(x, 0.9 * x)       # error -0.1 x: 20 dB in every band (the STFT is linear)
    assert list(got) == list(D.COLUMNS[:6])
    assert all(v == pytest.approx(20.0, abs=1e-6) for v in got.values())
    assert min(D.band_snr(x, x).values()) > 100                     # no error: large and finite
    assert D.band_snr(x, 0.9 * x, bands=[(1.0, 3.0)]) == {"snr_1_3": pytest.approx(20.0, abs=1e-6)}


def test_segmental_snr_of_a_known_construction():
    # Frames of 320 samples; frame k's error is -c_k times its reference, so its SNR is -20 log10 c_k.
    frame_snr = np.array([0.0, 10.0, 20.0, 50.0, -30.0, 5.0])          # 50 -> 35 and -30 -> -10 (clamped)
    gains = np.array([1.0, 0.5, 2.0, 1.0, 1.0, 1.0])
    rng = np.random.default_rng(3)
    ref, dec = [], []
    for snr_db, g in zip(frame_snr, gains):
        r = g * rng.standard_normal(320)
        ref.append(r)
        dec.append(r * (1 - 10 ** (-snr_db / 20)))
    # a silent frame and one 60 dB below the loudest: both inactive whatever their error
    ref += [np.zeros(320), 2e-3 * rng.standard_normal(320)]
    dec += [0.1 * rng.standard_normal(320), np.zeros(320)]
    ref, dec = np.concatenate(ref + [np.ones(100)]), np.concatenate(dec + [np.zeros(100)])  # partial frame dropped
    expected = np.mean([0.0, 10.0, 20.0, 35.0, -10.0, 5.0])
    assert D.segmental_snr(ref, dec) == pytest.approx(expected, abs=1e-9)
    assert D.segmental_snr(ref, dec, clamp_db=(-40.0, 60.0)) == pytest.approx(np.mean(frame_snr), abs=1e-9)
    assert np.isnan(D.segmental_snr(np.zeros(1000), np.ones(1000)))
    assert D.segmental_snr(np.ones(100), np.full(100, 0.9)) == pytest.approx(20.0, abs=1e-9)  # one short frame


def test_oracle_keeps_the_error_energy_and_follows_the_reference():
    x = speechlike(2.0).astype(np.float64)
    x[SR:] = 0.0                                                      # speech, then silence
    y = x + 0.02 * np.random.default_rng(4).standard_normal(x.size)   # white error everywhere
    err_energy = np.sum((y - x) ** 2)
    o = D.oracle_error(x, y)
    assert o.shape == x.shape and np.sum(o ** 2) == pytest.approx(err_energy, rel=1e-9)
    # the error moved under the speech: almost none in the silent second (window spill at the edge only)
    assert np.sum(o[SR + 512:] ** 2) < 1e-6 * err_energy
    # ... and into every band at the clip's overall SNR (random-phase ISTFT: within 1 dB)
    overall = 10 * np.log10(np.sum(x ** 2) / err_energy)
    assert all(v == pytest.approx(overall, abs=1.0) for v in D.band_snr(x, x + o).values())
    np.testing.assert_array_equal(o, D.oracle_error(x, y))             # seeded: same path, same input
    assert not np.allclose(o, D.oracle_error(x, y, seed=1))
    # with the reference's phase the oracle error is the reference scaled to the error energy
    g = np.sqrt(err_energy / np.sum(x ** 2))
    np.testing.assert_allclose(D.oracle_error(x, y, phase="reference"), g * x, atol=1e-9 * np.max(np.abs(x)))
    np.testing.assert_array_equal(D.oracle_error(x, x), np.zeros_like(x))
    long_window = D.oracle_error(x, y, n_fft=2048)
    assert np.sum(long_window ** 2) == pytest.approx(err_energy, rel=1e-9) and not np.allclose(long_window, o)


def test_oracle_pesq_beats_white_error_of_the_same_energy():
    x = speechlike(3.0).astype(np.float64)
    y = x + 0.02 * np.random.default_rng(5).standard_normal(x.size)
    coded, oracle = metrics.pesq_wb(x, y), D.oracle_pesq_wb(x, y)
    assert 1.0 <= coded < oracle <= 4.7
    with pytest.warns(metrics.MetricWarning, match="silent reference"):
        assert np.isnan(D.oracle_pesq_wb(np.zeros(SR), np.ones(SR)))


def test_diagnose_aligns_like_score_and_returns_spectra():
    x = speechlike(2.0, seed=6).astype(np.float64)
    y = x + 0.01 * np.random.default_rng(7).standard_normal(x.size)
    late = np.concatenate([np.zeros(37), y])                          # a codec delay of 37 samples
    got = D.diagnose(x, late, name="c")
    assert set(got) == set(D.COLUMNS) | {D.SPEECH_PSD, D.ERROR_PSD}
    assert got[D.SPEECH_PSD].shape == got[D.ERROR_PSD].shape == (D.N_FFT // 2 + 1,)
    ref, dec, delay = metrics.align(x, late)
    assert delay == 37
    assert got["snr_1_2"] == pytest.approx(D.band_snr(ref, dec)["snr_1_2"], abs=1e-12)
    assert got["seg_snr"] == pytest.approx(D.segmental_snr(x, y), abs=1e-9)
    assert got["oracle_pesq_wb"] == pytest.approx(D.oracle_pesq_wb(ref, dec), abs=1e-6)
    # the long-term spectra average |X|^2 and |X - Y|^2 over frames: their ratio is the overall SNR
    overall = 10 * np.log10(got[D.SPEECH_PSD].sum() / got[D.ERROR_PSD].sum())
    assert overall == pytest.approx(metrics.snr(ref, dec), abs=0.1)
    off = D.diagnose(x, late, oracle=False, spectra=False)
    assert set(off) == set(D.COLUMNS) and np.isnan(off["oracle_pesq_wb"]) and off["seg_snr"] == got["seg_snr"]


def test_rows_spectra_and_plot(tmp_path):
    clips = [speechlike(1.0, seed=s).astype(np.float64) for s in (8, 9, 10)]
    pairs = [(c, c + 0.01 * (k + 1) * np.random.default_rng(k).standard_normal(c.size)) for k, c in enumerate(clips)]
    rows = [{"label": lab, "clip": f"c{k}"} for k, lab in enumerate(("a", "a", "b"))]
    D.add_to_rows(rows, pairs, processes=1)
    assert all(set(D.COLUMNS) <= set(r) for r in rows)
    parallel = D.diagnose_many(pairs, processes=2)                     # worker processes: same numbers
    for r, p in zip(rows, parallel):
        for k in D.COLUMNS:
            assert p[k] == pytest.approx(r[k], abs=1e-9)
    spectra = D.pop_spectra(rows)
    assert list(spectra) == ["a", "b"] and not any(D.SPEECH_PSD in r or D.ERROR_PSD in r for r in rows)
    freqs, speech, error = spectra["a"]
    assert freqs.shape == speech.shape == error.shape == (257,) and freqs[-1] == SR / 2
    d0, d1 = (D.diagnose(*p) for p in pairs[:2])
    np.testing.assert_allclose(error, (d0[D.ERROR_PSD] + d1[D.ERROR_PSD]) / 2, rtol=1e-9)
    studies.write_csv(rows, str(tmp_path / "rows.csv"))
    assert "_speech_psd" not in (tmp_path / "rows.csv").read_text()
    D.plot_error_spectra(spectra, str(tmp_path / "error_spectra.png"))
    assert (tmp_path / "error_spectra.png").stat().st_size > 1000


def test_bad_input_errors():
    x = np.ones(1000)
    with pytest.raises(ValueError, match="differ in length"):
        D.band_snr(x, np.ones(999))
    with pytest.raises(ValueError, match="1-D mono"):
        D.segmental_snr(np.ones((10, 2)), np.ones((10, 2)))
    with pytest.raises(ValueError, match="NaN or infinite"):
        D.oracle_error(x, np.full(1000, np.nan))
    with pytest.raises(ValueError, match="0 <= lo < hi <= 8"):
        D.band_snr(x, x, bands=[(4.0, 2.0)])
    with pytest.raises(ValueError, match="holds no STFT bin"):
        D.band_snr(x, x, bands=[(1.01, 1.02)])
    with pytest.raises(ValueError, match="phase must be"):
        D.oracle_error(x, 0.5 * x, phase="zero")
    with pytest.raises(ValueError, match="reference is silent"):
        D.oracle_error(np.zeros(1000), x)
    with pytest.raises(ValueError, match="n_fft must be an integer"):
        D.oracle_error(x, 0.5 * x, n_fft=100.5)
    with pytest.raises(ValueError, match="frame must be"):
        D.segmental_snr(x, x, frame=0)
    with pytest.raises(ValueError, match="clamp_db"):
        D.segmental_snr(x, x, clamp_db=(35.0, -10.0))
    with pytest.raises(ValueError, match="2 names for 1 clips"):
        D.diagnose_many([(x, x)], names=["a", "b"])
    with pytest.raises(ValueError, match="1 rows for 2 clips"):
        D.add_to_rows([{}], [(x, x), (x, x)])
    with pytest.raises(ValueError, match="no spectra"):
        D.plot_error_spectra({}, "unused.png")
