"""The many-voices corpus (issue 14, item 3): split rules, package layouts, trimming, manifest."""

import json
import os

import numpy as np
import pytest
import soundfile as sf

from cq_codec.data import corpora, demo, splits
from cq_codec.data import voices as V
from test_corpora import _fake_package as _fake_demo_package
from conftest import speechlike


def test_voice_split_holds_out_whole_voices_and_languages():
    assert V.voice_split("klettres-data", "klettres-de", "de") == "test"
    assert V.voice_split("ktuberling-data", "ktuberling-el", "el") == "test"
    assert V.voice_split("klettres-data", "klettres-nl", "nl") == "val"
    assert V.voice_split("ktuberling-data", "ktuberling-ga", "ga") == "val"
    assert V.voice_split("klettres-data", "klettres-en_GB", "en") == "train"
    assert V.voice_split("hedgewars-data", "hedgewars-Pirate", "en") == "test"
    assert V.voice_split("hedgewars-data", "hedgewars-Mobster", "en") == "val"
    assert V.voice_split("hedgewars-data", "hedgewars-Default", "en") == "train"
    assert V.voice_split("megaglest-data", "megaglest-indian-archer", "en") == "test"
    assert V.voice_split("megaglest-data", "megaglest-egypt-archer", "en") == "val"
    assert V.voice_split("megaglest-data", "megaglest-romans-archer", "en") == "train"
    assert V.voice_split("warmux-data", "warmux", "en") == "train"


def test_trim_and_level():
    sr = 16000
    word = speechlike(0.6, sr, seed=3).astype(np.float32) * 0.5
    x = np.concatenate([np.zeros(sr), word, np.zeros(sr)]).astype(np.float32)
    y = V.trim_and_level(x)
    # one second of silence either side trimmed to at most the 50 ms pad (+ one 10 ms frame)
    assert len(word) <= len(y) <= len(word) + 2 * int((V.PAD_SECONDS + 0.01) * sr)
    assert np.max(np.abs(y)) <= V.MAX_PEAK + 1e-6
    loud = V.trim_and_level(np.clip(word * 10, -1, 1))
    assert np.max(np.abs(loud)) == pytest.approx(V.MAX_PEAK, rel=1e-5)   # scaled down to -1 dBFS
    assert V.trim_and_level(np.zeros(sr, np.float32)) is None
    assert V.trim_and_level(word * 1e-4) is None                        # below -50 dBFS active level


