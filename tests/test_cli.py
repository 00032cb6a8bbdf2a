"""The cq-codec CLI: round trips (in process and through a real subprocess pipe) and clean failures."""

import io
import os
import struct
import subprocess
import sys
import zlib

import numpy as np
import pytest
import soundfile as sf

from cq_codec import __main__ as cli
from cq_codec import api
from cq_codec.bitstream.container import NacError, read_nac, write_nac_v1
from test_api import ar_signal, make_model
from test_bitstream import time_limit

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
    assert '"num_samples": 9600' in printed and "version: 3" in printed and '"name": "a"' in printed


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



def v2_header(model_id: bytes, num_samples: int, fpc: int, modules: int = 1) -> bytes:
    head = b"NAC\x02" + struct.pack(">8s5sBHBBB", model_id, num_samples.to_bytes(5, "big"), modules, fpc, 1, 4, 1) + b"a"
    return head + struct.pack(">I", zlib.crc32(head))


def v3_header(model_id: bytes, num_samples: int, fpc: int, modules: int = 1) -> bytes:
    body = struct.pack(">8s5sBHB", model_id, num_samples.to_bytes(5, "big"), 1, fpc, modules) + bytes(modules) + b"\x01a"
    head = struct.pack(">3sBIB", b"NAC", 3, len(body) + 4, 4) + body
    return head + struct.pack(">I", zlib.crc32(head))


EMPTY_CHUNK = struct.pack(">II", 0, zlib.crc32(b""))


def bombs(model_sha: str) -> dict:
    """Decompression bombs with valid CRCs: many hops declared, no payload -> the message refusing each."""
    mid = bytes.fromhex(model_sha[:16])
    return {
        # issue 19's 90-byte file: one chunk of 65,535 hops (32.8 min), empty payload (version 2).
        "v2_65535_hops": (v2_header(mid, 65535 * 480, 65535) + EMPTY_CHUNK, "exceeds the decoder's limit 4096"),
        # the largest chunk the format allows (2 modules), an empty payload
        "v3_4096_hops": (v3_header(mid, 4096 * 480, 4096, 2) + EMPTY_CHUNK, "which need at least"),
        # 2**40 - 1 samples (2.2 years) in 4096-hop chunks: 40 empty chunks follow
        "v3_huge_count": (v3_header(mid, 2 ** 40 - 1, 4096) + EMPTY_CHUNK * 40, "declares 559241 chunks"),
        # one-hop chunks: the file is far too short for the 2**31 chunks declared
        "v3_one_hop_chunks": (v3_header(mid, 480 * 2 ** 31, 1) + EMPTY_CHUNK * 40, "declares 2147483648 chunks"),
    }


def test_decompression_bombs_are_refused_before_decoding(models, tmp_path, capsys):
    codec = api.load(models[0])
    for name, (blob, message) in bombs(codec.sha256).items():
        with time_limit(10):                   # a hang guard, not a timing assertion (refused in ms)
            with pytest.raises(NacError, match=message):
                codec.decompress(blob)
            path = tmp_path / f"{name}.nac"
            path.write_bytes(blob)
            code, err = run(capsys, "decode", str(path), str(tmp_path / "out.wav"), "--model", models[0])
        assert code == 1 and message in err, (name, err)
        assert_no_output(tmp_path, "out.wav")
    # Streamed (not seekable: no file size known) the chunk's own size refuses it before decoding it.
    blob = v3_header(bytes.fromhex(codec.sha256[:16]), 4096 * 480, 4096, 2) + EMPTY_CHUNK
    _, blocks = codec.decompress_blocks(Unseekable(blob))
    with pytest.raises(NacError, match="chunk 0: a 0-byte payload cannot hold 4096 hops"):
        next(blocks)


class Unseekable(io.RawIOBase):
    def __init__(self, data: bytes):
        self._f = io.BytesIO(data)

    def readable(self):
        return True

    def readinto(self, b):
        return self._f.readinto(b)
