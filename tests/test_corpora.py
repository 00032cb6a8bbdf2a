"""Corpus discovery, speaker ids, splits and robust audio reading on generated fixtures."""

import json
import logging
import os

import numpy as np
import pytest
import soundfile as sf

from conftest import speechlike, write_broken
from cq_codec.data import audio, corpora, demo, splits


def _speakers(utts):
    return sorted({u.speaker for u in utts})


# ---- discovery -------------------------------------------------------------------------

@pytest.mark.parametrize("lower", [False, True])
def test_timit_discovery_both_cases_drops_sa(corpus_factory, lower):
    root = corpus_factory("timit", lower=lower)
    assert corpora.detect_corpus(root) == "timit"
    utts = corpora.discover(root)
    assert len(utts) == 8 * 2  # 8 speakers x (SI, SX); SA1 left out, .PHN ignored
    assert not any(os.path.basename(u.path).lower().startswith("sa") for u in utts)
    assert _speakers(utts) == sorted(["FCJF0", "MDAC0", "FAEM0", "MADC0", "FALK0",
                                      "MDAB0", "FPAS0", "MHMR0"])
    assert {u.subset for u in utts if u.speaker == "MDAB0"} == {"test"}
    assert {u.subset for u in utts if u.speaker == "FCJF0"} == {"train"}
    with_sa = corpora.discover(root, include_sa=True)
    assert len(with_sa) == 8 * 3


def test_timit_sphere_reads_as_16k(corpus_factory):
    root = corpus_factory("timit")
    u = corpora.discover(root)[0]
    assert sf.info(u.path).format == "NIST"
    x = audio.load_audio(u.path)
    assert x.dtype == np.float32 and x.ndim == 1 and len(x) == 4000


@pytest.mark.parametrize("version,ext", [("0.80", ".wav"), ("0.92", ".flac")])
def test_vctk_both_layouts(corpus_factory, version, ext, caplog):
    root = corpus_factory("vctk", version=version)
    assert corpora.detect_corpus(root) == "vctk"
    with caplog.at_level(logging.WARNING):
        utts = corpora.discover(root)
    assert not caplog.records  # mic2 is expected, not "ignored"
    assert len(utts) == 8 and _speakers(utts) == ["p225", "p226", "p227", "p228"]
    assert all(u.path.endswith(ext) for u in utts)
    assert all("mic2" not in u.path for u in utts)
    x = audio.load_audio(utts[0].path)  # 48 kHz -> 16 kHz
    assert len(x) == round(0.2 * 16000)


def test_librispeech_discovery(corpus_factory):
    root = corpus_factory("librispeech")
    assert corpora.detect_corpus(root) == "librispeech"
    utts = corpora.discover(root)
    assert len(utts) == 10 and _speakers(utts) == ["19", "26", "32", "39", "40"]
    assert all(os.path.basename(u.path).startswith(u.speaker + "-") for u in utts)


def test_folder_any_rate_and_channels(corpus_factory):
    root = corpus_factory("folder")
    assert corpora.detect_corpus(root) == "folder"
    utts = corpora.discover(root)
    assert _speakers(utts) == ["alice", "bob", "carol", "dave"] and len(utts) == 5
    for u in utts:
        x = audio.load_audio(u.path)
        assert x.ndim == 1 and x.dtype == np.float32
        assert abs(len(x) - 0.2 * 16000) <= 1, u.path


def test_stereo_48k_resampled_content(tmp_path):
    """Downmix is the channel mean and soxr keeps a 1 kHz tone at 1 kHz."""
    t = np.arange(48000) / 48000
    tone = 0.5 * np.sin(2 * np.pi * 1000 * t)
    sf.write(tmp_path / "s.wav", np.stack([tone, 0.5 * tone], 1), 48000)
    x = audio.load_audio(tmp_path / "s.wav")
    assert len(x) == 16000
    ref = 0.375 * np.sin(2 * np.pi * 1000 * np.arange(16000) / 16000)
    err = x[500:-500] - ref[500:-500]
    assert np.max(np.abs(err)) < 1e-2


def test_auto_explicit_corpus_agree(corpus_factory):
    root = corpus_factory("librispeech")
    assert corpora.discover(root) == corpora.discover(root, corpus="librispeech")


# ---- errors and skipping ---------------------------------------------------------------

def test_missing_directory_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        corpora.discover(tmp_path / "nope")


def test_directory_without_audio_error(tmp_path):
    (tmp_path / "readme.txt").write_text("hello")
    with pytest.raises(ValueError, match="no audio files"):
        corpora.discover(tmp_path)
    with pytest.raises(ValueError, match="no timit audio"):
        corpora.discover(tmp_path, corpus="timit")


def test_unknown_corpus_name(tmp_path):
    with pytest.raises(ValueError, match="unknown corpus"):
        corpora.discover(tmp_path, corpus="wsj")


