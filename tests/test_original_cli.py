"""The original CQ release's command line (seed 004) runs verbatim, each flag with its meaning
there; today's clearer flags keep theirs, and an original flag never silently means another thing."""

import csv
import dataclasses
import json
import os
import shlex
import subprocess
import sys
import zipfile

import pytest

from cq_codec.config import Config, ConfigError, config_from_flags
from tests.conftest import write_librispeech

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Verbatim from the CQ release's README (seed 004), quoting and all.
ORIGINAL = """python main.py --learning_rate_tanh 0.0002 --learning_rate_greedy_followers '0.00002 0.000002' \\
  --epoch_tanh 200 --epoch_greedy_followers '50 50' --batch_size 128 --num_resnets 2 \\
  --training_mode 4 --base_model_id '1993783' --from_where_step 2 --suffix '_greedy_all_' \\
  --bottleneck_kernel_and_dilation '9 9 100 20 1 2' --save_unique_mark 'follower_all' \\
  --the_strides '2' --coeff_term '60 10 10 0' --res_scalar 1.0 --pretrain_step 2 \\
  --target_entropy 2.2 --num_bins_for_follower '32 32' --is_cq 1"""


def _original_args() -> list[str]:
    """The command's arguments as a shell splits them (backslash-newline continues the line)."""
    return shlex.split(ORIGINAL.replace("\\\n", " "))[2:]


def _main(args, timeout=120):
    return subprocess.run([sys.executable, "main.py", *args], capture_output=True, text=True, timeout=timeout, cwd=ROOT,
                          env={**os.environ, "PYTHONPATH": ROOT})


