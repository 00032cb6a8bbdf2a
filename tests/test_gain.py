"""Gain-shape coding (cq_codec/quantizers/gain.py): the gain quantizer's grid and its TF twin, the
gain codes' trip through the `.nac` payload (bit-exact), streaming equal to whole-file, the bits
counted in the file, the model's identity unchanged without it, and clear errors."""

import io

import numpy as np
import pytest
import tensorflow as tf

import cq_codec
import lpc
from cq_codec import inference
from cq_codec.bitstream import codec_stream as cs
from cq_codec.bitstream import identity
from cq_codec.bitstream import entropy
from cq_codec.bitstream.container import NacReader
from cq_codec.codes import Codes
from cq_codec.config import Config, ConfigError
from cq_codec.quantizers.gain import GainQuantizer
from cq_codec.training.trainer import gain_config
from test_api import ar_signal, make_model


def gain_model(seed=0, subframes=4, num_modules=2):
    return make_model(seed, num_modules, [_with_level_changes(ar_signal(0.5, seed + k)) for k in range(4)],
                      gain_subframes=subframes)


def _with_level_changes(x):
    """A signal whose level steps in five equal parts over 36 dB (0, -30, -12, +6, -20 dB), so the
    gain codes vary."""
    env = np.repeat(10.0 ** (np.array([0.0, -30.0, -12.0, 6.0, -20.0]) / 20.0), -(-x.size // 5))[: x.size]
    return (x * env).astype(np.float32)


@pytest.fixture(scope="module")
def model():
    return gain_model()


@pytest.fixture(scope="module")
def codec(model, tmp_path_factory):
    path = tmp_path_factory.mktemp("g") / "gain.keras"
    model.save(str(path))
    return cq_codec.load(str(path), frames_per_chunk=6)


def test_grid_codes_and_round_trip():
    gq = GainQuantizer(subframes=4, floor_db=-40.0, step_db=3.0, levels=21)
    levels_db = -40.0 + 3.0 * np.arange(21)
    # Frames whose sub-frames sit exactly on the grid code to those levels and decode to them.
    want = np.array([[0, 5, 13, 20], [20, 0, 7, 3]], np.int32)
    frames = np.repeat(10.0 ** (levels_db[want] / 20.0), 128, axis=-1) * np.tile([1.0, -1.0], 256)
    codes = gq.encode_numpy(frames)
    assert codes.dtype == np.int32 and np.array_equal(codes, want)
    np.testing.assert_allclose(gq.decode_numpy(codes), 10.0 ** (levels_db[want] / 20.0), rtol=1e-6)
    # Below the floor -> code 0; far above the top -> the top level; silence -> 0.
    quiet = np.full((1, 512), 1e-4)
    loud = np.full((1, 512), 1e3)
    assert gq.encode_numpy(np.concatenate([quiet, loud, np.zeros((1, 512))])).tolist() == [[0] * 4, [20] * 4, [0] * 4]
    # The scale argument scales before measuring: +6.02 dB = two steps of 3 dB.
    assert np.array_equal(gq.encode_numpy(frames, scale=2.0), np.minimum(want + 2, 20))
    assert gq.per_sample(gq.decode_numpy(codes)).shape == (2, 512)


def test_tf_twin_agrees_with_numpy():
    gq = GainQuantizer(subframes=8, floor_db=-50.0, step_db=3.0, levels=25)
    rng = np.random.default_rng(0)
    frames = (rng.standard_normal((64, 512)) * 10.0 ** rng.uniform(-3, 1, (64, 1))).astype(np.float32)
    got = gq.quantize_tf(tf.constant(frames)).numpy()
    want = gq.per_sample(gq.decode_numpy(gq.encode_numpy(frames)))
    # float32 in TF vs float64 in numpy: only a value within rounding of a half-step boundary
    # could land on the neighbouring level; none of these random levels does.
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("kwargs, match", [
    ({"subframes": 3}, "subframes"), ({"subframes": True}, "subframes"), ({"step_db": 0.0}, "step_db"),
    ({"levels": 1}, "levels"), ({"floor_db": float("nan")}, "floor_db")])
def test_bad_gain_settings_are_refused(kwargs, match):
    with pytest.raises(ValueError, match=match):
        GainQuantizer(**kwargs)


def test_bad_gain_codes_are_refused():
    gq = GainQuantizer(subframes=2, levels=10)
    with pytest.raises(ValueError, match="outside"):
        gq.decode_numpy(np.array([[0, 10]], np.int32))
    with pytest.raises(ValueError, match=r"\[N, 2\]"):
        gq.decode_numpy(np.zeros((3, 4), np.int32))
    with pytest.raises(ValueError, match="frames"):
        gq.encode_numpy(np.zeros((3, 500)))


def test_config_flags_are_checked():
    with pytest.raises(ConfigError, match="gain_subframes"):
        Config(gain_subframes=3).validate()
    with pytest.raises(ConfigError, match="gain_floor_db"):
        Config(gain_subframes=4, gain_floor_db=10.0).validate()
    assert gain_config(Config()) is None
    g = gain_config(Config(gain_subframes=4, gain_floor_db=-40.0))
    assert g == {"subframes": 4, "floor_db": -40.0, "step_db": 3.0, "levels": 21}


def test_gain_off_leaves_config_and_layout_as_before():
    m = make_model(0)
    assert "gain" not in m.get_config() and "gain" not in cs.code_layout(m)
    assert m.gain_quantizer is None


def test_gain_follows_the_signal_level(model):
    wav = _with_level_changes(ar_signal(1.0, 7))
    codes = inference.encode(model, wav)
    assert codes.gain.shape == (codes.lsf.shape[0], 4) and codes.gain.dtype == np.int32
    # The level steps over 36 dB (12 grid steps of 3 dB): the codes span many levels, and the
    # +6 dB part codes higher than the -30 dB part (which may sit at the floor) by many steps.
    assert codes.gain.max() - codes.gain.min() >= 8
    per_hop, n = codes.gain.mean(axis=1), len(codes.gain)
    loud, quiet = per_hop[3 * n // 5 + 2: 4 * n // 5 - 2], per_hop[n // 5 + 2: 2 * n // 5 - 2]
    assert loud.mean() > quiet.mean() + 5


def test_gain_codes_trip_through_the_file_bit_exact(codec, model):
    wav = _with_level_changes(ar_signal(1.3, 11))
    codes = codec.encode(wav, 16000)
    data = codec.compress(wav, 16000)
    meta, blocks = codec.decompress_blocks(io.BytesIO(data))
    info = cs.check_metadata(meta, codec.model, codec.sha256)
    assert info["layout"]["gain"] == {"subframes": 4, "alphabet_size": model.gain_quantizer.levels}
    # Decode the payloads back to codes: bit-exact, gains included.
    reader = NacReader(io.BytesIO(data))
    models = cs.entropy_models(codec.model)
    got = [cs.decode_chunk(p, min(6, info["num_frames"] - 6 * i), info["num_active"], models, info["layout"])
           for i, p in enumerate(reader)]
    joined = Codes.join(got, info["num_samples"])
    assert np.array_equal(joined.gain, codes.gain) and np.array_equal(joined.lsf, codes.lsf)
    assert all(np.array_equal(a, b) for a, b in zip(joined.modules, codes.modules))
    # The audio from the file equals decoding the codes (same path, same input).
    audio, _ = codec.decompress(data)
    np.testing.assert_array_equal(audio, codec.decode(codes))


def test_gain_bits_are_counted_in_the_file(codec):
    wav = _with_level_changes(ar_signal(2.0, 12))
    codes = codec.encode(wav, 16000)
    models = cs.entropy_models(codec.model)
    chunks = codes.chunks(6)
    gain_bits = sum(entropy.estimate_bits(cs._side_rows(c.gain, [models.gain.alphabet_sizes[0]]), models.gain) for c in chunks)
    without = sum(cs.chunk_bits(c._replace(gain=None), models._replace(gain=None)) for c in chunks)
    total = sum(cs.chunk_bits(c, models) for c in chunks)
    assert gain_bits > 0 and abs(total - (without + gain_bits)) < 1e-6
    payload = sum(len(cs.encode_chunk(c, models)) for c in chunks) * 8
    # The range coder's payload holds the information content plus at most ~2 words per chunk.
    assert total <= payload + 32 * len(chunks) and payload <= total + 96 * len(chunks)


def test_streaming_equals_whole_file(model):
    wav = _with_level_changes(ar_signal(1.1, 13))
    whole = inference.encode(model, wav, frames_per_chunk=5)
    enc = inference.StreamEncoder(model, frames_per_chunk=5)
    chunks, s = [], 0
    for n in [7, 480, 3001, 1, 999] * 10:
        chunks += enc.push(wav[s:s + n])
        s += n
        if s >= wav.size:
            break
    chunks += enc.finish()
    streamed = Codes.join(chunks, enc.num_samples)
    assert np.array_equal(streamed.gain, whole.gain) and np.array_equal(streamed.lsf, whole.lsf)
    assert all(np.array_equal(a, b) for a, b in zip(streamed.modules, whole.modules))
    dec = inference.StreamDecoder(model, whole.num_samples, postfilter=True)
    pieces = np.concatenate([dec.push(c) for c in whole.chunks(3)])
    np.testing.assert_array_equal(pieces, inference.decode(model, whole, frames_per_chunk=3))


def test_decoder_refuses_missing_or_unexpected_gain(model):
    codes = inference.encode(model, ar_signal(0.3, 1))
    chunk = codes.chunks()[0]
    with pytest.raises(ValueError, match="gain"):
        inference.StreamDecoder(model).push(chunk._replace(gain=None))
    plain = make_model(0)
    plain_chunk = inference.encode(plain, ar_signal(0.3, 1)).chunks()[0]
    with pytest.raises(ValueError, match="gain"):
        inference.StreamDecoder(plain).push(plain_chunk._replace(gain=np.zeros((len(plain_chunk.lsf), 4), np.int32)))
    with pytest.raises(ValueError, match="gain"):
        cs.encode_chunk(chunk._replace(gain=None), cs.entropy_models(model))


def test_training_step_with_gain_has_gradients(model):
    rng = np.random.default_rng(0)
    sig = ar_signal(1.0, 3, 1.0).astype(np.float64)
    lsf = lpc.analyze(sig)
    ts = range(1, 9)
    batch = {"x": tf.constant(np.array([sig[t * 480 - 16: t * 480 + 512] for t in ts]) * rng.uniform(0.01, 1, (8, 1)), tf.float32),
             "lsf": tf.constant(np.array([lsf[t - 1: t + 2] for t in ts]), tf.float32)}
    with tf.GradientTape() as tape:
        terms = model.compute_terms(model.forward(batch, training=True), training=True)
    grads = tape.gradient(terms["loss"], model.codec_modules[0].trainable_variables)
    assert np.isfinite(float(terms["loss"]))
    assert any(g is not None and float(tf.reduce_sum(tf.abs(g))) > 0 for g in grads)


def test_gain_model_round_trips_through_keras_file(codec, model):
    assert codec.model.get_config()["gain"] == model.get_config()["gain"]
    assert codec.sha256 == identity.model_id(model)          # the model id survives the .keras round trip
    wav = ar_signal(0.4, 5)
    assert np.array_equal(codec.encode(wav, 16000).gain, inference.encode(model, wav).gain)