def test_broken_files_skipped_and_counted(corpus_factory, tmp_path, caplog):
    root = corpus_factory("folder")
    bad = write_broken(os.path.join(root, "bob", "broken.wav"))
    empty = os.path.join(root, "carol", "empty.flac")
    sf.write(empty, np.zeros((0,), np.float32), 16000)
    utts = corpora.discover(root)
    assert len(utts) == 7
    reader = corpora.AudioReader(utts)
    with caplog.at_level(logging.WARNING):
        got = list(reader)
    assert len(got) == 5 and reader.loaded == 5
    assert sorted(p for p, _ in reader.skipped) == sorted([bad, empty])
    reasons = dict(reader.skipped)
    assert "decode" in reasons[bad] and "empty" in reasons[empty]
    text = caplog.text
    assert bad in text and empty in text and "skipped 2 of 7" in text


def test_load_audio_errors(tmp_path):
    with pytest.raises(audio.AudioError, match="no such file"):
        audio.load_audio(tmp_path / "missing.wav")
    with pytest.raises(ValueError, match="positive"):
        audio.resample(np.zeros(10), 0, 16000)
    with pytest.raises(ValueError, match="channels"):
        audio.to_mono(np.zeros((2, 2, 2)))


# ---- splits ----------------------------------------------------------------------------

def _assert_disjoint(parts):
    spk = {k: {u.speaker for u in v} for k, v in parts.items()}
    assert not spk["train"] & spk["val"] and not spk["train"] & spk["test"]
    assert not spk["val"] & spk["test"]


def test_speaker_split_disjoint_deterministic_and_complete():
    spk = [f"s{i:03d}" for i in range(50)]
    a = splits.split_speakers(spk, 0.1, 0.2, seed=3)
    assert a == splits.split_speakers(list(reversed(spk)), 0.1, 0.2, seed=3)
    assert a != splits.split_speakers(spk, 0.1, 0.2, seed=4)
    assert (len(a["val"]), len(a["test"]), len(a["train"])) == (5, 10, 35)
    assert sorted(a["train"] + a["val"] + a["test"]) == spk
    with pytest.raises(ValueError, match="val_fraction"):
        splits.split_speakers(spk, 1.5, 0.1)
    with pytest.raises(ValueError, match="< 1"):
        splits.split_speakers(spk, 0.5, 0.5)


@pytest.mark.parametrize("layout", ["vctk", "librispeech", "folder"])
def test_split_utterances_disjoint(corpus_factory, layout):
    utts = corpora.discover(corpus_factory(layout))
    parts = splits.split_utterances(utts, 0.25, 0.25, seed=0)
    _assert_disjoint(parts)
    assert all(parts[k] for k in splits.SPLITS)
    assert sum(len(v) for v in parts.values()) == len(utts)
    assert parts == splits.split_utterances(list(reversed(utts)), 0.25, 0.25, seed=0)


@pytest.mark.parametrize("core", [False, True])
def test_timit_split_uses_its_own_partition(corpus_factory, core):
    utts = corpora.discover(corpus_factory("timit"))
    parts = splits.split_utterances(utts, val_fraction=0.2, seed=1, timit_core_test=core)
    _assert_disjoint(parts)
    test_spk = {u.speaker for u in parts["test"]}
    assert test_spk == ({"MDAB0", "FPAS0"} if core else {"MDAB0", "FPAS0", "MHMR0"})
    assert all(u.subset == "train" for u in parts["train"] + parts["val"])
    assert len({u.speaker for u in parts["val"]}) == 1
    assert len(splits.TIMIT_CORE_TEST_SPEAKERS) == 24


def test_demo_manifest_split(tmp_path):
    files = []
    for i, (spk, lang, split) in enumerate([("en-a", "en", "train"), ("fr-b", "fr", "val"),
                                            ("it-c", "it", "test"), ("cs-m", "cs", "train")]):
        rel = f"{split}/{spk}/x{i}.wav"
        os.makedirs(tmp_path / split / spk, exist_ok=True)
        sf.write(tmp_path / rel, speechlike(0.6, seed=i), 16000, subtype="PCM_16")
        files.append({"file": rel, "speaker": spk, "language": lang, "split": split,
                      "seconds": 0.6})
    (tmp_path / "manifest.json").write_text(json.dumps({"files": files}))
    assert corpora.detect_corpus(tmp_path) == "demo"
    utts = corpora.discover(tmp_path)
    parts = splits.split_utterances(utts)
    assert [len(parts[k]) for k in splits.SPLITS] == [2, 1, 1]
    assert parts["val"][0].language == "fr"


