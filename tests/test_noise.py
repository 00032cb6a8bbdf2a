"""Noise sources, exact-SNR mixing and noisy training examples (x_noisy, lsf_noisy)."""

import os

import numpy as np
import pytest
import soundfile as sf

import lpc
from cq_codec.data import corpora, noise, splits
from cq_codec.data.pipeline import iterate_batches, make_dataset, prepare_cache
from tests.conftest import speechlike, write_librispeech


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    root = tmp_path_factory.mktemp("libri")
    write_librispeech(str(root), seconds=0.8)
    parts = splits.split_utterances(corpora.discover(str(root), "librispeech"), seed=0)
    return prepare_cache(parts, str(tmp_path_factory.mktemp("cache")))


@pytest.mark.parametrize("snr", [-5.0, 0.0, 5.0, 10.0, 20.0])
def test_mix_at_snr_is_exact(snr):
    rng = np.random.default_rng(1)
    clean = speechlike(1.0, seed=3).astype(np.float64)
    for src in (noise.ColouredNoise(), noise.BabbleNoise([speechlike(1.2, seed=s) for s in range(4)])):
        n = src.sample(len(clean), rng)
        noisy, scaled = noise.mix_at_snr(clean, n, snr)
        assert abs(noise.measured_snr_db(clean, noisy - clean) - snr) < 0.1
        np.testing.assert_allclose(noisy - clean, scaled, atol=1e-12)


def test_mix_rejects_bad_input():
    with pytest.raises(ValueError, match="equal length"):
        noise.mix_at_snr(np.ones(10), np.ones(9), 5.0)
    with pytest.raises(ValueError, match="silent"):
        noise.mix_at_snr(np.zeros(10), np.ones(10), 5.0)
    with pytest.raises(ValueError, match="finite"):
        noise.mix_at_snr(np.ones(10), np.ones(10), float("nan"))
    with pytest.raises(ValueError, match="positive integer"):
        noise.ColouredNoise().sample(0, np.random.default_rng(0))
    with pytest.raises(ValueError, match="beta_range"):
        noise.ColouredNoise(beta_range=(2.0, 1.0))


def test_coloured_noise_has_the_requested_spectral_slope():
    rng = np.random.default_rng(0)
    white, brown = noise.ColouredNoise((0.0, 0.0)), noise.ColouredNoise((2.0, 2.0))
    def hi_lo(x):
        p = np.abs(np.fft.rfft(x)) ** 2
        f = np.fft.rfftfreq(len(x), 1 / 16000)
        return p[(f > 4000)].mean() / p[(f > 100) & (f < 500)].mean()
    w, b = white.sample(32000, rng), brown.sample(32000, rng)
    assert abs(np.sqrt(np.mean(w ** 2)) - 1) < 1e-9 and abs(np.sqrt(np.mean(b ** 2)) - 1) < 1e-9
    assert 0.5 < hi_lo(w) < 2.0          # flat
    assert hi_lo(b) < 1e-2               # 1/f^2: ~ (300/6000)^2


def test_babble_excludes_the_clean_utterance():
    # Four "talkers" are tones on exact FFT bins; babble of three for talker 2 holds the other three.
    rng = np.random.default_rng(0)
    freqs = [500.0, 1000.0, 1500.0, 2000.0]
    talkers = [np.sin(2 * np.pi * f * np.arange(8000) / 16000) for f in freqs]
    babble = noise.BabbleNoise(talkers, ids=["a", "b", "c", "d"], talkers=(3, 3))
    bins = [int(f / 10) for f in freqs]          # 1600 samples: 10 Hz bins
    for _ in range(20):
        p = np.abs(np.fft.rfft(babble.sample(1600, rng, exclude="c"))) ** 2
        assert p[bins[2]] < 1e-9 * p.sum()
        assert all(p[bins[k]] > 0.1 * p.sum() for k in (0, 1, 3))
    with pytest.raises(ValueError, match="excluded"):
        noise.BabbleNoise([talkers[0]], ids=["a"]).sample(100, rng, exclude="a")


def test_sources_are_seeded():
    src = noise.default_noise([speechlike(1.0, seed=s) for s in range(5)])
    a = [src.sample(800, np.random.default_rng(7)) for _ in range(2)]
    np.testing.assert_array_equal(a[0], a[1])
    assert not np.array_equal(a[0], src.sample(800, np.random.default_rng(8)))


def test_folder_noise(tmp_path):
    with pytest.raises(FileNotFoundError):
        noise.FolderNoise(str(tmp_path / "missing"))
    os.makedirs(tmp_path / "n")
    with pytest.raises(ValueError, match="no audio"):
        noise.FolderNoise(str(tmp_path / "n"))
    sf.write(str(tmp_path / "n" / "hum.flac"), 0.1 * np.sin(np.arange(48000) * 0.05), 48000)
    src = noise.FolderNoise(str(tmp_path / "n"))
    x = src.sample(20000, np.random.default_rng(0))     # longer than the file (16000 at 16 kHz): tiled
    assert x.shape == (20000,) and abs(np.sqrt(np.mean(x ** 2)) - 1) < 1e-9


def test_noiseless_frames_reproduce_the_cache(cache):
    # With the noise gain tiny, x_noisy == x and lsf_noisy == the cache's LSFs (same analysis).
    noiser = noise.FrameNoiser(cache.std, snr_db=(200.0, 200.0), source=noise.ColouredNoise())
    batch = next(iterate_batches(cache, "train", 64, shuffle=False, keep_silence=1.0, noisy_examples=noiser))
    np.testing.assert_allclose(batch["x_noisy"], batch["x"], atol=1e-5)
    np.testing.assert_allclose(batch["lsf_noisy"], batch["lsf"], atol=2e-3)


def test_noisy_frames_have_the_requested_snr_and_are_seeded(cache):
    noiser = noise.FrameNoiser(cache.std, snr_db=(0.0, 0.0))   # babble from the cache
    args = dict(cache=cache, split="train", batch_size=16, shuffle=True, seed=3, noisy_examples=noiser)
    a, b = next(iterate_batches(**args)), next(iterate_batches(**args))
    for k in ("x_noisy", "lsf_noisy"):
        np.testing.assert_array_equal(a[k], b[k])
    assert a["lsf_noisy"].shape == (16, 3, 16) and np.all(np.diff(a["lsf_noisy"], axis=-1) > 0)
    assert not np.allclose(a["lsf_noisy"], a["lsf"], atol=1e-2)
    # 0 dB per utterance: frame-level noise power is of the order of the utterance power.
    ratio = np.mean((a["x_noisy"] - a["x"]) ** 2) / np.mean(a["x"] ** 2)
    assert 0.2 < ratio < 5.0
    ds = make_dataset(cache, "train", 8, noisy_examples=noiser, drop_remainder=True)
    el = next(iter(ds))
    assert el["lsf_noisy"].shape == (8, 3, 16) and el["x_noisy"].shape == (8, 528)


def test_pipeline_rejects_bad_noisy_examples(cache):
    with pytest.raises(TypeError, match="noisy_examples"):
        next(iterate_batches(cache, "train", 4, noisy_examples=3))
    with pytest.raises(ValueError, match="not both"):
        next(iterate_batches(cache, "train", 4, noise_fn=lambda x, r: x,
                             noisy_examples=noise.FrameNoiser(cache.std)))
    with pytest.raises(ValueError, match="lsf_noisy"):
        next(iterate_batches(cache, "train", 4, noisy_examples=lambda a, s, r: {"x_noisy": np.zeros((4, 528))}))
