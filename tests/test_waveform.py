"""The waveform codec (cq_codec/models/waveform.py, cq_codec/waveform_api.py), its RVQ and its
discriminators, on tiny random-weight models and generated audio."""

import io

import keras
import numpy as np
import pytest
import tensorflow as tf

from cq_codec.bitstream.container import read_nac
from cq_codec.config import Config, ConfigError
from cq_codec.models.waveform import WaveformCodec, multi_resolution_stft_loss, pad_to_hop
from cq_codec.nn import discriminators as D
from cq_codec.quantizers.rvq import ResidualVectorQuantizer
from cq_codec.waveform_api import (BitrateError, WaveformCodecAPI, WaveStreamDecoder, WaveStreamEncoder,
                                   fit_entropy_tables)

# Float audio from the streamed and the whole-file paths: the same convolutions on other lengths
# (oneDNN may block the sums differently), so equal to float32 rounding: 1e-5 x the peak.
STREAM_TOL = 1e-5


def _speechlike(n, seed=0):
    rng = np.random.default_rng(seed)
    t = np.arange(n) / 16000
    f0 = 120 + 30 * np.sin(2 * np.pi * 0.7 * t)
    x = 0.3 * np.sin(2 * np.pi * np.cumsum(f0) / 16000) * (0.5 + 0.5 * np.sin(2 * np.pi * 2.5 * t))
    return (x + 0.02 * rng.standard_normal(n)).astype(np.float32)


def _tiny(num_stages=3, codebook_sizes=None, stage_dims=None, fit=True, **kw):
    q = {"num_stages": num_stages, "codebook_size": 8, "seed": 3, "dropout_prob": 0.5}
    if codebook_sizes:
        q["codebook_sizes"] = codebook_sizes
    if stage_dims:
        q["stage_dims"] = stage_dims
    args = dict(strides=[4, 2, 8], channels=8, latent_dim=8, num_units=1, patch=True, quantizer=q)
    args.update(kw)
    model = WaveformCodec(**args)
    model.build()
    x = _speechlike(64 * 32 * 2)[None]
    model(tf.constant(x.reshape(2, -1)), training=True)        # k-means init of the codebooks
    if fit:
        fit_entropy_tables(model, [_speechlike(16000, seed=s) for s in range(3)])
    return model


@pytest.fixture(scope="module")
def model():
    return _tiny()


# ---------------------------------------------------------------------- RVQ
def test_quantizer_dropout_uses_every_stage_count_and_full_at_inference():
    rvq = ResidualVectorQuantizer(num_stages=4, codebook_size=8, dropout_prob=1.0, seed=0)
    z = tf.random.stateless_normal((2, 16, 4), (1, 2))
    rvq(z, training=True)
    seen = {int(rvq(z, training=True).metrics["active_stages"]) for _ in range(60)}
    assert seen == {1, 2, 3, 4}
    out = rvq(z, training=False)
    assert int(out.metrics["active_stages"]) == 4 and out.codes.shape == (2, 16, 4)
    # Stages a dropped batch does not use keep their codebooks (EMA frozen) and add nothing.
    for _ in range(20):
        before = rvq.stages[3].codebook.numpy().copy()
        out = rvq(z, training=True)
        if int(out.metrics["active_stages"]) < 4:
            np.testing.assert_array_equal(rvq.stages[3].codebook.numpy(), before)
            break
    else:
        pytest.fail("no dropped batch in 20 draws")


def test_rvq_fewer_stages_are_prefixes_and_error_shrinks():
    rvq = ResidualVectorQuantizer(num_stages=4, codebook_size=16, dropout_prob=0.0, seed=1)
    z = tf.random.stateless_normal((4, 64, 4), (3, 4))
    for _ in range(20):
        rvq(z, training=True)
    full = rvq(z, training=False)
    errs = []
    for n in range(1, 5):
        out = rvq(z, training=False, num_stages=n)
        np.testing.assert_array_equal(out.codes.numpy(), full.codes.numpy()[..., :n])
        errs.append(float(tf.reduce_mean(tf.square(z - out.quantized))))
    assert all(b < a for a, b in zip(errs, errs[1:])), errs