def _printed_config(args) -> dict:
    proc = _main([*args, "--print_config"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout)


def _check_original_meaning(cfg: dict) -> None:
    """What each flag of the original command meant in the CQ release."""
    assert cfg["num_modules"] == 2                                   # --num_resnets 2: two cascaded codecs
    assert cfg["channels"] == 100 and cfg["bottleneck"] == 20        # '9 9 100 20 1 2': wide, narrow
    assert cfg["blocks_per_section"] == 2                            # ... one block per dilation (1, 2)
    assert cfg["kernel_and_dilation"] == [9, 9, 1, 2]                # kernel 9, dilations 1 then 2
    assert cfg["epoch_tanh"] == 200
    assert cfg["epoch_followers"] == [50] and cfg["epoch_finetune"] == 50          # '50 50': follower, fine-tune
    assert cfg["learning_rate_tanh"] == [0.0002]
    assert cfg["learning_rate_followers"] == [0.00002] and cfg["learning_rate_finetune"] == 0.000002
    assert cfg["coeff_term"] == [60.0, 10.0, 10.0]                  # time, mel, sparsity ...
    assert cfg["tau_init"] == 0.0 and cfg["tau_signed"] is True      # ... and tau starts at 0, moves either way
    assert cfg["num_bins"] == 32 and cfg["num_bins_followers"] == [32]  # '32 32': module 1, module 2
    assert cfg["the_strides"] == [2] and cfg["res_scalar"] == 1.0
    assert cfg["pretrain_step"] == 2 and cfg["follower_pretrain_step"] == 0  # the first module only
    assert cfg["target_entropy"] == [2.2] and cfg["target_unit"] == "bits"
    assert cfg["is_cq"] is True and cfg["batch_size"] == 128 and cfg["training_mode"] == 4
    assert cfg["base_model_id"] == "1993783" and cfg["from_where_step"] == 2
    assert cfg["name"] == "follower_all" and cfg["suffix"] == "_greedy_all_"      # the saved model's name


def test_the_original_command_resolves_to_its_original_meaning():
    cfg = _printed_config(_original_args())
    _check_original_meaning(cfg)
    assert cfg["max_epochs_per_stage"] == 0


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("libri")
    write_librispeech(str(root), seconds=3.0)
    return root


def test_the_original_command_trains_verbatim(tmp_path, corpus):
    """The exact command plus flags that only shrink the run: data, steps, epochs per stage and
    the batch (a later flag wins); everything else resolves as the original meant it."""
    shrink = ["--corpus", "librispeech", "--data_dir", str(corpus), "--cache_dir", str(tmp_path / "cache"),
              "--results_dir", str(tmp_path / "results"), "--steps_per_epoch", "1", "--validation_steps", "1",
              "--eval_clips", "0", "--max_epochs_per_stage", "3", "--batch_size", "16"]
    proc = _main(_original_args() + shrink, timeout=3600)   # generous: a busy machine, not a time limit
    assert proc.returncode == 0, proc.stderr[-4000:]
    exp = tmp_path / "results" / "follower_all_greedy_all_"
    cfg = json.loads((exp / "config.json").read_text())
    assert (cfg["max_epochs_per_stage"], cfg["batch_size"]) == (3, 16)
    _check_original_meaning({**cfg, "batch_size": 128})
    with open(exp / "metrics.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    # The first module (2 quantization-free epochs, then quantized), the follower, fine-tuning.
    assert [(r["stage"], int(r["epoch"])) for r in rows] == [("m1", 1), ("m1", 2), ("m1", 3), ("m2", 1), ("m2", 2),
                                                             ("m2", 3), ("finetune", 1), ("finetune", 2), ("finetune", 3)]
    assert (exp / "model.keras").exists()
    # The model: 2 modules of 100 channels, 2 blocks of bottleneck 20 per section, dilations 1, 2.
    with zipfile.ZipFile(exp / "model.keras") as zf:
        modules = json.loads(zf.read("config.json"))["config"]["module_configs"]
    assert len(modules) == 2
    for m in modules:
        assert (m["channels"], m["bottleneck"], m["num_resnets"], m["kernel_and_dilation"], m["stride"]) == (100, 20, 2, [9, 9, 1, 2], 2)
        assert m["quantizer"]["num_bins"] == 32
    assert "--base_model_id 1993783 is not used by mode 4" in proc.stderr


@pytest.mark.parametrize("args, message", [
    (["--bottleneck_kernel_and_dilation", "9,9,2,1"], "--kernel_and_dilation"),      # today's 4-value form
    (["--bottleneck_kernel_and_dilation", "9 9 100 20 1 2 4"], "alternate two dilations"),
    (["--epoch_greedy_followers", "24"], "--epoch_followers"),
    (["--learning_rate_greedy_followers", "1e-3"], "--learning_rate_followers"),
    (["--num_resnets", "2", "--num_modules", "3"], "--num_resnets sets --num_modules"),
    (["--save_unique_mark", "a", "--name", "b"], "--save_unique_mark sets --name"),
    (["--epoch_greedy_followers", "50 50", "--epoch_finetune", "6"], "--epoch_finetune"),
    (["--coeff_term", "60 10 10 0.5", "--tau_init", "1"], "--tau_init"),
    (["--coeff_term", "60 10"], "--coeff_term"),
    (["--from_where_step", "3"], "--from_where_step"),
])
def test_conflicting_or_foreign_values_are_refused_naming_the_flag(args, message):
    proc = _main([*args, "--print_config"])
    assert proc.returncode != 0
    assert message in proc.stderr, proc.stderr[-2000:]


def test_todays_flags_keep_their_meaning():
    cfg = _printed_config(["--num_modules", "3", "--blocks_per_section", "1", "--kernel_and_dilation", "9,9,2,1",
                           "--epoch_followers", "24", "--epoch_finetune", "6", "--learning_rate_followers", "1e-3",
                           "--learning_rate_finetune", "2e-4", "--coeff_term", "60,10,0", "--num_bins_followers", "16"])
    assert (cfg["num_modules"], cfg["blocks_per_section"], cfg["kernel_and_dilation"]) == (3, 1, [9, 9, 2, 1])
    assert (cfg["epoch_followers"], cfg["epoch_finetune"]) == ([24], 6)
    assert (cfg["learning_rate_followers"], cfg["learning_rate_finetune"]) == ([1e-3], 2e-4)
    assert cfg["coeff_term"] == [60.0, 10.0, 0.0] and cfg["tau_init"] == 0.5 and cfg["tau_signed"] is False
    assert (cfg["num_bins"], cfg["num_bins_followers"]) == (32, [16])


def test_seed_000_spellings_and_boolean_values():
    cfg = _printed_config(["--batch-size", "16", "--lr", "1e-3", "--epochs", "4", "--vq-type", "rvq",
                           "--num-stages", "3", "--codebook-size", "256,256,256", "--embedding-dim", "8",
                           "--results-dir", "elsewhere", "--is_cq", "0"])
    assert (cfg["batch_size"], cfg["quantizer"], cfg["num_stages"], cfg["codebook_sizes"]) == (16, "rvq", 3, [256] * 3)
    assert cfg["embedding_dim"] == 8 and cfg["results_dir"] == "elsewhere" and cfg["is_cq"] is False
    assert cfg["epoch_tanh"] == cfg["epoch_finetune"] == 4 and cfg["learning_rate_tanh"] == [1e-3]


def test_the_shipped_model_and_recipe_keep_their_meaning():
    """results/default_model/config.json (written with the older field names) loads with its
    meaning, and scripts/train_default.sh's flags (today's spellings) resolve to the same
    architecture and schedule reading: blocks per section, kernels/dilations, follower epochs with
    their quantization-free epochs."""
    shipped = Config.load(os.path.join(ROOT, "results", "default_model", "config.json"))
    assert (shipped.num_modules, shipped.blocks_per_section, shipped.kernel_and_dilation) == (3, 2, (9, 9, 2, 1))
    assert (shipped.epoch_followers, shipped.follower_pretrain_step, shipped.learning_rate_followers) == ((10,), 2, (1e-3,))
    with open(os.path.join(ROOT, "scripts", "train_default.sh")) as fh:
        script = fh.read()
    cmd = script[script.index("main.py"):script.index("\n", script.index("--eval_clips"))].replace("\\\n", " ")
    args = [{"$NAME": "v", "$RESULTS": "results/_work", "$DATA": "data/many"}.get(a, a) for a in shlex.split(cmd)[1:]]
    now = Config.from_dict(_printed_config(args))
    same = ("num_modules", "blocks_per_section", "kernel_and_dilation", "channels", "bottleneck", "the_strides",
            "block_type", "front_end", "num_bins", "num_bins_followers", "pretrain_step", "follower_pretrain_step")
    assert {k: getattr(now, k) for k in same} == {k: getattr(shipped, k) for k in same}
    # The shipped .keras file is untouched: its modules still read their own config.
    with zipfile.ZipFile(os.path.join(ROOT, "cq_codec", "pretrained", "default.keras")) as zf:
        modules = json.loads(zf.read("config.json"))["config"]["module_configs"]
    assert [(m["num_resnets"], m["kernel_and_dilation"]) for m in modules] == [(2, [9, 9, 2, 1])] * 3


def test_legacy_config_json_keeps_its_meaning():
    legacy = {"num_resnets": 1, "bottleneck_kernel_and_dilation": [9, 9, 2, 1], "epoch_greedy_followers": [24],
              "learning_rate_greedy_followers": [1e-3], "num_bins_for_follower": [16], "pretrain_step": 2}
    cfg = Config.from_dict(legacy)
    assert (cfg.blocks_per_section, cfg.kernel_and_dilation, cfg.epoch_followers) == (1, (9, 9, 2, 1), (24,))
    assert (cfg.learning_rate_followers, cfg.num_bins_followers, cfg.follower_pretrain_step) == ((1e-3,), (16,), 2)


def test_config_from_flags_without_absl():
    cfg = config_from_flags({"num_resnets": "3", "epoch_greedy_followers": "5 7", "coeff_term": "60 10 10 0.2"},
                            given={"num_resnets", "epoch_greedy_followers", "coeff_term"})
    assert (cfg.num_modules, cfg.epoch_followers, cfg.epoch_finetune, cfg.tau_init) == (3, (5,), 7, 0.2)
    notes = []
    cfg = config_from_flags({"epoch_greedy_followers": "5 5 30 30"}, given={"epoch_greedy_followers"}, warn=notes.append)
    assert (cfg.epoch_followers, cfg.epoch_finetune) == ((30,), 30) and "not used" in notes[0]
    with pytest.raises(ConfigError, match="--num_bins_for_follower"):
        config_from_flags({"num_bins_for_follower": "32 x"})
