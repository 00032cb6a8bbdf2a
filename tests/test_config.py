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


# ------------------------------------------------------------------ the config described once
import dataclasses  # noqa: E402
import os  # noqa: E402

from absl import flags  # noqa: E402

from cq_codec import config as config_mod  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_every_field_carries_its_help_and_element_type():
    for f in dataclasses.fields(Config):
        assert f.metadata.get("help", "").strip(), f"{f.name} has no help text"
        if isinstance(f.default, tuple):
            assert f.metadata["element"] in (int, float), f.name
        else:
            assert f.metadata["element"] is None, f.name


def test_main_flags_are_generated_from_the_fields():
    fv = flags.FlagValues()
    config_mod.define_config_flags(flag_values=fv)
    fields = {f.name: f for f in dataclasses.fields(Config)}
    assert set(fv) == set(fields) | set(config_mod.EXTRA_FLAGS)
    for name, f in fields.items():
        assert fv[name].help.startswith(f.metadata["help"]), name
    fv(["main.py", "--the_strides", "2 4", "--quantizer=rvq", "--codebook_sizes=8,16,32", "--target_entropy", "1.5,2",
        "--nois_cq", "--num_resnets", "3"])
    cfg = config_mod.config_from_absl(fv)
    # Element types come from the metadata: ints stay ints, floats floats.
    assert cfg.the_strides == (2, 4) and all(type(v) is int for v in cfg.the_strides)
    assert cfg.codebook_sizes == (8, 16, 32)
    assert cfg.target_entropy == (1.5, 2.0) and all(type(v) is float for v in cfg.target_entropy)
    assert cfg.is_cq is False and cfg.num_modules == 3
    assert cfg.epoch_tanh == Config.epoch_tanh   # untouched fields keep the dataclass default


@pytest.mark.parametrize("script", ["compare_quantizers", "bitrate_scaling", "denoise_study"])
def test_study_flags_take_config_fields_from_the_config(script):
    sys.path.insert(0, os.path.join(ROOT, "scripts"))
    try:
        mod = __import__(script)
    finally:
        sys.path.remove(os.path.join(ROOT, "scripts"))
    fv = flags.FlagValues()
    config_mod.define_flags(mod.DEFAULTS, mod._HELP, flag_values=fv)
    assert set(fv) == set(mod.DEFAULTS)
    fields = {f.name: f for f in dataclasses.fields(Config)}
    shared = set(mod.DEFAULTS) & set(fields) - set(mod._HELP)
    assert {"data_dir", "corpus"} <= shared   # the corpus flags are described once, by Config
    for name in shared:
        assert fv[name].help.startswith(fields[name].metadata["help"]), name
    fv([script])
    for name, default in mod.DEFAULTS.items():   # the script's defaults, not Config's
        assert fv[name].value == default, name


def test_define_flags_refuses_undescribed_names():
    with pytest.raises(ValueError, match="--steps is not a Config field"):
        config_mod.define_flags({"steps": 3}, flag_values=flags.FlagValues())
    with pytest.raises(ValueError, match="without a default: steps"):
        config_mod.define_flags({}, {"steps": ("integer", "steps")}, flag_values=flags.FlagValues())


def test_a_tuple_field_must_name_its_element_type():
    with pytest.raises(TypeError, match="element type"):
        config_mod._f((1, 2), "a list")
