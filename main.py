"""cq-codec entry point: `python main.py --training_mode 4` trains the whole greedy schedule.

Modes (the original's, made to chain): 0 evaluate (score the test split, write decoded wavs),
1 train the first module, 2 train followers on a restored base (--base_model_id), 3 greedy
without fine-tuning, 4 greedy with fine-tuning, 5 fine-tune only. Every run writes
results/<name><suffix>/ with config.json, checkpoints/, metrics.csv, plots/, audio/ and
eval.csv. Flags are validated before anything heavy starts.
"""

from __future__ import annotations

import dataclasses
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app, flags, logging  # noqa: E402

from cq_codec.config import ORIGINAL_FLAGS, Config, ConfigError, config_from_flags  # noqa: E402

_HELP = {
    "training_mode": "0 evaluate, 1 first module, 2 followers on --base_model_id, 3 greedy, 4 greedy + fine-tune, 5 fine-tune only",
    "name": "experiment name: results go to <results_dir>/<name><suffix>",
    "results_dir": "folder of experiment folders",
    "base_model_id": "experiment folder name (under results_dir) whose checkpoint modes 2 and 5 restore",
    "suffix": "appended to the experiment folder name",
    "seed": "random seed (training is deterministic on CPU for a seed)",
    "corpus": "auto|demo|timit|vctk|librispeech|folder",
    "data_dir": "corpus root (the demo corpus is built there when --corpus demo and it is missing)",
    "cache_dir": "on-disk frame cache",
    "max_train_minutes": "cap on training audio in minutes (0 = all)",
    "speed_perturb": "extra speed factors of the training audio, e.g. 0.9,1.1 (one resampled copy per factor: "
                     "pitch and formants move with it; empty = the recordings only)",
    "eval_clips": "test clips scored and written as audio after training and in mode 0",
    "num_modules": "modules in the cascade",
    "channels": "channels of each module",
    "bottleneck": "bottleneck channels of each residual block",
    "blocks_per_section": "residual blocks per encoder/decoder section",
    "kernel_and_dilation": "kernel1,kernel2,dilation1,dilation2 of the residual blocks (block j uses the (j mod 2)-th)",
    "the_strides": "downsampling stride per module (1, 2 or 4; the last is reused)",
    "block_type": "gln (gated, the original), bottleneck or separable (depthwise-separable)",
    "front_end": "conv (the original: layers at the sample rate) or patch (stride-sample patches, every "
                 "layer at the code rate: about 1/5 of the FLOPs)",
    "is_cq": "collaborative quantization: train the LSF codebook jointly",
    "res_scalar": "extra factor on the residual fed to the cascade",
    "quantizer": "softmax|vq|rvq|gumbel|pq",
    "num_bins": "bins of the first module's softmax quantizer",
    "num_bins_followers": "bins of the followers' softmax quantizers (per follower, last reused)",
    "codebook_size": "codebook size (vq, rvq, gumbel, pq)",
    "embedding_dim": "code-vector dimension (vq, rvq, gumbel, pq)",
    "num_stages": "RVQ stages",
    "stage_dims": "PQ sub-vector sizes, e.g. 2,2",
    "codebook_sizes": "per-stage (RVQ) or per-group (PQ) codebook sizes, e.g. 256,256,256",
    "softmax_gradient": "softmax quantizer training pass: soft (the paper), hard (hard values, soft gradients), identity (hard values, identity gradient)",
    "alpha_start": "softmax quantizer softness at the start of each stage's quantized epochs",
    "alpha_end": "softmax quantizer softness reached after --anneal_fraction of them",
    "anneal_fraction": "fraction of a stage's quantized epochs over which alpha is annealed",
    "lsf_bins": "bins per LSF in the LSF codebook",
    "target_entropy": "entropy target per module (last reused), in --target_unit",
    "target_unit": "bits (per symbol) or kbps (per module)",
    "tau_init": "entropy weight when a stream's rate control starts (0 allowed with --tau_signed: start from no penalty)",
    "lsf_target_entropy": "entropy target of the LSF codes in bits per LSF (0 = no LSF rate control)",
    "gumbel_entropy_temperature": "softmax temperature of the Gumbel quantizer's training entropy estimate "
                                  "(1.0 = the plain soft assignments; 0.1 tracks the argmax codes)",
    "tau_signed": "let tau turn negative (reward entropy) when the codes stay under target with no penalty",
    "rate_calibration": "calibrate the rate controller on the validation split each epoch, so the held-out "
                        "codes' entropy (not the training batches') meets the target",
    "tau_step": "gain of the multiplicative entropy-weight (tau) controller, applied every 20 steps",
    "coeff_term": "loss weights time,mel,sparsity; a 4th value (the original's) is the entropy weight tau starts "
                  "from (sets --tau_init; 0 also sets --tau_signed, as the original's tau moved either way)",
    "weighting_gamma": "perceptual weighting of the time loss: error through 1/A(z/gamma) (W(z) = A(z)/A(z/gamma); "
                       "1 = the plain signal error)",
    "spectral_loss": "extra spectral loss term: none, mrstft (spectral convergence + log magnitude, "
                     "STFT 512/256/128) or nsr (per-bin noise-to-signal ratio against the speech)",
    "spectral_weight": "weight of --spectral_loss",
    "learning_rate_tanh": "learning rate of the first module",
    "learning_rate_followers": "learning rates of the followers (last reused)",
    "learning_rate_finetune": "learning rate of joint fine-tuning",
    "lr_schedule": "constant, or cosine (each stage decays its learning rate to 10%)",
    "epoch_tanh": "epochs of the first module (pretrain epochs included)",
    "epoch_followers": "epochs per follower (last reused)",
    "epoch_finetune": "epochs of joint fine-tuning",
    "finetune_prefix_loss": "fine-tuning loss averages every prefix of the cascade (keeps each operating point)",
    "pretrain_step": "quantization-free epochs at the start of the first module's stage",
    "follower_pretrain_step": "quantization-free epochs at the start of each follower's stage (the original: 0)",
    "from_where_step": "which checkpoint mode 0 evaluates: 0 after the first module, 1 after the greedy "
                       "followers, 2 the latest (after fine-tuning)",
    "max_epochs_per_stage": "cap on every stage's epochs (0 = none), for smoke runs of a full recipe",
    "batch_size": "frames per batch",
    "steps_per_epoch": "training steps per epoch (0 = one pass over the training split)",
    "validation_steps": "validation batches per epoch",
    "train_snr": "denoising: training SNR range lo,hi in dB (empty = clean training)",
    "eval_snr": "denoising: evaluation input SNRs in dB, e.g. 0,5,10 (empty = clean input)",
    "noise_dir": "folder of noise recordings (default: generated coloured noise + babble of training speech)",
    "distribute": "none|mirrored (two logical CPU devices)|multiworker (TF_CONFIG)",
    "model_type": "cq (LPC + residual cascade) or waveform (end-to-end causal conv codec with RVQ; mode 1 trains, "
                  "mode 0 evaluates; uses num_stages, codebook_size(s), stage_dims, block_type, epoch_tanh, "
                  "learning_rate_tanh)",
    "wave_strides": "waveform: encoder strides; their product is the downsampling factor (64..320)",
    "wave_channels": "waveform: channels of the first stage (doubled per stage, capped at 8x)",
    "wave_latent_dim": "waveform: dimension of the latent frames the RVQ codes",
    "wave_units": "waveform: residual units per stage (dilations 1, 3, 9, ...)",
    "wave_patch": "waveform: the first stride as a patch reshape (no layer at the sample rate)",
    "wave_segment": "waveform: seconds of audio per training example",
    "quantizer_dropout": "waveform: probability that a batch trains with n ~ U{1..N} codebooks",
    "adversarial": "waveform: add HiFi-GAN multi-period + multi-scale discriminators and feature matching",
    "adversarial_start": "waveform: training steps before the adversarial terms start",
    "adversarial_weight": "waveform: weight of the generator's LSGAN term",
    "feature_matching_weight": "waveform: weight of the feature-matching term",
    "disc_channels": "waveform: channels of the discriminators' first layers",
}


