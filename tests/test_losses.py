"""The spectral loss terms of issue 14: what they reward, shapes, gradients, config wiring."""

import numpy as np
import pytest
import tensorflow as tf

from cq_codec import losses as L
from cq_codec.config import Config


def _harmonic(b=4, n=512, f0=150.0, seed=0):
    rng = np.random.default_rng(seed)
    t = np.arange(n) / 16000.0
    x = sum(np.sin(2 * np.pi * f0 * k * t + rng.uniform(0, 6.28)) / k for k in range(1, 20))
    return np.tile(x[None], (b, 1)).astype(np.float32), rng


@pytest.mark.parametrize("name", ["mrstft", "nsr", "nsr_mel"])
def test_spectral_loss_is_zero_at_identity_and_grows_with_error(name):
    x, rng = _harmonic()
    noise = rng.standard_normal(x.shape).astype(np.float32)
    l0 = float(L.spectral_loss(name, x, x))
    l1 = float(L.spectral_loss(name, x, x + 0.01 * noise))
    l2 = float(L.spectral_loss(name, x, x + 0.1 * noise))
    assert l0 == pytest.approx(0.0, abs=1e-6)
    assert 0 < l1 < l2


def test_nsr_prefers_error_under_the_harmonics():
    """Equal error energy: shaped like the speech spectrum costs less than white."""
    x, rng = _harmonic(b=8)
    white = rng.standard_normal(x.shape).astype(np.float32)
    # Error that follows the speech: the speech itself, scaled (same spectrum), with random sign per row.
    shaped = x * rng.choice([-1.0, 1.0], size=(x.shape[0], 1)).astype(np.float32)
    for e in (white, shaped):
        e *= 0.1 * np.sqrt(np.mean(x ** 2) / np.mean(e ** 2))
    assert np.mean(white ** 2) == pytest.approx(np.mean(shaped ** 2), rel=1e-4)
    assert float(L.relative_spectral_loss(x, x + shaped)) < 0.5 * float(L.relative_spectral_loss(x, x + white))
    # Time RMSE cannot tell them apart: that is the point of the term.
    assert float(L.time_rmse(x, x + shaped)) == pytest.approx(float(L.time_rmse(x, x + white)), rel=1e-3)


@pytest.mark.parametrize("name", ["mrstft", "nsr", "nsr_mel"])
def test_spectral_loss_has_finite_gradients_on_silence_and_speech(name):
    x, rng = _harmonic(b=2)
    x[1] = 0.0   # a silent frame must not give NaN / inf
    y = tf.Variable(x + 0.05 * rng.standard_normal(x.shape).astype(np.float32))
    with tf.GradientTape() as tape:
        loss = L.spectral_loss(name, tf.constant(x), y)
    g = tape.gradient(loss, y).numpy()
    assert np.all(np.isfinite(g)) and np.any(g != 0)


def test_nsr_mel_weighs_high_bands_less_than_per_bin_nsr():
    """Equal relative error at 1-2 kHz or at 5-7 kHz: per-bin nsr counts 4-8 kHz as half the
    bins, so the high band's error costs it more; mel pooling weighs it by critical bands."""
    x, rng = _harmonic(b=8, f0=120.0)
    x = x + 0.05 * rng.standard_normal(x.shape).astype(np.float32)   # some energy in every band
    def band_noise(lo, hi):
        spec = np.fft.rfft(rng.standard_normal(x.shape), axis=-1)
        f = np.fft.rfftfreq(x.shape[-1], 1 / 16000)
        spec[:, (f < lo) | (f >= hi)] = 0
        return np.fft.irfft(spec, n=x.shape[-1], axis=-1).astype(np.float32)
    def at_snr(e, lo, hi, snr_db=0.0):
        sx = np.fft.rfft(x, axis=-1)
        f = np.fft.rfftfreq(x.shape[-1], 1 / 16000)
        px = np.mean(np.abs(sx[:, (f >= lo) & (f < hi)]) ** 2)
        pe = np.mean(np.abs(np.fft.rfft(e, axis=-1)[:, (f >= lo) & (f < hi)]) ** 2)
        return e * np.sqrt(px / pe * 10 ** (-snr_db / 10))
    low = at_snr(band_noise(1000, 2000), 1000, 2000)
    high = at_snr(band_noise(5000, 7000), 5000, 7000)
    ratio_bin = float(L.relative_spectral_loss(x, x + high)) / float(L.relative_spectral_loss(x, x + low))
    ratio_mel = float(L.mel_relative_spectral_loss(x, x + high)) / float(L.mel_relative_spectral_loss(x, x + low))
    assert ratio_mel < ratio_bin


def test_unknown_spectral_loss_is_refused():
    with pytest.raises(ValueError, match="spectral loss must be one of"):
        L.spectral_loss("bogus", np.zeros((1, 512), np.float32), np.zeros((1, 512), np.float32))
    with pytest.raises(Exception, match="spectral_loss"):
        Config(spectral_loss="bogus").validate()


def _band_noise(shape, lo, hi, rng):
    spec = np.fft.rfft(rng.standard_normal(shape), axis=-1)
    f = np.fft.rfftfreq(shape[-1], 1 / 16000)
    spec[:, (f < lo) | (f >= hi)] = 0
    return np.fft.irfft(spec, n=shape[-1], axis=-1).astype(np.float32)


