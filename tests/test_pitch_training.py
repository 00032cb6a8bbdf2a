"""Pitch prediction in training: the cached open-loop prediction, the batches that carry it, the
model's forward pass with it, its flags, and a tiny run whose model codes the pitch stream."""

import os

import numpy as np
import pytest
import tensorflow as tf

import constants as C
import lpc
from lpc import tf_ops
from cq_codec import experiment
from cq_codec.config import Config, ConfigError
from cq_codec.data import audio, cache as cache_lib, corpora, pipeline, pitch, preprocess, splits
from cq_codec.inference import decode, encode
from cq_codec.api import load
from cq_codec.training import modes, trainer
from lpc.ltp import LongTermPredictor
from tests.conftest import write_librispeech


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("libri")
    write_librispeech(str(root), seconds=1.5)
    return root


@pytest.fixture(scope="module")
def built(corpus, tmp_path_factory):
    parts = splits.split_utterances(corpora.discover(str(corpus)), 0.2, 0.2, seed=0)
    return parts, cache_lib.build_cache(parts, str(tmp_path_factory.mktemp("cache")))


def test_batches_carry_each_frames_prediction_as_the_encoder_computes_it(built):
    """Every val example's 'ltp' is its frame of the utterance's open-loop pitch prediction
    (residual under the utterance's LSFs, LongTermPredictor from an empty history), over the std."""
    parts, cache = built
    predictor = LongTermPredictor(threshold=0.3)
    pred = pitch.pitch_prediction(cache, "val", predictor)
    ds = pipeline.make_dataset(cache, "val", batch_size=4, shuffle=False, keep_silence=1.0, pitch=pred)
    batches = list(ds.as_numpy_iterator())
    got = np.concatenate([b["ltp"] for b in batches])
    lag = np.concatenate([b["ltp_lag"] for b in batches])
    gain = np.concatenate([b["ltp_gain"] for b in batches])
    want, want_lag, want_gain = [], [], []
    for u in parts["val"]:
        y = preprocess.preprocess_audio(audio.load_audio(u.path))
        lsf = preprocess.analyze_utterance(y)
        t = len(lsf)
        yy = np.zeros(t * C.HOP_SIZE + C.OVERLAP)
        yy[: len(y)] = y
        p, lg, gn = (np.zeros_like(yy) for _ in range(3))
        p[: t * C.HOP_SIZE], lg[: t * C.HOP_SIZE], gn[: t * C.HOP_SIZE] = pitch.utterance_pitch(
            yy[: t * C.HOP_SIZE].astype(np.float32), lsf, predictor)
        frames = lambda v: np.stack([v[i * C.HOP_SIZE: i * C.HOP_SIZE + C.FRAME_SIZE] for i in range(t)])
        want.append(frames(p) / cache.std)
        want_lag.append(frames(lg))
        want_gain.append(frames(gn))
    want = np.concatenate(want)
    np.testing.assert_array_equal(lag, np.concatenate(want_lag))
    np.testing.assert_array_equal(gain, np.concatenate(want_gain))
    assert set(np.unique(lag)) <= {0} | set(range(32, 321)) and np.all((lag > 0) == (gain > 0))
    assert got.shape == want.shape == (cache.num_frames("val"), C.FRAME_SIZE)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)
    # The generated speech is voiced: the predictor takes something out of most frames.
    assert np.mean(np.any(got != 0, axis=1)) > 0.5


def test_prediction_is_what_the_analysis_filter_leaves():
    rng = np.random.default_rng(0)
    t = 6
    pulses = (np.arange(t * C.HOP_SIZE) % 100 == 0).astype(float)          # 160 Hz glottal pulses
    y = np.convolve(pulses, 0.9 ** np.arange(40))[: t * C.HOP_SIZE] + 0.01 * rng.standard_normal(t * C.HOP_SIZE)
    lsf = lpc.analyze(y, t)
    predictor = LongTermPredictor(threshold=0.3)
    p = pitch.utterance_pitch(y, lsf, predictor)[0]
    e, _ = lpc.residual(y, lpc.subframe_lpc(lsf))
    hist = predictor.initial_history()
    e2 = predictor.analysis_filter(hist, e, predictor.analyze(hist, e, 0))
    np.testing.assert_array_equal(e - p, e2)
    assert np.sum(e2[C.HOP_SIZE:] ** 2) < 0.5 * np.sum(e[C.HOP_SIZE:] ** 2)   # a periodic signal is predicted