def test_rvq_unequal_codebook_sizes_and_stage_dims():
    rvq = ResidualVectorQuantizer(num_stages=3, codebook_sizes=[32, 8, 4], stage_dims=[6, 2, 6], seed=0,
                                  dropout_prob=0.0)
    z = tf.random.stateless_normal((2, 40, 6), (5, 6))
    out = rvq(z, training=True)
    assert rvq.codebook_sizes == [32, 8, 4]
    assert out.codes.shape == (2, 40, 3)
    assert rvq.stages[1].codebook.shape == (8, 2) and rvq.stages[0].codebook.shape == (32, 6)
    assert rvq.project_in[1] is not None and rvq.project_in[0] is None
    out = rvq(z, training=False)
    codes = out.codes.numpy()
    for s, k in enumerate([32, 8, 4]):
        assert codes[..., s].max() < k
    np.testing.assert_allclose(rvq.decode(out.codes).numpy(), out.quantized.numpy(), atol=1e-5)
    # bits from the formula: frames x sum log2 K_s
    assert rvq.bits_per_second(100, 1) == pytest.approx(100 * (5 + 3 + 2))
    # serialisable with its per-stage sizes and dims
    clone = ResidualVectorQuantizer.from_config(rvq.get_config())
    assert clone.codebook_sizes == [32, 8, 4] and clone.stage_dims == [6, 2, 6]
    # the projections get gradients through the straight-through estimator
    with tf.GradientTape() as tape:
        o = rvq(z, training=True)
        loss = tf.reduce_mean(tf.square(o.quantized - 1.0)) + o.aux_loss
    grads = tape.gradient(loss, rvq.project_in[1].trainable_variables + rvq.project_out[1].trainable_variables)
    assert all(g is not None and float(tf.reduce_sum(tf.abs(g))) > 0 for g in grads)


def test_rvq_rejects_bad_per_stage_lists():
    with pytest.raises(ValueError, match="codebook_sizes needs 3 entries"):
        ResidualVectorQuantizer(num_stages=3, codebook_sizes=[8, 8])
    with pytest.raises(ValueError, match="stage_dims needs 2 entries"):
        ResidualVectorQuantizer(num_stages=2, stage_dims=[4, 0])


def test_config_codebook_sizes_and_stage_dims_for_rvq():
    Config(quantizer="rvq", num_stages=3, codebook_sizes=(256, 64, 16), embedding_dim=4).validate()
    with pytest.raises(ConfigError, match="--codebook_sizes: RVQ needs one size per codebook"):
        Config(quantizer="rvq", num_stages=3, codebook_sizes=(256, 64), embedding_dim=4).validate()
    with pytest.raises(ConfigError, match="--codebook_sizes"):
        Config(quantizer="pq", codebook_sizes=(256, 64), embedding_dim=4, stage_dims=(2, 2)).validate()


def test_config_waveform_flags():
    base = dict(model_type="waveform", training_mode=1)
    Config(**base).validate()
    with pytest.raises(ConfigError, match="--training_mode: --model_type waveform is one model"):
        Config(model_type="waveform", training_mode=4).validate()
    with pytest.raises(ConfigError, match="--wave_strides: the downsampling factor"):
        Config(**base, wave_strides=(2, 2, 2)).validate()
    with pytest.raises(ConfigError, match="--wave_strides"):
        Config(**base, wave_strides=(8, 8, 8)).validate()
    with pytest.raises(ConfigError, match="--quantizer_dropout"):
        Config(**base, quantizer_dropout=1.5).validate()


# ---------------------------------------------------------------------- model
def test_model_shapes_hop_and_rejects_bad_factor(model):
    assert model.hop == 64
    x = tf.constant(_speechlike(64 * 20)[None])
    y, out = model(x, training=False)
    assert y.shape == (1, 64 * 20) and out.codes.shape == (1, 20, 3)
    with pytest.raises(ValueError, match="must be in 64..320"):
        WaveformCodec(strides=[2, 2, 2])
    with pytest.raises(ValueError, match="must be in 64..320"):
        WaveformCodec(strides=[8, 8, 8])


def test_model_is_causal(model):
    x1 = _speechlike(64 * 40)[None]
    x2 = x1.copy()
    x2[:, 64 * 25:] += 0.3
    c1, c2 = model.encode_codes(x1).numpy(), model.encode_codes(x2).numpy()
    np.testing.assert_array_equal(c1[:, :25], c2[:, :25])
    c3 = c1.copy()
    c3[:, 30:] = 0
    y1, y3 = model.decode_codes(c1).numpy(), model.decode_codes(c3).numpy()
    np.testing.assert_array_equal(y1[:, :64 * 30], y3[:, :64 * 30])


def test_model_saves_and_loads(tmp_path, model):
    path = str(tmp_path / "w.keras")
    model.save(path)
    back = keras.saving.load_model(path, compile=False)
    x = tf.constant(_speechlike(64 * 16)[None])
    np.testing.assert_array_equal(back.encode_codes(x).numpy(), model.encode_codes(x).numpy())
    assert back.entropy_tables == model.entropy_tables


def test_stft_loss_zero_for_equal_and_positive_otherwise():
    x = tf.constant(_speechlike(4096)[None])
    assert float(multi_resolution_stft_loss(x, x)) == pytest.approx(0.0, abs=1e-6)
    assert float(multi_resolution_stft_loss(x, 0.5 * x)) > 0.1


