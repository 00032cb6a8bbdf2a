"""The TFLite (LiteRT) backend: frozen export, agreement with the keras backend, cross decoding,
selection through the API and the CLI, the disk cache; the NHWC export (`backends.nhwc_frame_function`)
against keras for every block type and both front ends, its fallback to the traced functions.

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

import keras

from cq_codec import __main__ as cli
from cq_codec import api, backends, inference
from cq_codec.config import Config
from cq_codec.training.trainer import build_model
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
    assert api.DEFAULT_BACKEND == "keras"      # the suite pins keras (conftest; CQ_CODEC_BACKEND)
    assert keras_codec.backend == "keras" and tfl.backend == "tflite"
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


def _cli_round_trip(model_path, tmp_path, seed, encode_backend, decode_backend):
    """The CLI's encode with one backend and decode with another; returns (wav, nac, out) paths."""
    wav = str(tmp_path / "in.wav")
    sf.write(wav, ar_signal(0.6, seed), 16000)
    nac, out = str(tmp_path / "x.nac"), str(tmp_path / "y.wav")
    assert cli.main(["encode", wav, nac, "--model", model_path, "--backend", encode_backend]) == 0
    assert cli.main(["decode", nac, out, "--model", model_path, "--backend", decode_backend]) == 0
    return wav, nac, out


