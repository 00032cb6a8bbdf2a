"""The cq-codec CLI: round trips (in process and through a real subprocess pipe) and clean failures."""

import os
import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf

from cq_codec import __main__ as cli
from cq_codec import api
from cq_codec.bitstream.container import read_nac, write_nac_v1
from test_api import ar_signal, make_model

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    d = tmp_path_factory.mktemp("models")
    make_model(0).save(str(d / "a.keras"))
    make_model(1).save(str(d / "b.keras"))
    return str(d / "a.keras"), str(d / "b.keras")


@pytest.fixture
def wav16(tmp_path):
    path = str(tmp_path / "in.wav")
    sf.write(path, ar_signal(0.6, 2), 16000)
    return path


def run(capsys, *argv):
    code = cli.main(list(argv))
    return code, capsys.readouterr().err


def assert_no_output(directory, name):
    left = [f for f in os.listdir(directory) if f == name or f.endswith(".part")]
    assert not left, f"half-written output left behind: {left}"


def test_round_trip_in_process(models, wav16, tmp_path, capsys):
    nac, out = str(tmp_path / "x.nac"), str(tmp_path / "y.wav")
    assert run(capsys, "encode", wav16, nac, "--model", models[0]) == (0, "")
    code, _ = run(capsys, "decode", nac, out, "--model", models[0])
    assert code == 0
    y, sr = sf.read(out)
    assert sr == 16000 and len(y) == sf.info(wav16).frames
    plain = str(tmp_path / "plain.wav")
    assert run(capsys, "decode", nac, plain, "--model", models[0], "--no-postfilter")[0] == 0
    want, _ = api.load(models[0], postfilter=False).decompress(open(nac, "rb").read())
    got, _ = sf.read(plain, dtype="float32")
    np.testing.assert_allclose(got, np.clip(want, -1, 1), atol=1.5 / 32768)   # PCM_16 rounding
    assert not np.allclose(got, y.astype(np.float32), atol=1.5 / 32768)    # the default postfilters
    assert cli.main(["info", nac]) == 0
    printed = capsys.readouterr().out
    assert '"num_samples": 9600' in printed and "version: 2" in printed and '"name": "a"' in printed


def test_info_reads_version_1_files(tmp_path, capsys):
    path = tmp_path / "old.nac"
    path.write_bytes(write_nac_v1({"num_samples": 8000, "sample_rate": 16000, "note": "v1"}, [b"abcd"], 1.0))
    assert cli.main(["info", str(path)]) == 0
    printed = capsys.readouterr().out
    assert "version: 1" in printed and "duration_s: 0.5" in printed and '"note": "v1"' in printed


def test_resample_notice_and_bitrate_choice(models, tmp_path, capsys):
    src = str(tmp_path / "st.wav")
    sf.write(src, np.stack([ar_signal(0.3, 1), ar_signal(0.3, 2)], 1), 44100)
    nac = str(tmp_path / "x.nac")
    code, err = run(capsys, "encode", src, nac, "--model", models[0], "--bitrate", "1")
    assert code == 0
    assert "44100 Hz" in err and "downmixed to mono" in err and "resampled to 16000 Hz" in err
    assert "operating point 1 module(s)" in err
    _, meta, _ = read_nac(open(nac, "rb").read())
    assert meta["stages"] == [1] and abs(meta["num_samples"] - 4800 * 16000 / 44100) <= 1   # resampled


def test_input_errors_exit_nonzero_without_output(models, tmp_path, capsys, monkeypatch):
    out = str(tmp_path / "o.nac")
    bad = tmp_path / "bad.wav"
    bad.write_bytes(b"definitely not audio" * 10)
    empty = str(tmp_path / "empty.wav")
    sf.write(empty, np.zeros(0, np.float32), 16000)
    cases = [((str(tmp_path / "missing.wav"),), "no such file"), ((str(bad),), "not a readable audio file"),
             ((empty,), "non-empty")]
    for (src,), message in cases:
        code, err = run(capsys, "encode", src, out, "--model", models[0])
        assert code == 1 and message in err and err.startswith("cq-codec: error:")
        assert_no_output(tmp_path, "o.nac")
    monkeypatch.setattr(api, "DEFAULT_MODEL_PATH", str(tmp_path / "gone" / "default.keras"))
    code, err = run(capsys, "encode", empty, out)          # no --model and the default model missing
    assert code == 1 and "default.keras" in err and "--model" in err


def test_bad_nac_files_exit_nonzero_without_output(models, tmp_path, capsys):
    src = str(tmp_path / "long.wav")
    sf.write(src, ar_signal(1.2, 3), 16000)
    nac = str(tmp_path / "x.nac")
    assert cli.main(["encode", src, nac, "--model", models[0], "--frames-per-chunk", "8"]) == 0
    data = open(nac, "rb").read()
    _, meta, chunks = read_nac(data)
    assert meta["num_chunks"] == len(chunks) == 5
    damaged_last = bytearray(data)
    damaged_last[-3] ^= 1                                  # the last chunk: earlier ones decode first
    version = bytearray(data)
    version[3] = 9
    cases = {"damaged.nac": (bytes(damaged_last), "chunk 4", models[0]),
             "trunc.nac": (data[:-10], "truncated", models[0]),
             "version.nac": (bytes(version), "unsupported .nac version 9", models[0]),
             "other.nac": (data, "model mismatch", models[1]),
             "notnac.nac": (b"RIFF" + data[4:], "not a .nac file", models[0])}
    for name, (blob, message, model) in cases.items():
        path = tmp_path / name
        path.write_bytes(blob)
        code, err = run(capsys, "decode", str(path), str(tmp_path / "out.wav"), "--model", model)
        assert code == 1 and message in err, (name, err)
        assert_no_output(tmp_path, "out.wav")
    code, err = run(capsys, "info", str(tmp_path / "trunc.nac"))
    assert code == 1 and "truncated" in err


def test_usage_error_exits_2():
    with pytest.raises(SystemExit) as e:
        cli.main(["encode"])
    assert e.value.code == 2


def test_subprocess_stdin_stdout_encode(models, wav16, capsys):
    """A real process (`python -m cq_codec`) reading stdin and writing the .nac to stdout."""
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=ROOT)
    with open(wav16, "rb") as src:
        proc = subprocess.run([sys.executable, "-m", "cq_codec", "encode", "-", "-", "--model", models[0]],
                              stdin=src, capture_output=True, env=env, cwd=ROOT, timeout=300)
    assert proc.returncode == 0, proc.stderr.decode()
    _, meta, _ = read_nac(proc.stdout)
    assert meta["num_samples"] == sf.info(wav16).frames
    from cq_codec import api
    y, sr = api.load(models[0]).decompress(proc.stdout)
    assert sr == 16000 and len(y) == meta["num_samples"] and np.abs(y).max() > 0
    failed = subprocess.run([sys.executable, "-m", "cq_codec", "info", "-"], input=proc.stdout[:-1],
                            capture_output=True, env=env, cwd=ROOT, timeout=120)
    assert failed.returncode == 1 and b"truncated" in failed.stderr