def test_training_step_gradients_reach_every_layer():
    m = _tiny(fit=False)
    x = tf.constant(np.stack([_speechlike(64 * 16, s) for s in range(2)]))
    with tf.GradientTape() as tape:
        y, out = m(x, training=True)
        loss = multi_resolution_stft_loss(x, y) + out.aux_loss
    grads = tape.gradient(loss, m.trainable_variables)
    assert all(g is not None for g in grads)
    assert sum(float(tf.reduce_sum(tf.abs(g))) > 0 for g in grads) == len(grads)


# ---------------------------------------------------------------------- streaming
def test_streaming_equals_whole_file(model):
    n = 64 * 70 + 17
    x = _speechlike(n, seed=4)
    whole_codes = model.encode_codes(pad_to_hop(x, 64)[None]).numpy()[0]
    enc = WaveStreamEncoder(model, 3, chunk_frames=8)       # chunks far shorter than the context
    assert model.encoder_context > 8 * 64
    chunks = []
    for s in range(0, n, 333):                               # blocks unaligned to anything
        chunks += enc.push(x[s:s + 333])
    chunks += enc.finish()
    streamed = np.concatenate(chunks)
    np.testing.assert_array_equal(streamed, whole_codes)
    whole = model.decode_codes(whole_codes[None]).numpy()[0][:n]
    dec = WaveStreamDecoder(model, n)
    out = np.concatenate([dec.push(c) for c in chunks])
    assert out.shape == (n,)
    np.testing.assert_allclose(out, whole, atol=STREAM_TOL * max(1e-3, np.abs(whole).max()))


