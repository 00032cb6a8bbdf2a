"""The cq-codec CLI: round trips (in process and through a real subprocess pipe) and clean failures."""

import io
import os
import struct
import subprocess
import sys
import zlib

import keras
import numpy as np
import pytest
import soundfile as sf

from cq_codec import __main__ as cli
from cq_codec import api
from cq_codec.bitstream.container import NacError, read_nac, write_nac_v1
from cq_codec.config import Config
from cq_codec.training.trainer import build_model
from test_api import ar_signal, make_model
from tests.conftest import Unseekable
from test_bitstream import time_limit, with_crc

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    d = tmp_path_factory.mktemp("models")
    make_model(0).save(str(d / "a.keras"))
    make_model(1).save(str(d / "b.keras"))
    return str(d / "a.keras"), str(d / "b.keras")


@pytest.fixture(autouse=True)
def loaded_once(monkeypatch):
    """The CLI loads its model on every call; the same (path, options) loads once per session
    here (failures are not cached, so every loader error path still runs)."""
    monkeypatch.setattr(api, "load", _cached_load)


_LOADED = {}
_real_load = api.load


def _cached_load(path=None, frames_per_chunk=250, postfilter=True, backend="keras"):
    key = (path, os.path.getmtime(path) if path and os.path.exists(path) else None, frames_per_chunk, postfilter,
           backend)
    if key not in _LOADED:
        _LOADED[key] = _real_load(path, frames_per_chunk, postfilter, backend)
    return _LOADED[key]


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
    assert '"num_samples": 9600' in printed and "version: 4" in printed and '"name": "a"' in printed


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


