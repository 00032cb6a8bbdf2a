"""The "fast" backend: keras with the encoders' output convolutions laid out for oneDNN
(residual_module.strided_output_conv): the same function up to rounding, codes equal to keras's
but for rare boundary cases, bytes that decode with every backend."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from cq_codec import backends
from cq_codec.models.residual_module import ResidualModule, _strided_ok, strided_output_conv
from test_api import ar_signal, make_model, save_codec


def _conv(kernel_size, filters=1, strides=1, activation="tanh", seed=0):
    keras.utils.set_random_seed(seed)
    conv = keras.layers.Conv1D(filters, kernel_size, strides=strides, padding="same", activation=activation)
    conv.build((None, 128, 24))
    conv.bias.assign(np.full(conv.bias.shape, 0.1, np.float32))
    return conv


@pytest.mark.parametrize("kernel_size", [55, 9, 4, 1])
def test_strided_output_conv_is_the_layer_up_to_rounding(kernel_size):
    conv = _conv(kernel_size, activation=None)
    h = tf.constant(np.random.default_rng(kernel_size).standard_normal((5, 128, 24)).astype(np.float32))
    ref = conv(h).numpy()
    got = strided_output_conv(conv, h).numpy()
    assert got.shape == ref.shape == (5, 128, 1)
    scale = np.abs(ref).max()
    np.testing.assert_allclose(got, ref, rtol=0, atol=1e-5 * scale)   # float32 sums of 24 * k terms


def test_applicability():
    assert _strided_ok(_conv(55), 128) and _strided_ok(_conv(55), 256)
    assert not _strided_ok(_conv(55), 120)                              # length not a multiple of 16
    assert not _strided_ok(_conv(55, filters=2), 128)
    assert not _strided_ok(_conv(55, strides=2), 128)
    assert not _strided_ok(keras.layers.Dense(1), 128)


@pytest.mark.parametrize("front_end", ["conv", "patch"])
def test_encode_latent_fast_path_matches(front_end):
    keras.utils.set_random_seed(3)
    m = ResidualModule(channels=8, bottleneck=4, num_resnets=1, stride=4, front_end=front_end)
    m.build((None, 512, 1))
    x = tf.constant(np.random.default_rng(1).standard_normal((6, 512, 1)).astype(np.float32) * 0.3)
    ref, got = m.encode_latent(x).numpy(), m.encode_latent(x, strided_out=True).numpy()
    assert got.shape == ref.shape
    np.testing.assert_allclose(got, ref, rtol=0, atol=1e-5)


@pytest.fixture(scope="module")
def codec(tmp_path_factory):
    return save_codec(make_model(0), tmp_path_factory.mktemp("m") / "tiny.keras")


def test_fast_backend_codes_agree_and_bytes_cross_decode(codec):
    wav = ar_signal(4.0, 9, 1.0)
    data, codes = {}, {}
    for name in ("keras", "fast"):
        codec.backend = name
        assert codec.backend == name
        data[name] = codec.compress(wav, 16000)
        codes[name] = codec.encode(wav, 16000)
    codec.backend = "keras"
    same = sum(int((a == b).sum()) for a, b in zip(codes["fast"].modules, codes["keras"].modules))
    total = sum(a.size for a in codes["keras"].modules)
    assert same >= 0.999 * total
    assert np.array_equal(codes["fast"].lsf, codes["keras"].lsf)        # numpy on both
    y_keras, _ = codec.decompress(data["fast"])                       # the fast bytes decode with keras
    codec.backend = "fast"
    y_fast, _ = codec.decompress(data["fast"])
    codec.backend = "keras"
    assert np.array_equal(y_fast, y_keras)                            # decoding is keras's own path
    assert isinstance(backends.get_backend(codec.model, "fast"), backends.KerasBackend)
    with pytest.raises(ValueError, match="valid: auto, keras, tflite, fast"):
        codec.backend = "faster"