def test_context_covers_the_receptive_field(model):
    # Changing samples just before the encoder's context leaves the later codes unchanged,
    # and latents just before the decoder's context leave the later samples unchanged.
    ctx = model.encoder_context
    x = _speechlike(ctx + 64 * 10, seed=1)
    y = x.copy()
    y[:64] += 0.5
    cx, cy = model.encode_codes(x[None]).numpy(), model.encode_codes(y[None]).numpy()
    np.testing.assert_array_equal(cx[:, ctx // 64 + 1:], cy[:, ctx // 64 + 1:])
    c = cx.copy()
    c[:, 0] = (c[:, 0] + 1) % 8
    a, b = model.decode_codes(cx).numpy(), model.decode_codes(c).numpy()
    start = (model.decoder_context + 1) * 64
    np.testing.assert_array_equal(a[:, start:], b[:, start:])
    assert np.abs(a[:, :64] - b[:, :64]).max() > 0


# ---------------------------------------------------------------------- bytes
def test_codes_bytes_codes_at_every_codebook_count(model):
    codec = WaveformCodecAPI(model, name="tiny", frames_per_chunk=8)    # 8 x 480 / 64 = 60 frames per chunk
    x = _speechlike(16000 + 123, seed=7)
    for n in range(1, model.num_codebooks + 1):
        codes = codec.encode(x, 16000, num_codebooks=n)
        assert codes.shape == (-(-len(x) // 64), n)
        data = codec.compress(x, 16000, num_codebooks=n)
        header, meta, chunks = read_nac(data)
        assert meta["codebooks"] == [n] and meta["stream_format"] == 2 and len(chunks) == 5
        back, sr = codec.decompress(data)
        assert sr == 16000 and back.shape == x.shape
        # the bytes carry exactly the codes: decoding them equals decoding the codes
        np.testing.assert_array_equal(back, codec.decode(codes, len(x)))
        assert codec.compress(x, 16000, num_codebooks=n) == data


def test_operating_points_bitrate_choice_and_unreachable_error(model):
    codec = WaveformCodecAPI(model, name="tiny")
    points = codec.operating_points
    assert [p.codebooks for p in points] == [(1,), (2,), (3,)] and {p.modules for p in points} == {1}
    kbps = [p.kbps for p in points]
    assert all(b > a for a, b in zip(kbps, kbps[1:]))
    assert codec.point_for_bitrate(kbps[1] + 1e-3).codebooks == (2,)
    assert codec.point_for_bitrate(1000).codebooks == (3,)
    assert codec.point_for_bitrate(None).codebooks == (3,)
    with pytest.raises(BitrateError, match=r"below every operating point.*cheapest is 1 module\(s\) with \[1\] codebooks"):
        codec.point_for_bitrate(kbps[0] * 0.5)
    with pytest.raises(BitrateError, match="positive number"):
        codec.point_for_bitrate(-1)
    x = _speechlike(8000)
    with pytest.raises(BitrateError):
        codec.compress(x, 16000, bitrate=kbps[0] * 0.5)
    data = codec.compress(x, 16000, bitrate=kbps[1] + 1e-3)
    assert read_nac(data)[1]["codebooks"] == [2]


def test_decoder_refuses_another_model(model):
    other = _tiny()
    other.quantizer.stages[0].codebook.assign(other.quantizer.stages[0].codebook + 1.0)
    data = WaveformCodecAPI(model).compress(_speechlike(4000), 16000)
    with pytest.raises(ValueError, match="model mismatch"):
        WaveformCodecAPI(other).decompress(data)


# ---------------------------------------------------------------------- discriminators
def test_discriminator_shapes_and_gradients():
    disc = D.WaveDiscriminator(periods=(2, 3), pools=(1, 2), channels=4)
    x = tf.constant(np.stack([_speechlike(1000, 0), _speechlike(1000, 1)]))
    outs = disc(x)
    assert len(outs) == 4
    for (logits, feats), p in zip(outs[:2], (2, 3)):
        t = -(-1000 // p)
        for _ in range(4):                     # four stride-3 layers, "same" padding
            t = -(-t // 3)
        assert tuple(logits.shape) == (2, t, p, 1)
        assert len(feats) == 6
    for (logits, feats), pool in zip(outs[2:], (1, 2)):
        assert logits.shape[0] == 2 and logits.shape[-1] == 1 and len(feats) == 7
    y = tf.Variable(x * 0.5)
    with tf.GradientTape(persistent=True) as tape:
        real, fake = disc(x), disc(y)
        d_loss = D.discriminator_loss(real, fake)
        g_loss = D.generator_adversarial_loss(fake) + D.feature_matching_loss(real, fake)
    dg = tape.gradient(d_loss, disc.trainable_variables)
    assert all(g is not None for g in dg) and len(dg) == len(disc.trainable_variables)
    gy = tape.gradient(g_loss, y)
    assert gy is not None and float(tf.reduce_sum(tf.abs(gy))) > 0
    assert float(D.feature_matching_loss(real, real)) == 0.0


def test_cli_encodes_at_several_bitrates_and_decodes(model, tmp_path, capsys):
    import soundfile as sf
    from cq_codec.__main__ import main as cli
    path = str(tmp_path / "w.keras")
    model.save(path)
    wav = tmp_path / "in.wav"
    sf.write(str(wav), _speechlike(12000, seed=5), 16000)
    points = WaveformCodecAPI(model).operating_points
    for p in points:
        nac = tmp_path / f"{p.codebooks[0]}.nac"
        assert cli(["encode", str(wav), str(nac), "--model", path, "--bitrate", f"{p.kbps + 1e-3:.6f}"]) == 0
        assert read_nac(nac.read_bytes())[1]["codebooks"] == list(p.codebooks)
        out = tmp_path / f"{p.codebooks[0]}.wav"
        assert cli(["decode", str(nac), str(out), "--model", path]) == 0
        assert sf.info(str(out)).frames == 12000
    capsys.readouterr()
    assert cli(["encode", str(wav), str(tmp_path / "x.nac"), "--model", path, "--bitrate", f"{points[0].kbps / 2:.6f}"]) == 1
    assert "below every operating point" in capsys.readouterr().err and not (tmp_path / "x.nac").exists()


# ---------------------------------------------------------------------- the driver (main.py's path)
def test_waveform_mode_1_trains_and_scores_and_mode_0_rescores(tmp_path):
    """`main.py --model_type waveform`: cq_codec.experiment trains (training/waveform.py: tables
    fitted into the model), scores every codebook count from real .nac bytes; mode 0 rescores."""
    import csv
    import os
    from cq_codec import experiment
    from tests.conftest import write_librispeech
    write_librispeech(str(tmp_path / "libri"), seconds=1.0)
    cfg = dict(name="wave", results_dir=str(tmp_path / "results"), corpus="librispeech",
               data_dir=str(tmp_path / "libri"), model_type="waveform", training_mode=1, wave_strides=(4, 2, 8),
               wave_channels=4, wave_latent_dim=4, wave_units=1, wave_patch=True, wave_segment=0.25, num_stages=2,
               codebook_size=8, block_type="bottleneck", epoch_tanh=1, pretrain_step=0, steps_per_epoch=2,
               validation_steps=1, batch_size=2, eval_clips=1)
    out = experiment.run(Config(**cfg).validate())
    exp = out["experiment"]
    for rel in ("config.json", "model.keras", "metrics.csv", "eval.csv", "eval.md"):
        assert os.path.exists(os.path.join(exp, rel)), rel
    with open(os.path.join(exp, "eval.csv"), newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [int(r["codebooks"]) for r in rows] == [1, 2] and out["eval_rows"] == 2
    assert all(float(r["file_kbps"]) > 0 for r in rows)
    assert experiment.run(Config(**{**cfg, "training_mode": 0}).validate())["eval_rows"] == 2