@pytest.fixture(scope="module")
def bad_inputs(models, tmp_path_factory):
    """Files for the bad-input table: {name: path}."""
    d = tmp_path_factory.mktemp("bad")
    paths = {}

    def put(name, data):
        paths[name] = str(d / name)
        with open(paths[name], "wb") as f:
            f.write(data)
    rng = np.random.default_rng(0)
    put("noise.txt", b"definitely not audio" * 10)
    sf.write(str(d / "empty.wav"), np.zeros(0, np.float32), 16000)
    sf.write(str(d / "nan.wav"), np.full(1000, np.nan, np.float32), 16000, subtype="FLOAT")
    sf.write(str(d / "ok.wav"), ar_signal(1.2, 3), 16000)
    paths.update({k: str(d / k) for k in ("empty.wav", "nan.wav", "ok.wav")})
    keras_bytes = open(models[0], "rb").read()
    put("truncated.keras", keras_bytes[: len(keras_bytes) // 2])
    put("text.keras", b"not a zip archive\n")
    assert cli.main(["encode", paths["ok.wav"], str(d / "ok.nac"), "--model", models[0], "--frames-per-chunk", "8"]) == 0
    data = open(str(d / "ok.nac"), "rb").read()
    paths["ok.nac"] = str(d / "ok.nac")
    damaged = bytearray(data)
    damaged[-3] ^= 1                                  # the last chunk: earlier ones decode first
    put("damaged.nac", bytes(damaged))
    put("truncated.nac", data[:-10])
    put("version9.nac", data[:3] + b"\x09" + data[4:])
    put("riff.nac", b"RIFF" + data[4:])
    put("empty.nac", b"")
    put("random.nac", rng.bytes(300))
    put("bomb.nac", bombs(api.load(models[0]).identity.legacy)["v2_65535_hops"][0])
    nested = b'{"num_chunks":1,"x":' + b"[" * 100000 + b"]" * 100000 + b"}"
    put("nested_v1.nac", with_crc(b"NAC\x01" + struct.pack(">I", 60000) + b"\x04" + nested[:60000]))
    keras.utils.set_random_seed(0)
    bare = build_model(Config(num_modules=1, channels=8, bottleneck=4, blocks_per_section=1).validate())
    bare.save(str(d / "no_tables.keras"))
    paths["no_tables.keras"] = str(d / "no_tables.keras")
    paths["dir"] = str(d)
    paths["missing"] = str(d / "missing.wav")
    return paths


# The bad-input table: (argv with {placeholders}, stdin bytes or None, exit status, message).
# {a} / {b}: the test models, {out}: the output path (never left behind), other names: `bad_inputs`.
BAD_INPUTS = [
    (["encode", "{missing}", "{out}", "--model", "{a}"], None, 1, "no such file"),
    (["encode", "{dir}", "{out}", "--model", "{a}"], None, 1, "no such file"),
    (["encode", "{noise.txt}", "{out}", "--model", "{a}"], None, 1, "not a readable audio file"),
    (["encode", "{empty.wav}", "{out}", "--model", "{a}"], None, 1, "non-empty"),
    (["encode", "{nan.wav}", "{out}", "--model", "{a}"], None, 1, "NaN or infinite"),
    (["encode", "-", "{out}", "--model", "{a}"], b"", 1, "input 'stdin' is empty: no audio was piped in"),
    (["encode", "-", "{out}", "--model", "{a}"], b"garbage" * 20, 1, "input 'stdin' is not a readable audio file (Format not recognised"),
    (["encode", "{ok.wav}", "{dir}/no/such/dir/x.nac", "--model", "{a}"], None, 1, "does not exist"),
    (["encode", "{ok.wav}", "{dir}", "--model", "{a}"], None, 1, "is a directory"),
    (["encode", "{ok.wav}", "{out}", "--frames-per-chunk", "0"], None, 2, "--frames-per-chunk: 0 is outside 1..4096"),
    (["encode", "{ok.wav}", "{out}", "--frames-per-chunk", "70000"], None, 2, "--frames-per-chunk: 70000 is outside 1..4096"),
    (["encode", "{ok.wav}", "{out}", "--frames-per-chunk", "ten"], None, 2, "--frames-per-chunk: 'ten' is not an integer"),
    (["encode", "{ok.wav}", "{out}", "--model", "{a}", "--bitrate", "-1"], None, 1, "bitrate must be a positive number"),
    (["encode", "{ok.wav}", "{out}", "--model", "{a}", "--bitrate", "nan"], None, 1, "bitrate must be a positive number"),
    (["encode", "{ok.wav}", "{out}", "--model", "{missing}"], None, 1, "not found"),
    (["encode", "{ok.wav}", "{out}", "--model", "{truncated.keras}"], None, 1, "not a .keras (zip) archive; truncated or damaged?"),
    (["encode", "{ok.wav}", "{out}", "--model", "{text.keras}"], None, 1, "not a .keras (zip) archive"),
    (["encode", "{ok.wav}", "{out}", "--model", "{no_tables.keras}"], None, 1, "no entropy tables"),
    (["decode", "{damaged.nac}", "{out}", "--model", "{a}"], None, 1, "chunk 4 at offset"),
    (["decode", "{truncated.nac}", "{out}", "--model", "{a}"], None, 1, "truncated"),
    (["decode", "{version9.nac}", "{out}", "--model", "{a}"], None, 1, "unsupported .nac version 9"),
    (["decode", "{ok.nac}", "{out}", "--model", "{b}"], None, 1, "model mismatch"),
    (["decode", "{riff.nac}", "{out}", "--model", "{a}"], None, 1, "not a .nac file"),
    (["decode", "{empty.nac}", "{out}", "--model", "{a}"], None, 1, "truncated .nac: header needs 4 bytes at offset 0"),
    (["decode", "-", "{out}", "--model", "{a}"], b"", 1, "truncated .nac: header needs 4 bytes at offset 0"),
    (["decode", "{bomb.nac}", "{out}", "--model", "{a}"], None, 1, "exceeds the decoder's limit 4096"),
    (["decode", "{nested_v1.nac}", "{out}", "--model", "{a}"], None, 1, "deep (limit 16)"),
    (["decode", "{missing}", "{out}", "--model", "{a}"], None, 1, "not found"),
    (["info", "{truncated.nac}"], None, 1, "truncated"),
    (["info", "{random.nac}"], None, 1, "not a .nac file"),
    (["info", "{nested_v1.nac}"], None, 1, "deep (limit 16)"),
]


@pytest.mark.parametrize("argv, stdin, status, message", BAD_INPUTS,
                         ids=[f"{i:02d}-{c[0][0]}" for i, c in enumerate(BAD_INPUTS)])
def test_bad_input_table(argv, stdin, status, message, models, bad_inputs, tmp_path, capsys, monkeypatch):
    """Each bad input: the pinned exit status, ONE error line holding the message, no traceback,
    no object reprs, and no output file (not even a half-written one) left behind."""
    names = {**bad_inputs, "a": models[0], "b": models[1], "out": str(tmp_path / "out.file")}
    args = list(argv)
    for placeholder, path in names.items():
        args = [a.replace("{" + placeholder + "}", path) for a in args]
    if stdin is not None:
        monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(stdin)))
    try:
        code = cli.main(args)
    except SystemExit as e:                           # argparse usage errors
        code = e.code
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert code == status, err
    assert message in lines[-1], err
    if status == 1:
        assert len(lines) == 1 and lines[0].startswith("cq-codec: error:"), err
    assert "Traceback" not in err and " object at 0x" not in err
    assert_no_output(tmp_path, "out.file")