def test_cli_backend_flag(model_path, cache_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("CQ_CODEC_CACHE", cache_dir)
    wav, nac, out = _cli_round_trip(model_path, tmp_path, 2, "tflite", "keras")
    y, sr = sf.read(out)
    assert sr == 16000 and len(y) == sf.info(wav).frames
    with pytest.raises(SystemExit):
        cli.main(["decode", nac, out, "--model", model_path, "--backend", "onnx"])
    capsys.readouterr()


# ------------------------------------------------------------------ the NHWC export
def _op_names(content: bytes) -> set:
    from ai_edge_litert.interpreter import Interpreter, OpResolverType
    ip = Interpreter(model_content=content,
                     experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
    return {o["op_name"] for o in ip._get_ops_details()}


def _frames(n: int, seed: int) -> np.ndarray:
    """Residual-like frames: windowed pieces of an AR signal."""
    x = ar_signal(0.1 + n * 0.02, seed).astype(np.float32)
    return np.stack([x[i * 160: i * 160 + 512] * np.hanning(512).astype(np.float32) for i in range(n)]) * 4


def test_nhwc_export_is_the_default_and_has_no_conv1d_glue(codecs):
    """The tiny model (conv front end, stride 2, dilated gln blocks, sub-pixel upsampling) is
    written as the NHWC graph: no EXPAND_DIMS / SPACE_TO_BATCH_ND, and XNNPACK is left only the
    quantizers' ARG_MIN / GATHER (and the reshapes around them)."""
    _, tfl = codecs
    assert tfl._backend.graph == "auto" and tfl._backend.graph_for(2) == "nhwc" and not tfl._backend.fallback_reasons
    enc, dec = _op_names(tfl._backend.flatbuffer("encode", 2)), _op_names(tfl._backend.flatbuffer("decode", 2))
    for ops in (enc, dec):
        assert "CONV_2D" in ops and not ops & {"EXPAND_DIMS", "SQUEEZE", "SPACE_TO_BATCH_ND", "BATCH_TO_SPACE_ND"}
    assert "ARG_MIN" in enc and "GATHER" in dec


@pytest.mark.parametrize("config", [dict(front_end="patch", the_strides=(4,)),          # the shipped model's layout
                                    dict(block_type="bottleneck"), dict(block_type="separable", front_end="patch",
                                                                       the_strides=(4,))])
def test_nhwc_frames_agree_with_keras(config):
    """Frame level, random weights: codes of the cascade (>= 99.9 % equal) and decoded frames."""
    keras.utils.set_random_seed(3)
    model = build_model(Config(num_modules=2, channels=8, bottleneck=4, blocks_per_section=1, **config).validate())
    assert backends.nhwc_unsupported(model, 2) is None
    kb, tb = backends.KerasBackend(model), backends.TFLiteBackend(model, cache_dir=False, sub_batch=4)
    frames = _frames(10, 5)
    want, got = kb.encode_frames(frames, 2), tb.encode_frames(frames, 2)
    for w, g in zip(want, got):
        assert w.shape == g.shape and g.dtype == np.int32 and np.mean(w == g) >= CODE_AGREEMENT
    yk, yt = kb.decode_frames(want), tb.decode_frames(want)
    np.testing.assert_allclose(yt, yk, atol=TOL * np.abs(yk).max())


@pytest.fixture(scope="module")
def patch_codecs(tmp_path_factory, cache_dir):
    """keras and tflite codecs of a tiny model with the shipped model's layout (patch front end, stride 4)."""
    path = tmp_path_factory.mktemp("p") / "patch.keras"
    make_model(1, front_end="patch", the_strides=(4,)).save(str(path))
    tfl = api.load(str(path), frames_per_chunk=8, backend="tflite")
    tfl._backend.cache_dir = cache_dir
    return api.load(str(path), frames_per_chunk=8), tfl


@pytest.mark.parametrize("num_modules", [1, 2])
def test_patch_model_codes_agree_and_cross_decode(patch_codecs, num_modules):
    keras_codec, tfl = patch_codecs
    check_backend_against_keras(keras_codec, tfl, ar_signal(1.3, 7), num_modules, CODE_AGREEMENT, lambda yk, yt:
                                np.testing.assert_allclose(yt, yk, atol=TOL * np.abs(yk).max()))
    assert tfl._backend.graph_for(num_modules) == "nhwc"


def test_sub_batches_give_the_same_results(codecs, cache_dir):
    """Every frame is computed alone: a chunk fed in sub-batches (the last one shorter) gives the
    same codes and frames, bit for bit, as fed whole."""
    model = codecs[0].model
    frames = _frames(11, 2)
    whole, split = (backends.TFLiteBackend(model, cache_dir=cache_dir, sub_batch=b) for b in (0, 4))
    for a, b in zip(whole.encode_frames(frames, 2), split.encode_frames(frames, 2)):
        assert np.array_equal(a, b)
    codes = whole.encode_frames(frames, 2)
    assert np.array_equal(whole.decode_frames(codes), split.decode_frames(codes))


def test_fallback_to_traced_functions(model_path, tmp_path, caplog):
    """A model the NHWC graph does not write (here: quantization bypassed, a pretraining state)
    falls back to converting the traced functions, says why, and still agrees with keras; asking
    for the NHWC graph explicitly raises with the reason; the two exports are cached apart."""
    model = api.load(model_path).model
    model.codec_modules[1].bypass.assign(1.0)
    reason = backends.nhwc_unsupported(model, 2)
    assert reason == "module 1 has quantization bypassed (a pretraining state)"
    assert backends.nhwc_unsupported(model, 1) is None
    with pytest.raises(ValueError, match="the NHWC export does not serve this model: module 1 has quantization bypassed"):
        backends.convert_frame_function(model, "encode", 2, graph="nhwc")
    with pytest.raises(ValueError, match="graph must be 'auto' or one of nhwc, traced"):
        backends.TFLiteBackend(model, graph="onnx")
    tb = backends.TFLiteBackend(model, cache_dir=str(tmp_path))
    with caplog.at_level("WARNING", logger="cq_codec.backends"):
        assert tb.graph_for(2) == "traced" and tb.graph_for(1) == "nhwc"
    assert tb.fallback_reasons == {2: reason} and reason in caplog.text
    frames = _frames(6, 1)
    want, got = backends.KerasBackend(model).encode_frames(frames, 2), tb.encode_frames(frames, 2)
    assert all(np.mean(w == g) >= CODE_AGREEMENT for w, g in zip(want, got))
    assert "EXPAND_DIMS" in _op_names(tb.flatbuffer("encode", 2))       # the traced export's Conv1D glue
    tb.flatbuffer("encode", 1)
    folder = os.path.join(str(tmp_path), "tflite", backends.model_key(model))
    assert sorted(os.listdir(folder)) == ["encode_1.tflite", "encode_2.traced.tflite"]


def test_cache_key_changes_with_the_export_format(codecs, monkeypatch):
    """Conversions cached by an older export (another `_FORMAT`) are never read back."""
    model = codecs[0].model
    key = backends.model_key(model)
    monkeypatch.setattr(backends, "_FORMAT", backends._FORMAT - 1)
    assert backends.model_key(model) != key


# ------------------------------------------------------------------ the default: "auto"
def test_auto_backend_resolves_to_tflite_where_it_serves_the_model(model_path, cache_dir, monkeypatch):
    monkeypatch.setenv("CQ_CODEC_CACHE", cache_dir)
    auto = api.load(model_path, frames_per_chunk=8, backend="auto")
    assert auto.backend == "tflite" and backends.auto_backend_reason(auto.model) is None
    keras_codec = api.load(model_path, frames_per_chunk=8, backend="keras")
    wav = ar_signal(0.8, 4)
    data = auto.compress(wav, 16000, num_modules=2)
    ref = keras_codec.compress(wav, 16000, num_modules=2)
    a, k = auto.encode(wav, 16000, num_modules=2), keras_codec.encode(wav, 16000, num_modules=2)
    assert all(np.mean(x == y) >= CODE_AGREEMENT for x, y in zip(a.modules, k.modules))
    y_auto, y_keras = auto.decompress(data)[0], keras_codec.decompress(data)[0]     # cross decoding
    assert np.max(np.abs(y_auto - y_keras)) <= TOL * np.max(np.abs(y_keras))
    assert len(keras_codec.decompress(ref)[0]) == len(wav)


def test_auto_backend_falls_back_to_keras_with_a_reason(model_path):
    model = api.load(model_path).model
    model.codec_modules[1].bypass.assign(1.0)       # a state the NHWC export does not write
    reason = backends.auto_backend_reason(model)
    assert reason == "the NHWC export does not cover it (module 1 has quantization bypassed (a pretraining state))"
    assert backends.get_backend(model, "auto").name == "keras"
    assert backends.auto_backend_reason(object()) == "object is not a CQ model"


@pytest.mark.parametrize("env, want", [("", "auto"), ("keras", "keras"), ("tflite", "tflite")])
def test_default_backend_is_auto_unless_the_environment_says(env, want):
    import subprocess
    import sys
    code = "from cq_codec import api; print(api.DEFAULT_BACKEND)"
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    out = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, check=True,
                         env={**os.environ, "CQ_CODEC_BACKEND": env, "TF_CPP_MIN_LOG_LEVEL": "3"})
    assert out.stdout.strip().splitlines()[-1] == want


def test_cli_accepts_auto(model_path, cache_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("CQ_CODEC_CACHE", cache_dir)
    wav, _, out = _cli_round_trip(model_path, tmp_path, 3, "auto", "auto")
    assert sf.info(out).frames == sf.info(wav).frames
    capsys.readouterr()