def _fake_voice_package(package, tmp, say, updated):
    """A tiny unpacked tree in each voice package's real layout."""
    root = os.path.join(tmp, package)
    usr = os.path.join(root, "usr", "share")
    os.makedirs(os.path.join(usr, "doc", package))
    with open(os.path.join(usr, "doc", package, "copyright"), "w") as f:
        f.write(f"copyright of {package}\n")
    files = {
        "klettres-data": [("klettres/de/alpha/a.ogg", 44100), ("klettres/cs/syllab/ba.ogg", 44100),
                          ("klettres/nl/alpha/b.ogg", 44100)],
        "ktuberling-data": [("ktuberling/sounds/el/hat.ogg", 44100), ("ktuberling/sounds/fr/low.ogg", 8000),
                            ("ktuberling/sounds/ru/eye.ogg", 22050), ("ktuberling/sounds/es/no.ogg", 44100)],
        "hedgewars-data": [("games/hedgewars/Data/Sounds/voices/Pirate/Hello.ogg", 44100),
                           ("games/hedgewars/Data/Sounds/voices/Robot/Hello.ogg", 44100),
                           ("games/hedgewars/Data/Sounds/voices/Default/Ow.ogg", 44100)],
        "megaglest-data": [("games/megaglest/techs/megapack/factions/romans/units/archer/sounds/archer_ack1.wav", 22050),
                           ("games/megaglest/techs/megapack/factions/romans/units/archer/sounds/archer_attack1.wav", 22050),
                           ("games/megaglest/techs/magitech/factions/romans/units/archer/sounds/archer_ack1.wav", 22050)],
        "unknown-horizons": [("unknown-horizons/content/audio/voice/de/0/new_world/0.ogg", 44100)],
        "supertux-data": [("games/supertux2/speech/tux_hello.ogg", 44100)],
        "warmux-data": [("games/warmux/sound/default/voices/default/death1.ogg", 44100)],
    }[package]
    for i, (rel, sr) in enumerate(files):
        path = os.path.join(usr, rel)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        # the two megaglest copies of archer_ack1 are the same bytes (a duplicate to drop)
        seed = 7 if "archer_ack1" in rel else i + 10 * len(package)
        x = np.concatenate([np.zeros(sr // 4), speechlike(0.8, sr, seed=seed) * 0.3, np.zeros(sr // 4)])
        sf.write(path, x, sr, format="WAV" if rel.endswith(".wav") else "OGG",
                 subtype="PCM_16" if rel.endswith(".wav") else "VORBIS")
    return root


@pytest.mark.skipif(not __import__("shutil").which("ffmpeg"), reason="needs ffmpeg")
def test_many_voices_build_offline(tmp_path, monkeypatch):
    fake = lambda package, *a: (_fake_voice_package if package in V.VOICE_PACKAGES else _fake_demo_package)(package, *a)
    monkeypatch.setattr(demo, "_fetch", fake)
    out = tmp_path / "many"
    m = demo.build_demo_corpus(str(out), say=lambda msg: None, voices="many")
    speakers = {e["speaker"]: e["split"] for e in m["files"]}
    # the demo's own rules hold (today's test voices stay in test)
    assert speakers["it-it_X_f_Voice"] == "test" and speakers["cs-small-fish"] == "test"
    assert speakers["klettres-de"] == "test" and speakers["klettres-nl"] == "val"
    assert speakers["klettres-cs"] == "train" and speakers["ktuberling-el"] == "test"
    assert speakers["hedgewars-Pirate"] == "test" and speakers["hedgewars-Default"] == "train"
    assert "hedgewars-Robot" not in speakers            # vocoded voice skipped
    assert "ktuberling-fr" not in speakers              # 8 kHz source dropped
    assert "ktuberling-es" not in speakers              # language not taken from ktuberling
    mega = [e for e in m["files"] if e["source"] == "megaglest-data"]
    assert len(mega) == 1                               # attack sound skipped, duplicate dropped
    for e in m["files"]:
        info = sf.info(out / e["file"])
        assert (info.samplerate, info.channels) == (16000, 1)
    assert m["voices"] == "many" and set(V.VOICE_PACKAGES) <= set(m["packages"])
    assert m["holdout"]["test"]["languages"] == ["it", "de", "el"]
    for package, licence in V.VOICE_LICENCES.items():
        text = (out / f"LICENSE-{package}-{licence.replace(' / ', '_')}.txt").read_text()
        assert licence in text and f"copyright of {package}" in text
    parts = splits.split_utterances(corpora.discover(out))
    seen = [{u.speaker for u in parts[k]} for k in splits.SPLITS]
    assert not (seen[0] & seen[1]) and not (seen[0] & seen[2]) and not (seen[1] & seen[2])
    # a second build reuses the demo packages' clips of the first and writes the same manifest
    again = demo.build_demo_corpus(str(tmp_path / "again"), say=lambda msg: None, voices="many", reuse=str(out))
    assert [e["file"] for e in again["files"]] == [e["file"] for e in m["files"]]
    assert json.loads((tmp_path / "again" / "manifest.json").read_text())["splits"] == m["splits"]


def test_unknown_voice_set_is_refused(tmp_path):
    with pytest.raises(ValueError, match="voices must be one of"):
        demo.build_demo_corpus(str(tmp_path / "x"), voices="lots")