def test_prediction_file_is_reused_and_keyed_by_the_settings(built):
    _, cache = built
    a = LongTermPredictor(threshold=0.3)
    path = pitch.prediction_path(cache, "val", a)
    pitch.pitch_prediction(cache, "val", a)
    stamp = os.stat(path).st_mtime_ns
    pitch.pitch_prediction(cache, "val", a)
    assert os.stat(path).st_mtime_ns == stamp
    b = LongTermPredictor(threshold=0.5, hold=0.8)
    assert pitch.prediction_path(cache, "val", b) != path
    with pytest.raises(TypeError, match="LongTermPredictor"):
        pitch.pitch_prediction(cache, "val", {"threshold": 0.3})


def test_dataset_rejects_a_prediction_of_another_layout(built):
    _, cache = built
    with pytest.raises(ValueError, match="laid out like"):
        pipeline.make_dataset(cache, "val", batch_size=2, pitch=pitch.PitchTrack(*(np.zeros(7, np.float32),) * 3))


def test_pitch_synthesis_tf_equals_the_decoders_filter():
    """The loss's pitch synthesis is the decoder's (zero history) to float32 precision for lags of
    64 and more, where its 8 iterations are exact."""
    rng = np.random.default_rng(3)
    predictor = LongTermPredictor()
    err = rng.standard_normal((3, 480))
    codes = np.stack([rng.integers(64 - 32, 320 - 32, (3, 4)), rng.integers(0, 8, (3, 4))], axis=-1)
    want = np.stack([predictor.synthesis_filter(predictor.initial_history(), err[i], codes[i]) for i in range(3)])
    gain = np.repeat(codes[..., 1] * predictor.gain_step, 120, axis=1)
    lag = np.where(gain > 0, np.repeat(codes[..., 0] + 32, 120, axis=1), 0)
    got = tf_ops.pitch_synthesis_tf(tf.constant(err, tf.float32), lag, gain).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
    assert not np.allclose(got, err)
    # Not predicted anywhere: the error passes unchanged.
    same = tf_ops.pitch_synthesis_tf(tf.constant(err, tf.float32), np.zeros((3, 480), int), np.zeros((3, 480))).numpy()
    np.testing.assert_array_equal(same, err.astype(np.float32))


def _tiny_model():
    cfg = Config(num_modules=2, channels=8, bottleneck=4, blocks_per_section=1, gain_subframes=4,
                 pitch_prediction=True).validate()
    model = trainer.build_model(cfg)
    return cfg, model


def test_forward_codes_the_pitch_residual_and_adds_the_prediction_back():
    cfg, model = _tiny_model()
    rng = np.random.default_rng(1)
    batch = {"x": tf.constant(rng.standard_normal((3, 528)), tf.float32),
             "lsf": tf.constant(np.tile(lpc.analyze(rng.standard_normal(2048), 3)[None], (3, 1, 1)), tf.float32)}
    plain = model.forward(batch, training=False)
    zero = model.forward({**batch, "ltp": tf.zeros((3, 512))}, training=False)
    np.testing.assert_array_equal(plain["x_hat"].numpy(), zero["x_hat"].numpy())   # no prediction: same path
    p = tf.constant(0.5 * rng.standard_normal((3, 512)), tf.float32)
    with tf.GradientTape() as tape:
        fwd = model.forward({**batch, "ltp": p}, training=True)
        loss = model.compute_terms(fwd, training=True)["loss"]
    grads = tape.gradient(loss, model.trainable_variables)
    assert np.isfinite(loss.numpy()) and any(g is not None for g in grads)
    # The cascade saw a different residual, so its output (and the error) changed.
    assert not np.allclose(fwd["x_hat"].numpy(), plain["x_hat"].numpy())
    assert model.ltp is not None and model.ltp.threshold == cfg.ltp_threshold and model.ltp.hold == cfg.ltp_hold
    # With the shaped loss, the error the loss sees is the cascade's through the pitch synthesis filter.
    shaped_in = {**batch, "ltp": p, "ltp_lag": tf.fill((3, 512), 100), "ltp_gain": tf.fill((3, 512), 0.5)}
    unshaped = model.forward(shaped_in, training=False)
    model.ltp_shaped_loss = True
    shaped = model.forward(shaped_in, training=False)
    model.ltp_shaped_loss = False
    assert float(tf.reduce_sum(shaped["err_sig"] ** 2)) > 1.2 * float(tf.reduce_sum(unshaped["err_sig"] ** 2))


