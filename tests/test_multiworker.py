"""`--distribute multiworker`: two worker processes on 127.0.0.1 (TF_CONFIG, the same command)
train the same steps, end with the same weights; only the chief writes the experiment folder; a
killed job resumes from the chief's checkpoint."""

import csv
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time

import pytest

from tests.conftest import write_librispeech

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FINGERPRINT = re.compile(r"weights after (\d+) optimizer steps: sha256 ([0-9a-f]{64}) norms (\[.*\])")


def _ports(n):
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def _start(args, ports, index, kill_at=None):
    cluster = {"worker": [f"127.0.0.1:{p}" for p in ports]}
    env = {**os.environ, "PYTHONPATH": ROOT, "TF_CONFIG": json.dumps({"cluster": cluster,
                                                                       "task": {"type": "worker", "index": index}})}
    env.pop("CQ_CODEC_KILL_AT", None)
    if kill_at:
        env["CQ_CODEC_KILL_AT"] = kill_at
    return subprocess.Popen([sys.executable, "main.py", *args, "--distribute=multiworker"], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait(procs, timeout=3600):
    outs = []
    for p in procs:
        try:
            out, err = p.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            p.kill()
            out, err = p.communicate()
        outs.append((p.returncode, err))
    return outs


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A tiny corpus with its frame cache built once (the workers share this machine's disk)."""
    tmp = tmp_path_factory.mktemp("mw")
    write_librispeech(str(tmp / "libri"), seconds=1.5)
    from cq_codec.config import Config
    from cq_codec.training import modes
    cfg = Config(corpus="librispeech", data_dir=str(tmp / "libri"), cache_dir=str(tmp / "cache")).validate()
    modes.load_data(cfg)
    return tmp


def _args(tmp, name, epochs):
    return [f"--name={name}", f"--results_dir={tmp / 'results'}", f"--cache_dir={tmp / 'cache'}",
            "--corpus=librispeech", f"--data_dir={tmp / 'libri'}", "--training_mode=1", "--num_modules=1",
            "--channels=8", "--bottleneck=4", "--blocks_per_section=1", f"--epoch_tanh={epochs}", "--pretrain_step=1",
            "--steps_per_epoch=3", "--validation_steps=1", "--batch_size=8", "--eval_clips=1"]


def _fingerprint(err):
    m = FINGERPRINT.search(err)
    assert m, err[-3000:]
    return int(m.group(1)), m.group(2), json.loads(m.group(3))


def test_two_workers_train_the_same_weights_and_only_the_chief_writes(setup):
    ports = _ports(2)
    args = _args(setup, "mw", epochs=2)
    results = _wait([_start(args, ports, 0), _start(args, ports, 1)])
    for rc, err in results:
        assert rc == 0, err[-4000:]
    (steps0, sha0, norms0), (steps1, sha1, norms1) = (_fingerprint(err) for _, err in results)
    assert steps0 == steps1 == 6                       # 2 epochs of 3 steps, in step on both workers
    assert sha0 == sha1 and norms0 == norms1           # identical weights after the all-reduced updates
    exp = setup / "results" / "mw"
    for rel in ("config.json", "metrics.csv", "model.keras", "eval.csv", "checkpoints/end-m1", "tensorboard/m1"):
        assert (exp / rel).exists(), rel
    assert [n for n in os.listdir(exp / "checkpoints") if n.startswith("ckpt-")] == ["ckpt-000002"]
    with open(exp / "metrics.csv", newline="") as fh:
        assert [(r["stage"], r["epoch"]) for r in csv.DictReader(fh)] == [("m1", "1"), ("m1", "2")]
    # The other worker wrote to a scratch folder of its own and removed it.
    scratch = re.search(r"it writes to (\S+) \(removed at the end\)", results[1][1])
    assert scratch and not os.path.exists(scratch.group(1))
    assert "not the chief" not in results[0][1]


def test_a_killed_job_resumes_from_the_chiefs_checkpoint(setup):
    ports = _ports(2)
    args = _args(setup, "mw_resume", epochs=3)
    # The chief dies right after its first checkpoint; its peer then blocks in the next collective
    # and is stopped too (a dead job), as a cluster manager would.
    chief = _start(args, ports, 0, kill_at="ckpt_renamed:1")
    other = _start(args, ports, 1)
    assert _wait([chief], timeout=3600)[0][0] == -signal.SIGKILL
    time.sleep(2)
    other.kill()
    _wait([other])
    exp = setup / "results" / "mw_resume"
    from cq_codec.training import trainer
    state = trainer.load_state(str(exp))[0]     # killed after the rename, before metrics.csv
    assert [(r["stage"], r["epoch"]) for r in state["history"]] == [("m1", 1)]
    # Restarted with the same command on both: both resume at epoch 2 and finish in step.
    ports = _ports(2)
    results = _wait([_start(args, ports, 0), _start(args, ports, 1)])
    for rc, err in results:
        assert rc == 0, err[-4000:]
        assert "stage m1 resumes at epoch 2" in err
    (s0, sha0, _), (s1, sha1, _) = (_fingerprint(err) for _, err in results)
    assert s0 == s1 == 9 and sha0 == sha1
    with open(exp / "metrics.csv", newline="") as fh:
        assert [(r["stage"], r["epoch"]) for r in csv.DictReader(fh)] == [("m1", "1"), ("m1", "2"), ("m1", "3")]