def _define_flags() -> None:
    for f in dataclasses.fields(Config):
        default = f.default
        help_text = _HELP.get(f.name, f.name)
        if isinstance(default, bool):
            flags.DEFINE_bool(f.name, default, help_text)
        elif isinstance(default, int):
            flags.DEFINE_integer(f.name, default, help_text)
        elif isinstance(default, float):
            flags.DEFINE_float(f.name, default, help_text)
        elif isinstance(default, tuple):
            flags.DEFINE_string(f.name, ",".join(str(v) for v in default), help_text + " (comma-separated)")
        else:
            flags.DEFINE_string(f.name, default, help_text)
    for name, help_text in ORIGINAL_FLAGS.items():
        flags.DEFINE_string(name, None, help_text)
    flags.DEFINE_integer("epochs", None, "shorthand: sets epoch_tanh, epoch_followers and epoch_finetune")
    flags.DEFINE_float("lr", None, "shorthand: sets every learning rate (fine-tune gets lr / 5)")
    flags.DEFINE_bool("print_config", False, "print the resolved config (JSON) and exit without running")


_define_flags()
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
    values = values or FLAGS
    names = [f.name for f in dataclasses.fields(Config)] + list(ORIGINAL_FLAGS) + ["epochs", "lr"]
    given = {n for n in names if values[n].present}
    return config_from_flags({n: values[n].value for n in names}, given, warn=lambda m: logging.warning("%s", m))


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
