"""The "bf16" backend: the modules' convolutions in bfloat16 (cq_codec.backends.BF16Backend).

It is lossy against keras by design (docs/DESIGN.md "Speed, third pass"): latents and layer
outputs round to bfloat16's 8-bit mantissa, so some codes differ and decoded audio is close to,
not equal to, keras's. What must hold: the codes are mostly keras's, bytes made by any backend
decode with every other, the same bytes decode alike within a bfloat16 tolerance, the keras
backend on the same model is untouched, and bad backend names fail as before.
"""

import numpy as np
import pytest

from cq_codec import api, backends
from conftest import check_backend_against_keras
from test_api import ar_signal, make_model

CODE_AGREEMENT = 0.95    # tiny test models: 98-99.7 %; the shipped model: 99.2-99.7 % of the codes equal keras's
DECODE_TOL = 0.02        # x the peak, of the frame decoder's output: bfloat16 through a few layers
DECODE_SNR_DB = 25.0     # decoded audio vs keras's decode of the same bytes (after the LPC synthesis
                         # and postfilter, which amplify some samples' errors); tiny models: 36-49 dB,
                         # the shipped model: median 26 dB, lowest 20 dB on 19 test voices


def snr_db(ref, x):
    return 10 * np.log10(np.sum(ref.astype(np.float64) ** 2) / np.sum((ref.astype(np.float64) - x) ** 2))


@pytest.fixture(scope="module", params=["conv", "patch"])
def codecs(request, tmp_path_factory):
    path = tmp_path_factory.mktemp("m") / "tiny.keras"
    make_model(0, front_end=request.param).save(str(path))
    return api.load(str(path), frames_per_chunk=8), api.load(str(path), frames_per_chunk=8, backend="bf16")


def test_selection_and_bad_names(codecs):
    keras_codec, bf = codecs
    assert bf.backend == "bf16" and keras_codec.backend == "keras"    # the suite pins keras (conftest)
    assert "bf16" in backends.BACKENDS
    assert isinstance(backends.get_backend(bf.model, "bf16"), backends.BF16Backend)
    with pytest.raises(ValueError, match=r"unknown backend 'bf17'; valid: auto, keras, tflite, fast, bf16$"):
        keras_codec.backend = "bf17"
    with pytest.raises(ValueError, match="unknown backend 'onnx'"):
        backends.get_backend(bf.model, "onnx")
    p = bf.model.codec_modules[0].num_positions
    with pytest.raises(ValueError, match="expected codes of 1..2 modules"):
        bf._backend.decode_frames([np.zeros((2, p, 1), np.int32)] * 3)


def test_keras_backend_untouched(codecs):
    """The bf16 copies leave the model's own layers in float32: keras's bytes do not change
    when a bf16 backend is made on the same model object."""
    keras_codec, _ = codecs
    wav = ar_signal(1.0, 3)
    before = keras_codec.compress(wav, 16000)
    keras_codec.backend = "bf16"
    keras_codec.compress(wav, 16000)
    keras_codec.backend = "keras"
    assert keras_codec.compress(wav, 16000) == before
    assert all(w.dtype == "float32" for w in keras_codec.model.weights)


@pytest.mark.parametrize("num_modules", [1, 2])
def test_codes_mostly_agree_and_bytes_cross_decode(codecs, num_modules):
    keras_codec, bf = codecs
    wav = ar_signal(1.3, 4)

    def close(yk, yb):
        assert np.all(np.isfinite(yb)) and snr_db(yk, yb) >= DECODE_SNR_DB

    check_backend_against_keras(keras_codec, bf, wav, num_modules, CODE_AGREEMENT, close)


def test_frames_close_to_keras(codecs):
    keras_codec, bf = codecs
    model = keras_codec.model
    frames = np.random.default_rng(0).standard_normal((6, 512)).astype(np.float32) * 0.1
    codes = backends.KerasBackend(model).encode_frames(frames, 2)
    want = backends.KerasBackend(model).decode_frames(codes)
    got = bf._backend.decode_frames(codes)
    assert got.dtype == np.float32 and got.shape == want.shape == (6, 512)
    np.testing.assert_allclose(got, want, atol=DECODE_TOL * np.abs(want).max())