def test_flags_are_checked():
    with pytest.raises(ConfigError, match="ltp_threshold"):
        Config(pitch_prediction=True, ltp_threshold=1.0).validate()
    with pytest.raises(ConfigError, match="ltp_hold"):
        Config(pitch_prediction=True, ltp_hold=-0.1).validate()
    with pytest.raises(ConfigError, match="ltp_shaped_loss"):
        Config(ltp_shaped_loss=True).validate()
    with pytest.raises(ConfigError, match="denoising"):
        Config(pitch_prediction=True, train_snr=(0.0, 10.0)).validate()
    with pytest.raises(ConfigError, match="pitch_prediction.*waveform codec"):
        Config(model_type="waveform", training_mode=1, pitch_prediction=True).validate()
    assert trainer.ltp_config(Config().validate()) is None


def test_tiny_run_trains_with_the_prediction_and_its_model_codes_pitch(tmp_path, corpus):
    cfg = Config(name="tiny_ltp", results_dir=str(tmp_path / "results"), cache_dir=str(tmp_path / "cache"),
                 corpus="librispeech", data_dir=str(corpus), num_modules=1, channels=8, bottleneck=4,
                 blocks_per_section=1, training_mode=1, epoch_tanh=1, pretrain_step=0, steps_per_epoch=2,
                 validation_steps=1, batch_size=8, eval_clips=0, pitch_prediction=True,
                 ltp_threshold=0.3).validate()
    parts, cache = modes.load_data(cfg)
    train_ds, _, _ = modes.datasets(cfg, cache, parts["train"])
    assert "ltp" in next(iter(train_ds))
    experiment.run(cfg)
    model = load(os.path.join(cfg.experiment_dir, "model.keras")).model
    assert model.ltp is not None and model.ltp.threshold == 0.3
    wav = audio.load_audio(parts["val"][0].path)
    codes = encode(model, wav)
    assert codes.pitch is not None and np.any(codes.pitch[..., 1] > 0)
    out = decode(model, codes)
    assert out.shape == wav.shape and np.all(np.isfinite(out))

    # Modes 2 and 5 can start from a .keras file's weights (a shipped model) instead of a folder.
    ft = Config(**{**cfg.__dict__, "name": "tiny_ltp_ft", "training_mode": 5, "epoch_finetune": 1,
                   "base_model_id": os.path.join(cfg.experiment_dir, "model.keras")}).validate()
    experiment.run(ft)
    tuned = load(os.path.join(ft.experiment_dir, "model.keras")).model
    base_w = [w.numpy() for w in model.trainable_weights]
    tuned_w = [w.numpy() for w in tuned.trainable_weights]
    fresh = trainer.build_model(ft)
    # Two steps of fine-tuning at a small learning rate stay near the base, far from a fresh model.
    near = sum(float(np.sum((a - b) ** 2)) for a, b in zip(base_w, tuned_w))
    far = sum(float(np.sum((a.numpy() - b) ** 2)) for a, b in zip(fresh.trainable_weights, tuned_w))
    assert near < 0.01 * far
    missing = Config(**{**ft.__dict__, "name": "tiny_missing", "base_model_id": str(tmp_path / "nope.keras")}).validate()
    with pytest.raises(ConfigError, match="base_model_id"):
        experiment.run(missing)
