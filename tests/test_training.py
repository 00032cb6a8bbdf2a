"""The greedy schedule end to end on a tiny generated corpus: results folder, chaining, resume."""

import csv
import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest

from cq_codec.config import Config
from cq_codec import experiment
from cq_codec.training import modes, trainer
from tests.conftest import write_librispeech


def _cfg(tmp_path, corpus_root, **kw):
    base = dict(name="tiny", results_dir=str(tmp_path / "results"), cache_dir=str(tmp_path / "cache"),
                corpus="librispeech", data_dir=str(corpus_root), num_modules=2, channels=8, bottleneck=4,
                blocks_per_section=1, epoch_tanh=2, epoch_followers=(1,), epoch_finetune=1, pretrain_step=1,
                follower_pretrain_step=1,
                steps_per_epoch=3, validation_steps=1, batch_size=8, eval_clips=1)
    base.update(kw)
    return Config(**base).validate()


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("libri")
    write_librispeech(str(root), seconds=1.5)
    return root


def _stages(csv_path):
    with open(csv_path, newline="") as fh:
        return [(r["stage"], int(r["epoch"])) for r in csv.DictReader(fh)]


def test_mode4_writes_the_whole_results_folder(tmp_path, corpus):
    cfg = _cfg(tmp_path, corpus)
    experiment.run(cfg)
    exp = cfg.experiment_dir
    for rel in ("config.json", "model.keras", "metrics.csv", "eval.csv", "eval.md", "plots/training.png",
                "checkpoints/ckpt-000004/weights.weights.h5", "checkpoints/ckpt-000004/state.json",
                "checkpoints/end-m1", "checkpoints/end-m2", "checkpoints/end-finetune"):
        assert os.path.exists(os.path.join(exp, rel)), rel
    assert sorted(n for n in os.listdir(os.path.join(exp, "checkpoints")) if n.startswith("ckpt-")) == ["ckpt-000004"]
    assert _stages(os.path.join(exp, "metrics.csv")) == [("m1", 1), ("m1", 2), ("m2", 1), ("finetune", 1)]
    wavs = os.listdir(os.path.join(exp, "audio"))
    assert any(w.endswith("_clean.wav") for w in wavs)
    assert any(w.endswith("_decoded_2modules.wav") for w in wavs)
    with open(os.path.join(exp, "eval.csv"), newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert {r["modules"] for r in rows} == {"1", "2"}
    assert all(np.isfinite(float(r["snr"])) and float(r["kbps"]) > 0 and float(r["entropy_kbps"]) > 0 for r in rows)
    assert Config.load(os.path.join(exp, "config.json")) == cfg
    # A second run of the same experiment finds every stage finished and trains nothing.
    experiment.run(cfg)
    assert len(_stages(os.path.join(exp, "metrics.csv"))) == 4


class _Interrupt(keras.callbacks.Callback):
    def __init__(self, stage_epochs):
        super().__init__()
        self.n = stage_epochs

    def on_epoch_end(self, epoch, logs=None):
        self.n -= 1
        if self.n == 0:
            raise KeyboardInterrupt("simulated kill")


def test_modes_chain_and_a_killed_run_resumes(tmp_path, corpus):
    # Mode 1 trains the first module only.
    cfg1 = _cfg(tmp_path, corpus, training_mode=1)
    experiment.run(cfg1)
    csv_path = os.path.join(cfg1.experiment_dir, "metrics.csv")
    assert _stages(csv_path) == [("m1", 1), ("m1", 2)]
    # Module 2 is untrained after mode 1: only the first operating point is scored and written.
    with open(os.path.join(cfg1.experiment_dir, "eval.csv"), newline="") as fh:
        assert {r["modules"] for r in csv.DictReader(fh)} == {"1"}
    assert not [w for w in os.listdir(os.path.join(cfg1.experiment_dir, "audio")) if "2modules" in w]
    # Mode 4 of the same experiment continues with the follower; it is killed after 1 of 2 epochs.
    cfg4 = _cfg(tmp_path, corpus, training_mode=4, epoch_followers=(2,))
    parts, cache = modes.load_data(cfg4)
    model = trainer.build_model(cfg4, cache.std, modes.first_batch(cache))
    train_ds, val_ds, steps = modes.datasets(cfg4, cache)
    with pytest.raises(KeyboardInterrupt):
        trainer.train(cfg4, model, train_ds, val_ds, steps, extra_callbacks=[_Interrupt(1)])
    state = trainer.load_state(cfg4.experiment_dir)[0]
    assert state["done"] == {"m1": 2, "m2": 1}
    saved = trainer.build_model(cfg4, cache.std, modes.first_batch(cache))
    saved.load_weights(trainer.latest_weights(cfg4.experiment_dir))
    # Restarted: m1 is not repeated, m2 resumes at its second epoch, then fine-tuning.
    experiment.run(cfg4)
    assert _stages(csv_path) == [("m1", 1), ("m1", 2), ("m2", 1), ("m2", 2), ("finetune", 1)]
    # The resumed run started from the checkpoint (tau and weights restored from it).
    assert np.allclose(saved.tau.numpy(), state["tau"])


def test_same_seed_same_weights(tmp_path, corpus):
    outs = []
    for k in range(2):
        cfg = _cfg(tmp_path / str(k), corpus, training_mode=1, epoch_tanh=1, pretrain_step=0, eval_clips=0)
        experiment.run(cfg)
        m = trainer.build_model(cfg)
        m.load_weights(trainer.latest_weights(cfg.experiment_dir))
        outs.append([w.numpy() for w in m.weights])
    for a, b in zip(*outs):
        np.testing.assert_array_equal(a, b)


def test_mirrored_strategy_on_two_logical_cpus(tmp_path, corpus):
    cfg = _cfg(tmp_path, corpus, training_mode=1, epoch_tanh=1, pretrain_step=0, eval_clips=0)
    args = [f"--{k}={','.join(map(str, v)) if isinstance(v, tuple) else v}" for k, v in
            [("training_mode", 1), ("name", "mirrored"), ("results_dir", cfg.results_dir), ("cache_dir", cfg.cache_dir),
             ("corpus", cfg.corpus), ("data_dir", cfg.data_dir), ("num_modules", 1), ("channels", 8),
             ("bottleneck", 4), ("blocks_per_section", 1), ("epoch_tanh", 1), ("pretrain_step", 0),
             ("steps_per_epoch", 2), ("validation_steps", 1), ("batch_size", 8), ("eval_clips", 0),
             ("distribute", "mirrored")]]
    proc = subprocess.run([sys.executable, "main.py", *args], capture_output=True, text=True, timeout=600,
                          cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "MirroredStrategy" in proc.stderr or "mirrored" in proc.stderr.lower()
    assert _stages(os.path.join(cfg.results_dir, "mirrored", "metrics.csv")) == [("m1", 1)]


def test_denoising_run_writes_noisy_and_denoised_audio(tmp_path, corpus):
    """Noisy training (x_noisy, lsf_noisy on the fly) and a noisy evaluation scored against the
    clean clip, with the noisy input itself as the modules=0 row."""
    cfg = _cfg(tmp_path, corpus, training_mode=1, epoch_tanh=1, pretrain_step=0, num_modules=1,
               train_snr=(0.0, 10.0), eval_snr=(5.0,))
    experiment.run(cfg)
    wavs = os.listdir(os.path.join(cfg.experiment_dir, "audio"))
    assert any(w.endswith("_noisy_5dB.wav") for w in wavs)
    assert any(w.endswith("_denoised_5dB_1modules.wav") for w in wavs)
    with open(os.path.join(cfg.experiment_dir, "eval.csv"), newline="") as fh:
        rows = list(csv.DictReader(fh))
    noisy = [r for r in rows if r["modules"] == "0"]
    assert len(noisy) == 1 and abs(float(noisy[0]["snr"]) - 5.0) < 0.2
    assert {r["snr_db"] for r in rows} == {"5.0"}


def test_speed_perturbed_training_uses_its_own_cache(tmp_path, corpus):
    """--speed_perturb trains on a cache of its own (three times the training frames) and leaves
    the plain corpus's cache, validation and evaluation as they were."""
    plain = _cfg(tmp_path, corpus, training_mode=1, epoch_tanh=1, pretrain_step=0, num_modules=1, eval_clips=0)
    sped = _cfg(tmp_path, corpus, training_mode=1, epoch_tanh=1, pretrain_step=0, num_modules=1, eval_clips=0,
                name="sped", speed_perturb=(0.9, 1.1))
    _, plain_cache = modes.load_data(plain)
    experiment.run(sped)
    _, sped_cache = modes.load_data(sped)
    assert sped_cache.directory != plain_cache.directory
    assert sped_cache.std == plain_cache.std
    assert sped_cache.splits["val"] == plain_cache.splits["val"]
    assert 2.5 * plain_cache.num_frames("train") < sped_cache.num_frames("train") < 3.5 * plain_cache.num_frames("train")
    assert _stages(os.path.join(sped.experiment_dir, "metrics.csv")) == [("m1", 1)]
    with open(os.path.join(sped.experiment_dir, "config.json")) as fh:
        assert json.load(fh)["speed_perturb"] == [0.9, 1.1]


def test_gumbel_temperature_anneals_over_a_stage(tmp_path, corpus):
    """The Gumbel quantizer's temperature follows max(min, t0 * exp(-rate * step)) over the
    stage's quantized batches (it stays at t0 in the quantization-free epoch)."""
    import math
    cfg = _cfg(tmp_path, corpus, training_mode=1, num_modules=1, quantizer="gumbel", embedding_dim=4,
               codebook_size=16, epoch_tanh=3, pretrain_step=1, eval_clips=0)
    parts, cache = modes.load_data(cfg)
    model = trainer.build_model(cfg, cache.std, modes.first_batch(cache))
    q = model.codec_modules[0].quantizer
    seen = []

    class Watch(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            seen.append(float(q.temperature.numpy()))

    train_ds, val_ds, steps = modes.datasets(cfg, cache)
    trainer.train(cfg, model, train_ds, val_ds, steps, extra_callbacks=[Watch()])
    expect = lambda step: max(q.min_temperature, q.initial_temperature * math.exp(-q.anneal_rate * step))
    # Epoch 1 quantization-free; epochs 2-3 quantized: their last batches are steps 2 and 5.
    assert seen[0] == pytest.approx(q.initial_temperature, rel=1e-7)
    assert seen[1:] == pytest.approx([expect(steps - 1), expect(2 * steps - 1)], rel=1e-6)
    assert seen[2] < seen[1] < seen[0]


def test_a_stage_that_ends_with_collapsed_codes_says_so(tmp_path, corpus, caplog, monkeypatch):
    """Any entropy counts as collapsed when the threshold is above every target: the stage's end
    then names the module and the LSF codes in an error, and the run still writes its checkpoint."""
    from cq_codec.training.callbacks import TauController
    monkeypatch.setattr(TauController, "COLLAPSE_FRACTION", 1e9)
    cfg = _cfg(tmp_path, corpus, training_mode=1, num_modules=1, epoch_tanh=2, pretrain_step=1, eval_clips=0)
    parts, cache = modes.load_data(cfg)
    model = trainer.build_model(cfg, cache.std, modes.first_batch(cache))
    train_ds, val_ds, steps = modes.datasets(cfg, cache)
    with caplog.at_level("WARNING", logger="cq_codec.training"):
        trainer.train(cfg, model, train_ds, val_ds, steps)
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert len(errors) == 2 and all("collapsed" in e for e in errors)
    assert any("module 1 collapsed (Hh_1" in e for e in errors) and any("the LSF codes" in e for e in errors)
    assert os.listdir(os.path.join(cfg.experiment_dir, "checkpoints"))


def test_retraining_part_of_a_trained_cascade(tmp_path, corpus):
    """--training_mode 2 --first_follower 3 --base_model_id m.keras: only stage m3 runs; modules 1-2
    keep the base's weights exactly, module 3's move. --training_mode 5 --finetune_from 2: module 1
    and the LSF quantizer are kept."""
    base = _cfg(tmp_path, corpus, training_mode=3, num_modules=3, epoch_tanh=1, pretrain_step=0,
                follower_pretrain_step=0, steps_per_epoch=2, eval_clips=0)
    experiment.run(base)
    path = os.path.join(base.experiment_dir, "model.keras")
    cfg = _cfg(tmp_path, corpus, name="m3only", training_mode=2, num_modules=3, first_follower=3,
               base_model_id=path, follower_pretrain_step=0, steps_per_epoch=2, eval_clips=0)
    experiment.run(cfg)
    assert _stages(os.path.join(cfg.experiment_dir, "metrics.csv")) == [("m3", 1)]
    before = keras.saving.load_model(path, compile=False)
    after = keras.saving.load_model(os.path.join(cfg.experiment_dir, "model.keras"), compile=False)
    for i in (0, 1):
        for a, b in zip(before.codec_modules[i].weights, after.codec_modules[i].weights):
            np.testing.assert_array_equal(a.numpy(), b.numpy())
    assert any(not np.array_equal(a.numpy(), b.numpy())
               for a, b in zip(before.codec_modules[2].trainable_weights, after.codec_modules[2].trainable_weights))
    with pytest.raises(Exception, match="first_follower"):
        _cfg(tmp_path, corpus, training_mode=4, num_modules=3, first_follower=3)

    # Mode 5 with --finetune_from 2: module 1 and the LSF quantizer keep the base's weights.
    ft = _cfg(tmp_path, corpus, name="ft_from2", training_mode=5, num_modules=3, finetune_from=2,
              base_model_id=path, steps_per_epoch=2, eval_clips=0)
    experiment.run(ft)
    tuned = keras.saving.load_model(os.path.join(ft.experiment_dir, "model.keras"), compile=False)
    for a, b in zip(before.codec_modules[0].weights + before.lsf_quantizer.weights,
                    tuned.codec_modules[0].weights + tuned.lsf_quantizer.weights):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    assert any(not np.array_equal(a.numpy(), b.numpy())
               for a, b in zip(before.codec_modules[1].trainable_weights, tuned.codec_modules[1].trainable_weights))
    with pytest.raises(Exception, match="finetune_from"):
        _cfg(tmp_path, corpus, training_mode=5, num_modules=3, finetune_from=4, base_model_id=path)


def test_a_module_of_another_architecture_retrained_on_a_trained_cascade(tmp_path, corpus):
    """--module_channels / --the_strides per module: mode 2 retrains module 2 with half the
    channels and twice the positions on a base whose module 2 was built otherwise; module 1 and
    the LSF quantizer keep the base's weights exactly. A module that differs but is not retrained,
    or any difference in modes 4-5, is an error naming the module."""
    base = _cfg(tmp_path, corpus, training_mode=3, num_modules=2, epoch_tanh=1, pretrain_step=0,
                follower_pretrain_step=0, steps_per_epoch=2, eval_clips=0, the_strides=(4,))
    experiment.run(base)
    path = os.path.join(base.experiment_dir, "model.keras")
    cfg = _cfg(tmp_path, corpus, name="narrow2", training_mode=2, num_modules=2, first_follower=2,
               base_model_id=path, follower_pretrain_step=0, steps_per_epoch=2, eval_clips=0,
               the_strides=(4, 2), module_channels=(8, 4), module_bottleneck=(4, 2))
    assert cfg.module_width(0) == (8, 4) and cfg.module_width(1) == (4, 2) and cfg.module_width(5) == (4, 2)
    experiment.run(cfg)
    before = keras.saving.load_model(path, compile=False)
    after = keras.saving.load_model(os.path.join(cfg.experiment_dir, "model.keras"), compile=False)
    assert after.codec_modules[1].channels == 4 and after.codec_modules[1].num_positions == 2 * before.codec_modules[1].num_positions
    for a, b in zip(before.codec_modules[0].weights + before.lsf_quantizer.weights,
                    after.codec_modules[0].weights + after.lsf_quantizer.weights):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    # the retrained cascade codes and decodes through the file format like any other
    from cq_codec import api
    codec = api.load(os.path.join(cfg.experiment_dir, "model.keras"))
    x = np.random.default_rng(0).normal(0, 0.1, 8000).astype(np.float32)
    y, sr = codec.decompress(codec.compress(x, 16000))
    assert sr == 16000 and y.shape == x.shape
    with pytest.raises(Exception, match=r"module\(s\) \[2\] differ"):
        experiment.run(_cfg(tmp_path, corpus, name="bad5", training_mode=5, num_modules=2, base_model_id=path,
                            steps_per_epoch=2, eval_clips=0, the_strides=(4, 2), module_channels=(8, 4)))
    with pytest.raises(Exception, match="module_channels"):
        _cfg(tmp_path, corpus, module_channels=(8, 3))
