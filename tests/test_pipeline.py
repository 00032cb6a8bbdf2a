"""Preprocessing, the frame cache and the tf.data pipeline on a generated corpus."""

import dataclasses
import os

import numpy as np
import pytest
import soundfile as sf

import constants as C
import lpc
from conftest import speechlike, write_broken
from cq_codec.data import audio, cache as cache_lib, corpora, pipeline, preprocess, splits


@pytest.fixture
def corpus(corpus_factory):
    root = corpus_factory("librispeech", seconds=0.31)
    write_broken(os.path.join(root, "train-clean-100", "19", "198", "19-198-0009.flac"))
    utts = corpora.discover(root)
    return root, splits.split_utterances(utts, 0.2, 0.2, seed=0)


@pytest.fixture
def built(corpus, tmp_path):
    _, parts = corpus
    return parts, cache_lib.build_cache(parts, str(tmp_path / "cache"))


def test_frame_examples_layout():
    rng = np.random.default_rng(0)
    y = rng.standard_normal(3 * C.HOP_SIZE + 100)
    lsf = np.sort(rng.uniform(0.1, 3.0, (4, 16)), axis=1)
    x, l3 = preprocess.frame_examples(y, lsf, std=2.0)
    assert x.shape == (4, 528) and l3.shape == (4, 3, 16) and x.dtype == np.float32
    np.testing.assert_array_equal(x[0, :16], 0)
    np.testing.assert_allclose(x[0, 16:], y[:512] / 2, rtol=1e-6)
    np.testing.assert_allclose(x[2], y[2 * 480 - 16:2 * 480 + 512] / 2, rtol=1e-6)
    np.testing.assert_array_equal(x[3, 16 + 100:], 0)  # zero padded past the end
    np.testing.assert_allclose(l3[2], lsf[1:4].astype(np.float32))
    np.testing.assert_allclose(l3[0], lsf[[0, 0, 1]].astype(np.float32))
    np.testing.assert_allclose(l3[3], lsf[[2, 3, 3]].astype(np.float32))
    with pytest.raises(ValueError, match="lsf must have shape"):
        preprocess.frame_examples(y, lsf[:3])
    with pytest.raises(ValueError, match="std"):
        preprocess.frame_examples(y, lsf, std=0.0)


def test_preprocess_matches_lpc():
    x = speechlike(0.2, seed=3)
    y = preprocess.preprocess_audio(x)
    ref, _ = lpc.preemphasis(lpc.highpass(x)[0])
    np.testing.assert_allclose(y, ref)
    lsf = preprocess.analyze_utterance(y)
    assert lsf.shape == (preprocess.num_frames(len(x)), 16)
    assert np.all(np.diff(lsf, axis=1) > 0)
    with pytest.raises(ValueError, match="mono"):
        preprocess.preprocess_audio(np.zeros((10, 2)))


def test_cache_contents_and_std(built):
    parts, cache = built
    assert cache.splits["train"]["skipped"] == 1  # the broken file, reported and counted
    train = [audio.load_audio(u.path) for u in parts["train"]
             if not u.path.endswith("0009.flac")]
    ys = [preprocess.preprocess_audio(a) for a in train]
    assert cache.std == pytest.approx(np.std(np.concatenate(ys)), rel=1e-5)
    want = sum(preprocess.num_frames(len(a)) for a in train)
    assert cache.num_frames("train") == cache.splits["train"]["frames"] == want
    reopened = cache_lib.load_cache(cache.directory)
    assert reopened.std == cache.std and reopened.splits == cache.splits


