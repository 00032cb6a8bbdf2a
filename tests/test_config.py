"""Flag validation: every bad value fails at start with a message naming the flag."""

import subprocess
import sys

import pytest

from cq_codec.config import Config, ConfigError, parse_int_list


@pytest.mark.parametrize("kwargs, flag", [
    ({"training_mode": 7}, "training_mode"),
    ({"the_strides": (3,)}, "the_strides"),
    ({"quantizer": "lattice"}, "quantizer"),
    ({"channels": 7}, "channels"),
    ({"kernel_and_dilation": (9, 9, 1)}, "kernel_and_dilation"),
    ({"pretrain_step": 10, "epoch_tanh": 10}, "pretrain_step"),
    ({"training_mode": 2}, "base_model_id"),
    ({"target_entropy": (0.0,)}, "target_entropy"),
    ({"quantizer": "vq", "embedding_dim": 3}, "embedding_dim"),
    ({"learning_rate_tanh": (2.0,)}, "learning_rate_tanh"),
    ({"name": "a/b"}, "name"),
    ({"weighting_gamma": 0.0}, "weighting_gamma"),
    ({"weighting_gamma": 1.5}, "weighting_gamma"),
    ({"tau_init": 0.0}, "tau_init"),                       # 0 only under signed control
    ({"tau_init": -0.5, "tau_signed": True}, "tau_init"),
    ({"speed_perturb": (1.0,)}, "speed_perturb"),          # the recording is always kept
    ({"speed_perturb": (0.5,)}, "speed_perturb"),
    ({"speed_perturb": (0.9, 0.9)}, "speed_perturb"),
])
def test_bad_values_name_their_flag(kwargs, flag):
    with pytest.raises(ConfigError, match=f"--{flag}"):
        Config(**kwargs).validate()


def test_defaults_are_valid_and_roundtrip(tmp_path):
    cfg = Config().validate()
    path = tmp_path / "config.json"
    cfg.save(str(path))
    assert Config.load(str(path)) == cfg
    assert cfg.per_module("target_entropy", 5) == cfg.target_entropy[-1]


def test_signed_control_may_start_without_a_penalty():
    assert Config(tau_init=0.0, tau_signed=True).validate().tau_init == 0.0


def test_list_parsing():
    assert parse_int_list("2, 4") == [2, 4]
    with pytest.raises(ConfigError, match="--the_strides"):
        parse_int_list("2,x", "the_strides")


def test_main_rejects_bad_stride_before_training(tmp_path):
    proc = subprocess.run([sys.executable, "main.py", "--the_strides=3", f"--results_dir={tmp_path}"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    assert "--the_strides" in proc.stderr and "stride 3" in proc.stderr
