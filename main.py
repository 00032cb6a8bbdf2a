"""cq-codec entry point: `python main.py --training_mode 4` trains the whole greedy schedule.

Modes (the original's, made to chain): 0 evaluate (score the test split, write decoded wavs),
1 train the first module, 2 train followers on a restored base (--base_model_id), 3 greedy
without fine-tuning, 4 greedy with fine-tuning, 5 fine-tune only. Every run writes
results/<name><suffix>/ with config.json, checkpoints/, metrics.csv, plots/, audio/ and
eval.csv. Flags are validated before anything heavy starts.
"""

from __future__ import annotations

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app, flags, logging  # noqa: E402

from cq_codec.config import Config, ConfigError, config_from_absl, define_config_flags  # noqa: E402

# One flag per Config field (kind and help from the field, cq_codec/config.py), the original
# release's flags and two shorthands (config.EXTRA_FLAGS).
define_config_flags()
flags.DEFINE_bool("print_config", False, "print the resolved config (JSON) and exit without running")
FLAGS = flags.FLAGS

# Seed 000's spellings that are not just this one's with hyphens.
_ALIASES = {"vq_type": "quantizer", "results": "results_dir"}
_BOOL_WORDS = {"1": "true", "0": "false", "true": "true", "false": "false", "True": "true", "False": "false"}


def normalize_argv(argv: list[str]) -> list[str]:
    """Accepts the original's and seed 000's spellings: `--is_cq 1` (a boolean flag with a separate
    0/1 value), `--batch-size 16` (hyphens), `--vq-type rvq`, `--codebook-size 256,256` (a list
    goes to --codebook_sizes)."""
    out, i = [argv[0]], 1
    while i < len(argv):
        arg = argv[i]
        if arg == "--":
            out += argv[i:]
            break
        if arg.startswith("--") and len(arg) > 2:
            name, eq, value = arg[2:].partition("=")
            base = name.replace("-", "_")
            base = _ALIASES.get(base, base)
            neg = base.startswith("no") and base[2:] in FLAGS and base not in FLAGS
            flag = FLAGS[base[2:] if neg else base] if (base in FLAGS or neg) else None
            if flag is not None and flag.boolean and not eq and not neg and i + 1 < len(argv) \
                    and argv[i + 1] in _BOOL_WORDS:
                out.append(f"--{base}={_BOOL_WORDS[argv[i + 1]]}")
                i += 2
                continue
            if base == "codebook_size":
                nxt = value if eq else (argv[i + 1] if i + 1 < len(argv) else "")
                if "," in nxt:
                    base = "codebook_sizes"
            arg = f"--{base}{eq}{value}"
        out.append(arg)
        i += 1
    return out


def resolve(values=None) -> Config:
    """The validated Config from parsed flags (raises ConfigError naming the flag)."""
    return config_from_absl(values or FLAGS, warn=lambda m: logging.warning("%s", m))


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    logging.set_verbosity(logging.INFO)
    try:
        cfg = resolve()
    except ConfigError as exc:
        print(f"main.py: error: {exc}", file=sys.stderr)
        return 2
    if FLAGS.print_config:
        print(cfg.to_json())
        return 0
    from cq_codec.training.atomic import ExperimentLocked
    from cq_codec.experiment import run  # heavy imports only after the flags are valid
    try:
        run(cfg)
    except (ConfigError, ExperimentLocked) as exc:
        print(f"main.py: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    app.run(main, argv=normalize_argv(sys.argv))