def test_speed_perturbation_adds_analysed_copies_of_training_audio_only(built, tmp_path):
    parts, plain = built
    sped = cache_lib.build_cache(parts, str(tmp_path / "sped"), speeds=(0.9, 1.1))
    assert sped.key != plain.key and sped.std == plain.std  # std of the recordings only
    assert cache_lib.cache_key(parts, None, ()) == plain.key  # no speeds: the old key
    for split in ("val", "test"):
        assert sped.splits[split] == plain.splits[split]
        np.testing.assert_array_equal(sped.arrays(split)["signal"], plain.arrays(split)["signal"])
    train = [audio.load_audio(u.path) for u in parts["train"] if not u.path.endswith("0009.flac")]
    lengths = [[len(a), len(cache_lib.speed_perturb(a, 0.9)), len(cache_lib.speed_perturb(a, 1.1))]
               for a in train]
    assert sped.num_frames("train") == sum(preprocess.num_frames(n) for row in lengths for n in row)
    # Each recording is stored first as recorded, then its 0.9 and 1.1 copies, each with its own LPC.
    first, slow = lengths[0][0], lengths[0][1]
    a = sped.arrays("train")
    n0 = preprocess.num_frames(first)
    np.testing.assert_array_equal(a["lsf"][:n0], plain.arrays("train")["lsf"][:n0])
    y_slow = preprocess.preprocess_audio(cache_lib.speed_perturb(train[0], 0.9))
    np.testing.assert_allclose(a["lsf"][n0:n0 + preprocess.num_frames(slow)],
                               preprocess.analyze_utterance(y_slow), rtol=1e-6)
    assert sped.splits["train"]["seconds"] > 2.9 * plain.splits["train"]["seconds"]
    with pytest.raises(ValueError, match="differ from 1"):
        cache_lib.build_cache(parts, str(tmp_path / "bad"), speeds=(1.0,))
    assert not os.path.exists(tmp_path / "bad")


def test_speed_perturb_moves_pitch_by_the_factor():
    t = np.arange(C.SAMPLE_RATE) / C.SAMPLE_RATE
    x = np.sin(2 * np.pi * 200.0 * t).astype(np.float32)
    for factor in (0.9, 1.1):
        y = cache_lib.speed_perturb(x, factor)
        assert y.dtype == np.float32 and abs(len(y) - len(x) / factor) <= 1
        spectrum = np.abs(np.fft.rfft(y * np.hanning(len(y))))
        assert np.argmax(spectrum) * C.SAMPLE_RATE / len(y) == pytest.approx(200.0 * factor, abs=2.0)


def test_cache_reused_then_rebuilt_when_stale(built, corpus):
    parts, cache = built
    stamp = os.path.getmtime(os.path.join(cache.directory, "train", "lsf.npy"))
    again = cache_lib.build_cache(parts, cache.directory)
    assert again.key == cache.key and again.build_seconds == 0.0
    assert os.path.getmtime(os.path.join(cache.directory, "train", "lsf.npy")) == stamp
    fewer = dict(parts, val=parts["val"][:1])
    rebuilt = cache_lib.build_cache(fewer, cache.directory)
    assert rebuilt.key != cache.key and rebuilt.build_seconds > 0
    assert rebuilt.splits["val"]["utterances"] == 1


def test_cache_rebuild_keeps_readers_and_symlinked_corpora_share_it(built, corpus, tmp_path):
    parts, cache = built
    root, _ = corpus
    arrays = cache.arrays("train")                 # a running job's memory-mapped view
    before = np.array(arrays["lsf"])
    rebuilt = cache_lib.build_cache(parts, cache.directory, force=True)
    np.testing.assert_array_equal(np.array(arrays["lsf"]), before)   # still readable, unchanged
    assert rebuilt.key == cache.key
    assert not [n for n in os.listdir(os.path.dirname(cache.directory)) if ".building-" in n or ".old-" in n]
    # The same files through a symlinked root: same key, no rebuild.
    link = tmp_path / "linked"
    os.symlink(root, link)
    via_link = {s: [dataclasses.replace(u, path=os.path.join(str(link), os.path.relpath(u.path, root))) for u in utts]
                for s, utts in parts.items()}
    assert cache_lib.cache_key(via_link) == cache_lib.cache_key(parts)
    assert cache_lib.build_cache(via_link, cache.directory).build_seconds == 0.0


def test_failed_cache_build_leaves_nothing_behind(corpus, tmp_path):
    _, parts = corpus
    with pytest.raises(ValueError, match="silent|readable"):
        cache_lib.build_cache({"train": [dataclasses.replace(u, path=str(tmp_path / "missing.wav")) for u in parts["train"][:1]]},
                              str(tmp_path / "c"))
    assert not [n for n in os.listdir(tmp_path) if n.startswith("c")]   # neither c/ nor c.building-*


def test_cache_needs_train_or_std(corpus, tmp_path):
    _, parts = corpus
    with pytest.raises(ValueError, match="train"):
        cache_lib.build_cache({"val": parts["val"]}, str(tmp_path / "c"))
    c = cache_lib.build_cache({"val": parts["val"]}, str(tmp_path / "c"), std=0.5)
    assert c.std == 0.5
    with pytest.raises(FileNotFoundError, match="no frame cache"):
        cache_lib.load_cache(str(tmp_path / "absent"))


