"""The TFLite (LiteRT) backend: frozen export, agreement with the keras backend, cross decoding,
selection through the API and the CLI, the disk cache.

Tolerances: LiteRT/XNNPACK and TensorFlow sum the convolutions in different orders, so float
outputs differ by rounding (measured on the shipped model: decoded audio max |diff| 4e-7 for a
signal of rms 0.15; docs/DESIGN.md "Speed"). Frames and audio are compared within 1e-4 of the
reference's peak; codes may differ where a latent lies within rounding of a bin boundary
(1 of 384,000 codes on 30 s of speech at 3 modules), so at least 99.9 % must agree.
"""

import os

import numpy as np
import pytest
import soundfile as sf

from cq_codec import __main__ as cli
from cq_codec import api, backends, inference
from conftest import check_backend_against_keras
from test_api import ar_signal, make_model

TOL = 1e-4          # x the reference's peak, for float outputs of the two runtimes
CODE_AGREEMENT = 0.999


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("m") / "tiny.keras"
    make_model(0).save(str(path))
    return str(path)


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    """One disk cache for the module: each (kind, modules) is converted once (seconds each)."""
    return str(tmp_path_factory.mktemp("cache"))


@pytest.fixture(scope="module")
def codecs(model_path, cache_dir):
    keras_codec = api.load(model_path, frames_per_chunk=8)
    tfl = api.load(model_path, frames_per_chunk=8, backend="tflite")
    tfl._backend.cache_dir = cache_dir
    return keras_codec, tfl


def test_export_has_frozen_weights_and_matches_keras(codecs):
    keras_codec, tfl = codecs
    model = keras_codec.model
    content = tfl._backend.flatbuffer("decode", 2)
    # The failure mode of a hand conversion: variables left as resource reads (NaN / nullptr).
    assert b"READ_VARIABLE" not in content and b"VAR_HANDLE" not in content
    codes = inference.encode(model, ar_signal(0.6, 9)).modules
    want = backends.KerasBackend(model).decode_frames(codes)
    got = tfl._backend.decode_frames(codes)
    assert got.dtype == np.float32 and got.shape == want.shape and np.all(np.isfinite(got))
    np.testing.assert_allclose(got, want, atol=TOL * np.abs(want).max())


@pytest.mark.parametrize("num_modules", [1, 2])
def test_codes_agree_and_cross_decode(codecs, num_modules):
    keras_codec, tfl = codecs
    wav = ar_signal(1.3, 4)
    # Bytes of either backend decode with the other; the same bytes decode alike on both.
    check_backend_against_keras(keras_codec, tfl, wav, num_modules, CODE_AGREEMENT, lambda yk, yt:
                                np.testing.assert_allclose(yt, yk, atol=TOL * np.abs(yk).max()))


def test_streaming_tflite_equals_whole_signal(codecs):
    """The backend sees the same fixed chunks however the input is pushed: identical codes."""
    _, tfl = codecs
    wav = ar_signal(1.0, 6).astype(np.float64)
    whole = inference.encode(tfl.model, wav, frames_per_chunk=8, backend=tfl._backend)
    enc = inference.StreamEncoder(tfl.model, None, 8, backend=tfl._backend)
    chunks = [c for s in range(0, wav.size, 1234) for c in enc.push(wav[s: s + 1234])] + enc.finish()
    assert all(np.array_equal(np.concatenate([c.modules[i] for c in chunks]), whole.modules[i])
               for i in range(len(whole.modules)))


def test_backend_selection_and_errors(model_path, codecs):
    keras_codec, tfl = codecs
    assert api.DEFAULT_BACKEND == "keras" and keras_codec.backend == "keras" and tfl.backend == "tflite"
    with pytest.raises(ValueError, match="unknown backend 'onnx'"):
        api.load(model_path, backend="onnx")
    p = tfl.model.codec_modules[0].num_positions
    with pytest.raises(ValueError, match=rf"module 0's codes must be \[N, {p}, 1\]"):
        tfl._backend.decode_frames([np.zeros((2, p + 1, 1), np.int32)])
    with pytest.raises(ValueError, match="expected codes of 1..2 modules"):
        tfl._backend.decode_frames([np.zeros((2, p, 1), np.int32)] * 3)


def test_disk_cache_and_export(model_path, codecs, cache_dir, tmp_path, monkeypatch):
    """The cache holds every conversion under the model's key; a new backend (a new process,
    say) reads them instead of converting."""
    for n in (1, 2):        # already converted by the tests above when they ran in this process
        for kind in ("encode", "decode"):
            codecs[1]._backend.flatbuffer(kind, n)
    model = api.load(model_path).model      # a fresh load: the key is of the weights, not the object
    folder = os.path.join(cache_dir, "tflite", backends.model_key(model))
    assert sorted(os.listdir(folder)) == ["decode_1.tflite", "decode_2.tflite", "encode_1.tflite", "encode_2.tflite"]

    def fail(*a, **k):
        raise AssertionError("converted again despite the cache")
    monkeypatch.setattr(backends, "convert_frame_function", fail)
    paths = backends.TFLiteBackend(model, cache_dir=cache_dir).export(str(tmp_path / "out"))
    assert [os.path.basename(p) for p in paths] == ["encode_1.tflite", "decode_1.tflite",
                                                    "encode_2.tflite", "decode_2.tflite"]
    assert all(open(p, "rb").read() == open(os.path.join(folder, os.path.basename(p)), "rb").read() for p in paths)


def test_cli_backend_flag(model_path, cache_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("CQ_CODEC_CACHE", cache_dir)
    wav = str(tmp_path / "in.wav")
    sf.write(wav, ar_signal(0.6, 2), 16000)
    nac, out = str(tmp_path / "x.nac"), str(tmp_path / "y.wav")
    assert cli.main(["encode", wav, nac, "--model", model_path, "--backend", "tflite"]) == 0
    assert cli.main(["decode", nac, out, "--model", model_path, "--backend", "keras"]) == 0
    y, sr = sf.read(out)
    assert sr == 16000 and len(y) == sf.info(wav).frames
    with pytest.raises(SystemExit):
        cli.main(["decode", nac, out, "--model", model_path, "--backend", "onnx"])
    capsys.readouterr()