@pytest.mark.parametrize("name", ["nsr", "nsr_mel"])
def test_high_band_weight_scales_only_the_error_above_4_khz(name):
    """--spectral_high_weight: 1 is the unweighted loss; 0 ignores an error confined to 4.5-7.5 kHz
    and leaves (up to renormalisation) one confined to 1-2 kHz; in between, the high band's cost falls."""
    x, rng = _harmonic(b=4, f0=120.0)
    x = x + 0.05 * rng.standard_normal(x.shape).astype(np.float32)
    low = 0.3 * _band_noise(x.shape, 1000, 2000, rng)
    high = 0.3 * _band_noise(x.shape, 4500, 7500, rng)
    # Exactly the unweighted loss at 1 (the default path).
    assert float(L.spectral_loss(name, x, x + high, 1.0)) == float(L.spectral_loss(name, x, x + high))
    h = [float(L.spectral_loss(name, x, x + high, w)) for w in (1.0, 0.3, 0.0)]
    assert h[0] > h[1] > h[2] >= 0 and h[2] < 0.05 * h[0]
    lo1, lo0 = float(L.spectral_loss(name, x, x + low, 1.0)), float(L.spectral_loss(name, x, x + low, 0.0))
    assert lo0 > lo1 > 0   # the low band keeps its cost (a larger share of the weighted mean)


@pytest.mark.parametrize("name", ["nsr", "nsr_mel"])
def test_low_band_weight_scales_only_the_error_below_1_khz(name):
    """--spectral_low_weight: 0 ignores an error confined to 100-900 Hz, leaves one confined to
    1.5-3 kHz its cost; 1 with a high weight of 1 is exactly the unweighted loss."""
    x, rng = _harmonic(b=4, f0=120.0)
    x = x + 0.05 * rng.standard_normal(x.shape).astype(np.float32)
    low = 0.3 * _band_noise(x.shape, 100, 900, rng)
    mid = 0.3 * _band_noise(x.shape, 1500, 3000, rng)
    assert float(L.spectral_loss(name, x, x + low, 1.0, 1.0)) == float(L.spectral_loss(name, x, x + low))
    lw = [float(L.spectral_loss(name, x, x + low, 1.0, w)) for w in (1.0, 0.3, 0.0)]
    assert lw[0] > lw[1] > lw[2] >= 0 and lw[2] < 0.05 * lw[0]
    m1, m0 = float(L.spectral_loss(name, x, x + mid, 1.0, 1.0)), float(L.spectral_loss(name, x, x + mid, 1.0, 0.0))
    assert m0 > m1 > 0
    with pytest.raises(ValueError, match="nsr and nsr_mel losses only"):
        L.spectral_loss("mrstft", x, x, 1.0, 0.5)
    with pytest.raises(Exception, match="spectral_low_weight"):
        Config(spectral_loss="mrstft", spectral_weight=1.0, spectral_low_weight=(0.5,)).validate()
    with pytest.raises(Exception, match="spectral_low_weight"):
        Config(spectral_loss="nsr_mel", spectral_weight=1.0, spectral_low_weight=(-1.0,)).validate()


def test_high_band_weight_has_gradients_and_is_checked():
    x, rng = _harmonic(b=2)
    y = tf.Variable(x + 0.05 * rng.standard_normal(x.shape).astype(np.float32))
    with tf.GradientTape() as tape:
        loss = L.spectral_loss("nsr_mel", tf.constant(x), y, 0.3)
    g = tape.gradient(loss, y).numpy()
    assert np.all(np.isfinite(g)) and np.any(g != 0)
    with pytest.raises(ValueError, match="nsr and nsr_mel losses only"):
        L.spectral_loss("mrstft", x, x, 0.5)
    with pytest.raises(Exception, match="spectral_high_weight"):
        Config(spectral_loss="mrstft", spectral_weight=1.0, spectral_high_weight=(0.5,)).validate()
    with pytest.raises(Exception, match="spectral_high_weight"):
        Config(spectral_loss="nsr_mel", spectral_weight=1.0, spectral_high_weight=(1.0, -1.0)).validate()
    Config(spectral_loss="nsr_mel", spectral_weight=1.0, spectral_high_weight=(1.0, 1.0, 0.3)).validate()


def test_high_band_weight_per_operating_point():
    """The model's spectral term weighs each stacked prefix output (the output of i modules) with
    the i-th weight, the last reused; equal weights take the single-call path."""
    from types import SimpleNamespace
    from cq_codec.models.cq import CQCodec
    x, rng = _harmonic(b=3, f0=130.0)
    x = x + 0.05 * rng.standard_normal(x.shape).astype(np.float32)
    y = [x + 0.2 * _band_noise(x.shape, 500, 8000, rng) for _ in range(3)]
    xs, ys = np.concatenate([x, x, x]), np.concatenate(y)
    m = SimpleNamespace(spectral_loss="nsr_mel", spectral_high_weight=(1.0, 0.5))
    got = float(CQCodec._spectral_term(m, tf.constant(xs), tf.constant(ys), [1, 2, 3]))
    want = np.mean([float(L.spectral_loss("nsr_mel", x, yi, w)) for yi, w in zip(y, (1.0, 0.5, 0.5))])
    assert got == pytest.approx(want, rel=1e-5)
    m.spectral_low_weight = (1.0, 1.0, 0.5)
    got = float(CQCodec._spectral_term(m, tf.constant(xs), tf.constant(ys), [1, 2, 3]))
    want = np.mean([float(L.spectral_loss("nsr_mel", x, yi, w, lw))
                    for yi, w, lw in zip(y, (1.0, 0.5, 0.5), (1.0, 1.0, 0.5))])
    assert got == pytest.approx(want, rel=1e-5)
    m.spectral_high_weight, m.spectral_low_weight = (1.0,), (1.0,)
    assert float(CQCodec._spectral_term(m, tf.constant(xs), tf.constant(ys), [1, 2, 3])) == \
        float(L.spectral_loss("nsr_mel", xs, ys))