def test_dataset_equals_per_utterance_examples(built):
    parts, cache = built
    ds = pipeline.make_dataset(cache, "val", batch_size=4, shuffle=False, keep_silence=1.0)
    batches = list(ds.as_numpy_iterator())
    x = np.concatenate([b["x"] for b in batches])
    lsf = np.concatenate([b["lsf"] for b in batches])
    want_x, want_lsf = [], []
    for u in parts["val"]:
        y = preprocess.preprocess_audio(audio.load_audio(u.path))
        ex, el = preprocess.frame_examples(y, preprocess.analyze_utterance(y), cache.std)
        want_x.append(ex)
        want_lsf.append(el)
    np.testing.assert_allclose(x, np.concatenate(want_x), rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(lsf, np.concatenate(want_lsf))
    assert batches[0]["x"].dtype == np.float32 and batches[0]["lsf"].shape[1:] == (3, 16)


def test_dataset_shuffle_deterministic_and_repeat(built):
    _, cache = built
    n = cache.num_frames("train")

    def first(seed, k=3):
        ds = pipeline.make_dataset(cache.directory, "train", 2, seed=seed, repeat=True,
                                   keep_silence=1.0, drop_remainder=True)
        return [b["x"] for b in ds.take(k).as_numpy_iterator()]

    a, b, c = first(7), first(7), first(8)
    assert all(np.array_equal(p, q) for p, q in zip(a, b))
    assert not all(np.array_equal(p, q) for p, q in zip(a, c))
    epochs = pipeline.make_dataset(cache, "train", 2, seed=1, repeat=True, keep_silence=1.0,
                                   drop_remainder=True)
    assert epochs.element_spec["x"].shape.as_list() == [2, 528]
    got = sum(1 for _ in epochs.take(n).as_numpy_iterator())
    assert got == n  # more batches than one epoch holds (n // 2)


def test_silence_dropping(tmp_path):
    root = tmp_path / "corpus"
    os.makedirs(root / "a")
    os.makedirs(root / "b")
    sf.write(root / "a" / "speech.wav", speechlike(0.5, seed=1), 16000)
    sf.write(root / "a" / "quiet.wav", np.zeros(16000, np.float32), 16000)
    sf.write(root / "b" / "speech.wav", speechlike(0.5, seed=2), 16000)
    utts = corpora.discover(root)
    c = cache_lib.build_cache({"train": utts}, str(tmp_path / "cache"))
    n_all = c.num_frames("train")
    count = lambda keep: sum(len(b["x"]) for b in pipeline.make_dataset(
        c, "train", 8, keep_silence=keep).as_numpy_iterator())
    assert count(1.0) == n_all
    assert count(0.0) == n_all - 34  # the 34 frames of the silent second are dropped
    assert n_all - 34 < count(0.5) < n_all
    with pytest.raises(ValueError, match="keep_silence"):
        pipeline.select_frames(np.ones(3), 2.0, 0)


def test_noise_fn_hook(built):
    _, cache = built

    def noise(x, rng):
        return x + 0.1 * rng.standard_normal(x.shape).astype(np.float32)

    clean = next(pipeline.make_dataset(cache, "train", 4, seed=3).as_numpy_iterator())
    noisy = next(pipeline.make_dataset(cache, "train", 4, seed=3,
                                       noise_fn=noise).as_numpy_iterator())
    np.testing.assert_array_equal(clean["x"], noisy["x"])
    assert 0.05 < np.std(noisy["x_noisy"] - noisy["x"]) < 0.15
    with pytest.raises(TypeError, match="callable"):
        pipeline.make_dataset(cache, "train", 4, noise_fn=3)
    with pytest.raises(ValueError, match="noise_fn returned shape"):
        pipeline.make_dataset(cache, "train", 4, noise_fn=lambda x, rng: x[:, :10])


def test_dataset_bad_arguments(built):
    _, cache = built
    with pytest.raises(ValueError, match="split 'dev'"):
        pipeline.make_dataset(cache, "dev", 4)
    with pytest.raises(ValueError, match="batch_size"):
        pipeline.make_dataset(cache, "train", 0)
    with pytest.raises(ValueError, match="not enough"):
        pipeline.make_dataset(cache, "val", 10_000, drop_remainder=True)
