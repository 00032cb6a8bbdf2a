"""Training faults: SIGKILL at deterministic moments (during an epoch, between a checkpoint's
files, after its rename, during the final model write) never loses a finished epoch nor leaves
a torn file; a second concurrent run is refused; bad data flags get a message naming the flag."""

import csv
import json
import os
import signal
import subprocess
import sys
import zipfile

import numpy as np
import pytest

from tests.conftest import write_librispeech

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# m1: 2 epochs (1 quantization-free), m2: 2 epochs, fine-tuning: 1 epoch; 2 steps each.
EXPECTED = [("m1", 1), ("m1", 2), ("m2", 1), ("m2", 2), ("finetune", 1)]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("libri")
    write_librispeech(str(root), seconds=1.5)
    return root


def _args(tmp_path, corpus, name="faults"):
    return ["--training_mode=4", f"--name={name}", f"--results_dir={tmp_path / 'results'}",
            f"--cache_dir={tmp_path / 'cache'}", "--corpus=librispeech", f"--data_dir={corpus}",
            "--num_modules=2", "--channels=8", "--bottleneck=4", "--blocks_per_section=1", "--epoch_tanh=2",
            "--epoch_followers=2", "--epoch_finetune=1", "--pretrain_step=1", "--steps_per_epoch=2",
            "--validation_steps=1", "--batch_size=8", "--eval_clips=0"]


def _main(args, kill_at=None, timeout=3600):
    env = {**os.environ, "PYTHONPATH": ROOT}
    env.pop("CQ_CODEC_KILL_AT", None)
    if kill_at:
        env["CQ_CODEC_KILL_AT"] = kill_at
    return subprocess.run([sys.executable, "main.py", *args], capture_output=True, text=True, timeout=timeout,
                          cwd=ROOT, env=env)


def _checkpoints(exp):
    d = os.path.join(exp, "checkpoints")
    return sorted(n for n in os.listdir(d) if n.startswith("ckpt-")) if os.path.isdir(d) else []


def _assert_nothing_torn(exp):
    """Every checkpoint directory is complete and loads; model.keras, if any, is a whole zip;
    metrics.csv holds exactly the newest checkpoint's history."""
    import h5py
    newest = None
    for name in _checkpoints(exp):
        d = os.path.join(exp, "checkpoints", name)
        assert sorted(os.listdir(d)) == ["optimizer.npz", "state.json", "weights.weights.h5"], name
        with h5py.File(os.path.join(d, "weights.weights.h5"), "r") as fh:
            assert len(fh.keys()) > 0
        np.load(os.path.join(d, "optimizer.npz")).files
        with open(os.path.join(d, "state.json")) as fh:
            newest = json.load(fh)
    model = os.path.join(exp, "model.keras")
    if os.path.exists(model):
        with zipfile.ZipFile(model) as zf:
            assert zf.testzip() is None
    if newest is not None and os.path.exists(os.path.join(exp, "metrics.csv")):
        assert [(s, e) for s, e in _metrics(exp)] in (
            [(r["stage"], int(r["epoch"])) for r in newest["history"]],
            [(r["stage"], int(r["epoch"])) for r in newest["history"]][:-1])   # killed before the csv rewrite
    return newest


def _metrics(exp):
    with open(os.path.join(exp, "metrics.csv"), newline="") as fh:
        return [(r["stage"], int(r["epoch"])) for r in csv.DictReader(fh)]


def _finished(state):
    return [(r["stage"], int(r["epoch"])) for r in state["history"]] if state else []


