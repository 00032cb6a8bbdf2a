"""Tests for cq_codec.evaluation.baselines: real Opus, AMR-WB and Speex-WB round trips."""

import math
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf
import soxr

from cq_codec.evaluation import baselines
from cq_codec.evaluation.metrics import measured_kbps, score

FIXTURE = os.path.join(os.path.dirname(__file__), "fixtures", "real_speech.wav")
SR = 16000
MIDDLE = {"opus": 16.0, "amrwb": 15.85, "speex": 16.8}
ALL_RATES = [("opus", 9.0), ("opus", 16.0), ("opus", 24.0), ("amrwb", 8.85), ("amrwb", 15.85),
             ("amrwb", 23.85), ("speex", 9.8), ("speex", 16.8), ("speex", 23.8)]


@pytest.fixture(scope="module")
def speech(tmp_path_factory):
    """About 2 s of speech, float32 16 kHz `[N]`: the real fixture, else espeak-ng."""
    if os.path.exists(FIXTURE):
        x, sr = sf.read(FIXTURE, dtype="float32")
    else:
        if shutil.which("espeak-ng") is None:
            pytest.skip("neither tests/fixtures/real_speech.wav nor espeak-ng is available")
        path = str(tmp_path_factory.mktemp("tts") / "s.wav")
        subprocess.run(["espeak-ng", "-w", path, "The quick brown fox jumps over the lazy dog."],
                       check=True, capture_output=True)
        x, sr = sf.read(path, dtype="float32")
    if sr != SR:
        x = soxr.resample(x, sr, SR)
    return np.asarray(x[:2 * SR + 123], dtype=np.float32)  # not a whole number of frames


@pytest.mark.parametrize("name,kbps", ALL_RATES)
def test_round_trip_length_finite_and_bitrate(speech, name, kbps):
    codec = baselines.get_baseline(name, kbps)
    decoded, num_bytes = codec.encode_decode(speech)
    assert decoded.shape == speech.shape and decoded.dtype == np.float32
    assert np.all(np.isfinite(decoded))
    assert codec.last_stats["payload_bytes"] == num_bytes <= codec.last_stats["file_bytes"]
    measured = measured_kbps(num_bytes, speech.size, SR)
    assert abs(measured - kbps) / kbps < 0.15, (name, kbps, measured)


@pytest.mark.parametrize("name", sorted(MIDDLE))
def test_middle_rate_quality_and_delay_compensated(speech, name):
    decoded, _ = baselines.get_baseline(name, MIDDLE[name]).encode_decode(speech)
    result = score(speech, decoded, name=name)
    assert result["pesq_wb"] > 2.0
    assert abs(result["delay_samples"]) <= 2  # the codec's own delay was removed
    assert result["stoi"] > 0.9


@pytest.mark.parametrize("kbps,seconds", [(9.8, 1.0), (9.8, 2.0), (23.8, 1.0), (23.8, 2.0)])
def test_speex_delay_removed_on_one_page_and_many(speech, kbps, seconds):
    # speexdec trims the lookahead only when the audio spans several Ogg pages.
    clip = speech[:int(seconds * SR)]
    decoded, _ = baselines.get_baseline("speex", kbps).encode_decode(clip)
    assert abs(score(clip, decoded)["delay_samples"]) <= 2


def test_payload_counts_are_exact(speech):
    # AMR-WB 15.85 kbps: 317 bits -> 40 bytes + 1 header byte per 20 ms frame.
    amr = baselines.get_baseline("amrwb", 15.85)
    _, num_bytes = amr.encode_decode(speech)
    frames = -(-(speech.size + amr.delay_samples) // 320)
    assert num_bytes == 41 * frames
    assert amr.last_stats["file_bytes"] == num_bytes + len(baselines.AMRWB_MAGIC)
    # Speex-WB quality 5: 336 bits = 42 bytes per 20 ms packet; Ogg pages and headers excluded.
    speex = baselines.get_baseline("speex", 16.8)
    _, num_bytes = speex.encode_decode(speech)
    assert num_bytes % 42 == 0
    assert frames - 1 <= num_bytes // 42 <= frames + 2
    assert speex.last_stats["file_bytes"] > num_bytes + 80  # the 80-byte Speex header at least


def test_ogg_packets_parses_lacing():
    def page(lacing, body):
        return b"OggS" + bytes(22) + bytes([len(lacing)]) + bytes(lacing) + body
    # One 300-byte packet (255 + 45) and a 7-byte one, then a 0-byte packet on a second page.
    data = page([255, 45, 7], bytes(307)) + page([0], b"")
    assert baselines.ogg_packets(data) == [300, 7, 0]
    assert [p[2] for p in baselines.ogg_pages(data)] == [[255, 45, 7], [0]]
    with pytest.raises(ValueError, match="Ogg"):
        baselines.ogg_packets(b"RIFF" + bytes(40))


def test_bad_input_and_unknown_codec(speech):
    opus = baselines.get_baseline("opus", 16)
    with pytest.raises(ValueError, match="1-D"):
        opus.encode_decode(np.stack([speech, speech]))
    with pytest.raises(ValueError, match="empty"):
        opus.encode_decode(np.zeros(0, np.float32))
    with pytest.raises(TypeError, match="float"):
        opus.encode_decode((speech * 32767).astype(np.int16))
    with pytest.raises(ValueError, match="unknown baseline"):
        baselines.get_baseline("mp3", 64)
    with pytest.raises(ValueError, match="no 16.0 kbps mode"):
        baselines.get_baseline("amrwb", 16.0)
    with pytest.raises(ValueError, match="Speex-WB has no"):
        baselines.get_baseline("speex", 16.0)
    with pytest.raises(ValueError, match="Opus bitrate"):
        baselines.get_baseline("opus", 2.0)


def test_all_amrwb_modes_available(speech):
    for kbps in baselines.AMRWB_MODES_KBPS:
        codec = baselines.get_baseline("amrwb", kbps)
        _, num_bytes = codec.encode_decode(speech[:SR // 2])
        assert math.isfinite(measured_kbps(num_bytes, SR // 2))
        assert num_bytes > 0


def test_missing_binary_gives_clear_error(monkeypatch):
    monkeypatch.setattr(baselines.shutil, "which", lambda name: None)
    with pytest.raises(baselines.BaselineUnavailableError, match="apt-get install speex"):
        baselines.get_baseline("speex", 16.8)
    with pytest.raises(baselines.BaselineUnavailableError, match="apt-get install ffmpeg"):
        baselines.get_baseline("amrwb", 15.85)


def test_missing_libraries_give_clear_error(monkeypatch):
    monkeypatch.setattr(baselines, "AMRWB_LIBRARY", "libvo-amrwbenc-missing.so.0")
    with pytest.raises(baselines.BaselineUnavailableError, match="libvo-amrwbenc"):
        baselines.get_baseline("amrwb", 15.85)
    monkeypatch.setitem(sys.modules, "opuslib", None)  # makes `import opuslib` fail
    with pytest.raises(baselines.BaselineUnavailableError, match="apt-get install libopus0"):
        baselines.get_baseline("opus", 16)