def test_demo_split_rule():
    assert demo.czech_speaker("/x/gods/cs/b1-voda1.ogg") == "cs-gods"
    assert demo.czech_speaker("/x/city/cs/vit-m-hlava.ogg") == "cs-small-fish"
    assert demo.czech_speaker("/x/gods/cs/lod-v-golf.ogg") == "cs-big-fish"
    assert demo.czech_speaker("/x/linux/cs/v-chytra.ogg") == "cs-big-fish"
    assert demo.demo_split("cs", "cs-small-fish") == "test"
    assert demo.demo_split("cs", "cs-briefcase") == "val"
    assert demo.demo_split("cs", "cs-big-fish") == "train"
    assert [demo.demo_split(lang, "x") for lang in ("en", "es", "fr", "it")] == [
        "train", "train", "val", "test"]
    with pytest.raises(ValueError, match="language"):
        demo.demo_split("de", "x")


def test_demo_build_skips_when_present(tmp_path):
    (tmp_path / "manifest.json").write_text(json.dumps(
        {"files": [], "splits": {"train": {"minutes": 1.0}}}))
    said = []
    m = demo.build_demo_corpus(str(tmp_path), say=said.append)
    assert m["splits"]["train"]["minutes"] == 1.0
    assert "nothing to do" in said[0]


def test_demo_build_without_tools(tmp_path, monkeypatch):
    monkeypatch.setattr(demo.shutil, "which", lambda name: None)
    with pytest.raises(demo.DemoCorpusError, match="--data_dir"):
        demo.build_demo_corpus(str(tmp_path / "out"), say=lambda m: None)


def _fake_package(package, tmp, say, updated):
    """Stands in for apt-get download + dpkg -x: a tiny unpacked package tree."""
    import subprocess
    root = os.path.join(tmp, package)
    lang = demo.DEMO_PACKAGES[package]
    doc = os.path.join(root, "usr", "share", "doc", package)
    os.makedirs(doc)
    with open(os.path.join(doc, "copyright"), "w") as f:
        f.write(f"copyright of {package}\n")
    if lang == "cs":
        base = os.path.join(root, "usr", "share", "games", "fillets-ng", "sound")
        for i, (level, name, sec) in enumerate([("city", "vit-m-hlava", 0.6),
                                                ("city", "vit-v-proc", 0.7),
                                                ("gods", "b1-voda1", 0.6),
                                                ("briefcase", "kd-help1", 0.6),
                                                ("city", "vit-hs-short", 0.3)]):
            os.makedirs(os.path.join(base, level, "cs"), exist_ok=True)
            sf.write(os.path.join(base, level, "cs", name + ".ogg"),
                     speechlike(sec, 22050, 2 if i == 1 else 1, seed=i), 22050)
    else:
        voice = os.path.join(root, "usr", "share", "asterisk", "sounds", f"{lang}_X_f_Voice")
        for sub, sec in (("digits", 0.6), ("", 0.7), ("silence", 1.0)):
            os.makedirs(os.path.join(voice, sub), exist_ok=True)
            wav = os.path.join(tmp, "src.wav")
            sf.write(wav, speechlike(sec, 16000, seed=len(sub)), 16000)
            subprocess.run(["ffmpeg", "-nostdin", "-loglevel", "error", "-y", "-i", wav,
                            "-f", "g722", os.path.join(voice, sub, f"p{len(sub)}.g722")],
                           check=True)
    return root


@pytest.mark.skipif(not __import__("shutil").which("ffmpeg"), reason="needs ffmpeg")
def test_demo_build_offline(tmp_path, monkeypatch):
    monkeypatch.setattr(demo, "_fetch", _fake_package)
    out = tmp_path / "demo"
    m = demo.build_demo_corpus(str(out), say=lambda msg: None)
    by_split = {k: sorted({e["speaker"] for e in m["files"] if e["split"] == k})
                for k in splits.SPLITS}
    assert by_split == {
        "train": ["cs-big-fish", "en-en_X_f_Voice", "es-es_X_f_Voice"],
        "val": ["cs-briefcase", "fr-fr_X_f_Voice"],
        "test": ["cs-gods", "cs-small-fish", "it-it_X_f_Voice"]}
    assert len(m["files"]) == 4 * 2 + 4  # silence folder and the 0.3 s clip are skipped
    for e in m["files"]:
        info = sf.info(out / e["file"])
        assert (info.samplerate, info.channels, info.subtype) == (16000, 1, "PCM_16")
        assert e["seconds"] >= demo.MIN_SECONDS
    assert "Digium" in (out / "LICENSE-asterisk-CC-BY-SA-3.0.txt").read_text()
    fillets = (out / "LICENSE-fillets-ng-GPL-2+.txt").read_text()
    assert "GPL" in fillets and "copyright of fillets-ng-data-cs" in fillets
    utts = corpora.discover(out)
    assert corpora.detect_corpus(out) == "demo" and len(utts) == len(m["files"])
    parts = splits.split_utterances(utts)
    _assert_disjoint(parts)