def test_output_through_a_symlink_replaces_the_target(models, wav16, tmp_path, capsys):
    """Decided: an output path that is a symbolic link is written through (the link stays, its
    target is replaced atomically), as cp does; a dangling link gets its target created."""
    target, link = tmp_path / "real.nac", tmp_path / "link.nac"
    target.write_bytes(b"old")
    link.symlink_to(target.name)
    assert run(capsys, "encode", wav16, str(link), "--model", models[0]) == (0, "")
    assert link.is_symlink() and os.readlink(link) == "real.nac"
    assert read_nac(target.read_bytes())[0].version == 4
    dangling = tmp_path / "dangling.nac"
    dangling.symlink_to("made.nac")
    assert run(capsys, "encode", wav16, str(dangling), "--model", models[0]) == (0, "")
    assert dangling.is_symlink() and (tmp_path / "made.nac").read_bytes() == target.read_bytes()
    assert not [f for f in os.listdir(tmp_path) if f.endswith(".part")]


def test_closed_stdout_ends_quietly(tmp_path):
    """`cq-codec info x.nac | head -1`: the reader closes the pipe; no 'Broken pipe' error."""
    path = tmp_path / "big.nac"              # info prints > 64 KiB (a pipe's buffer): EPIPE for sure
    path.write_bytes(write_nac_v1({"num_samples": 8000, "sample_rate": 16000, "note": "x" * 65000}, [b"abcd"], 1.0))
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=ROOT)
    proc = subprocess.Popen([sys.executable, "-m", "cq_codec", "info", str(path)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=env, cwd=ROOT)
    proc.stdout.read(1)                       # like head: read a little, then close
    proc.stdout.close()
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 141 and err == ""


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
    for name, (blob, message) in bombs(codec.identity.legacy).items():   # version 2/3 files: the id they carried
        with time_limit(10):                   # a hang guard, not a timing assertion (refused in ms)
            with pytest.raises(NacError, match=message):
                codec.decompress(blob)
            path = tmp_path / f"{name}.nac"
            path.write_bytes(blob)
            code, err = run(capsys, "decode", str(path), str(tmp_path / "out.wav"), "--model", models[0])
        assert code == 1 and message in err, (name, err)
        assert_no_output(tmp_path, "out.wav")
    # Streamed (not seekable: no file size known) the chunk's own size refuses it before decoding it.
    blob = v3_header(bytes.fromhex(codec.identity.legacy[:16]), 4096 * 480, 4096, 2) + EMPTY_CHUNK
    _, blocks = codec.decompress_blocks(Unseekable(blob))
    with pytest.raises(NacError, match="chunk 0: a 0-byte payload cannot hold 4096 hops"):
        next(blocks)


def test_memory_does_not_grow_with_input_length(models):
    """The memory guard (issue 19: a one-hour encode peaked at 946 MB of RSS, 928 MB for ten
    minutes; `scripts/benchmark_codec.py --hours 1` measures that). Here, in process: the Python
    heap's peak (numpy included) while encoding or decoding 64 s is within the compressed size
    plus 1 MiB of that for 16 s: the codec holds one chunk of audio at a time, never the input
    or the output."""
    import tracemalloc
    codec = api.load(models[0])

    def blocks(seconds):
        for k in range(seconds):                       # 1 s blocks, made on demand
            yield ar_signal(1.0, 100 + k).astype(np.float64)

    def peak(fn):
        tracemalloc.start()
        try:
            result = fn()
            return tracemalloc.get_traced_memory()[1], result
        finally:
            tracemalloc.stop()

    def decode(data):
        _, out = codec.decompress_blocks(io.BytesIO(data))
        return sum(len(b) for b in out)
    codec.compress_blocks(blocks(2))                   # warm-up: tracing, caches
    (enc_short, short), (enc_long, long) = peak(lambda: codec.compress_blocks(blocks(16))), \
        peak(lambda: codec.compress_blocks(blocks(64)))
    (dec_short, n_short), (dec_long, n_long) = peak(lambda: decode(short)), peak(lambda: decode(long))
    assert (n_short, n_long) == (16 * 16000, 64 * 16000)
    assert enc_long - enc_short < len(long) + (1 << 20), (enc_short, enc_long, len(long))
    assert dec_long - dec_short < len(long) + (1 << 20), (dec_short, dec_long, len(long))
    assert enc_long < 64 * 16000 * 8 / 2                # less than half the input's float64 samples


def test_long_chunks_decode_250_hops_at_a_time(models):
    """A chunk longer than 250 hops goes through the network 250 hops at a time (a 4096-hop chunk
    in one call peaked at 2.1 GB of RSS with the default model; in 250-hop calls at 0.86 GB, the
    same as a default file): same audio as the file in 250-hop chunks, within float rounding."""
    wav = ar_signal(10.0, 4)                                   # 334 hops
    long_chunks = api.load(models[0], frames_per_chunk=300)
    data = long_chunks.compress(wav, 16000)
    assert read_nac(data)[1]["num_chunks"] == 2
    _, blocks = long_chunks.decompress_blocks(io.BytesIO(data))
    sizes = [len(b) for b in blocks]
    assert sizes == [250 * 480, 50 * 480, len(wav) - 300 * 480]
    y, _ = long_chunks.decompress(data)
    ref, _ = api.load(models[0]).decompress(api.load(models[0]).compress(wav, 16000))
    np.testing.assert_allclose(y, ref, atol=1e-5 * np.abs(ref).max())   # batch shapes differ: float rounding


def test_waveform_codec_refuses_bombs_and_bad_version_1_metadata():
    """The waveform codec's decoder has the same hard limits (stream format 2, shipped model)."""
    codec = api.load("waveform_rvq")
    mid = bytes.fromhex(codec.identity.legacy[:16])      # versions 1-3 carry the config hash

    def v3(num_samples, fpc, codebooks):
        body = struct.pack(">8s5sBHB", mid, num_samples.to_bytes(5, "big"), 2, fpc, 1) + bytes([codebooks]) + b"\x01a"
        return with_crc(struct.pack(">3sBIB", b"NAC", 3, len(body) + 4, 4) + body)
    w = {"stream_format": 2, "model": {"name": "w", "sha256": codec.identity.legacy}}
    cases = [(v3(4096 * 480, 4096, 12) + EMPTY_CHUNK, "15360 frames in 1 chunk\\(s\\), which need at least"),
             (v3(40 * 4096 * 480, 4096, 12) + EMPTY_CHUNK * 40, "in 40 chunk\\(s\\), which need at least"),
             (write_nac_v1({**w, "codebooks": [3]}, [b""], 1), "'num_samples' must be an int"),
             (write_nac_v1({**w, "codebooks": [3], "num_samples": 4800, "frames_per_chunk": 4}, [b""] * 2, 1),
              "inconsistent counts")]
    for blob, message in cases:
        with time_limit(10), pytest.raises(NacError, match=message):
            codec.decompress(blob)
    _, blocks = codec.decompress_blocks(Unseekable(cases[0][0]))
    with pytest.raises(NacError, match="chunk 0: a 0-byte payload cannot hold 15360 hops"):
        next(blocks)


def test_backend_choices_are_the_librarys():
    """The CLI's --backend choices (a literal: the CLI imports no TensorFlow before it must) are
    the library's backends."""
    from cq_codec.__main__ import build_parser
    from cq_codec.backends import BACKENDS
    p = build_parser()
    for cmd in ("encode", "decode"):
        sub = next(a for a in p._subparsers._group_actions[0].choices[cmd]._actions if a.dest == "backend")
        assert tuple(sub.choices) == BACKENDS