def test_sigkill_at_each_moment_resumes_without_losing_a_finished_epoch(tmp_path, corpus):
    args = _args(tmp_path, corpus)
    exp = str(tmp_path / "results" / "faults")
    history_rows = {}

    # 1. Killed during m1's second epoch (after its 3rd training batch in all): epoch 1 is kept.
    proc = _main(args, kill_at="epoch_batch:3")
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]
    state = _assert_nothing_torn(exp)
    assert _finished(state) == EXPECTED[:1]
    history_rows.update({(r["stage"], int(r["epoch"])): r for r in state["history"]})

    # 2. Resumed, then killed inside the 2nd checkpoint it writes (m2 epoch 1): weights written to
    #    the temporary directory, optimizer and state not yet; the m1 checkpoints stay the newest.
    proc = _main(args, kill_at="ckpt_weights:2")
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]
    assert "resumes at epoch 2" in proc.stderr
    state = _assert_nothing_torn(exp)
    assert _finished(state) == EXPECTED[:2]
    assert any(n.endswith(".tmp") for n in os.listdir(os.path.join(exp, "checkpoints")))   # the torn one, unused
    for key, row in history_rows.items():   # finished epochs are kept as they were
        assert [r for r in state["history"] if (r["stage"], int(r["epoch"])) == key][0] == row
    history_rows.update({(r["stage"], int(r["epoch"])): r for r in state["history"]})

    # 3. Resumed, killed right after a checkpoint's rename (m2 epoch 2), before old ones are removed.
    proc = _main(args, kill_at="ckpt_renamed:2")
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]
    assert not any(n.endswith(".tmp") for n in os.listdir(os.path.join(exp, "checkpoints")))   # cleaned up
    state = _assert_nothing_torn(exp)
    assert _finished(state) == EXPECTED[:4]
    assert len(_checkpoints(exp)) == 2
    for key, row in history_rows.items():
        assert [r for r in state["history"] if (r["stage"], int(r["epoch"])) == key][0] == row

    # 4. Resumed, killed while the final model.keras is written: no model.keras at all, not a torn one.
    proc = _main(args, kill_at="model_write:1")
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]
    state = _assert_nothing_torn(exp)
    assert _finished(state) == EXPECTED
    assert not os.path.exists(os.path.join(exp, "model.keras"))

    # 5. Resumed: nothing left to train; the model is written; every epoch once, in order.
    proc = _main(args)
    assert proc.returncode == 0, proc.stderr[-3000:]
    state = _assert_nothing_torn(exp)
    assert _metrics(exp) == EXPECTED == _finished(state)
    assert os.path.exists(os.path.join(exp, "model.keras"))
    assert not [n for n in os.listdir(exp) if ".tmp" in n]
    assert sorted(n for n in os.listdir(os.path.join(exp, "checkpoints")) if n.startswith("end-")) == [
        "end-finetune", "end-m1", "end-m2"]


def test_a_second_concurrent_run_is_refused_and_a_stale_lock_is_taken_over(tmp_path, corpus):
    from cq_codec.training.atomic import ExperimentLock
    exp = tmp_path / "results" / "locked"
    args = _args(tmp_path, corpus, name="locked")
    # A live holder (this process): main.py stops at start with a message naming the owner.
    with ExperimentLock(str(exp)):
        proc = _main(args)
    assert proc.returncode == 2
    assert f"pid {os.getpid()}" in proc.stderr and "in use by another run" in proc.stderr
    assert not os.path.exists(exp / "metrics.csv")
    # A lock file left by a killed run (no process holds it) is stale: the next run takes it over.
    (exp / ".lock").write_text("pid 999999 on elsewhere\n")
    lock = ExperimentLock(str(exp)).acquire()
    assert lock.stale_owner == "pid 999999 on elsewhere"
    lock.release()


@pytest.mark.parametrize("extra, message", [
    (["--corpus=librispeech", "--data_dir=/nonexistent"], "--data_dir '/nonexistent'"),
    (["--corpus=demo", "--data_dir=/nonexistent/demo"], "--data_dir '/nonexistent/demo': no such folder"),
    (["--corpus=folder", "--data_dir={empty}"], "(--corpus folder): no folder audio files found under"),
])
def test_missing_or_empty_corpus_is_a_message_naming_the_flag(tmp_path, extra, message):
    (tmp_path / "empty").mkdir()
    extra = [e.format(empty=tmp_path / "empty") for e in extra]
    proc = _main([f"--results_dir={tmp_path / 'results'}", f"--cache_dir={tmp_path / 'cache'}", "--training_mode=1",
                  *extra], timeout=300)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert message in proc.stderr, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
