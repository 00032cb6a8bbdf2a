"""The resolved configuration of one experiment, validated before anything heavy runs.

`Config` is what `main.py` builds from its absl flags and what a results folder stores as
`config.json`; every check a flag needs lives in `Config.validate`, so a bad value fails at
start with a message naming the flag, never deep inside training. Each field carries its own
help text and element type (`_f`), from which `define_flags` generates the absl flags of
main.py and of the study scripts: the config is described here only.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import sys
from typing import Any

import constants as C
# Each registry owns its names; the config only checks against them (docs/DESIGN.md, layers).
from cq_codec.data.cache import check_speeds
from cq_codec.data.corpora import CORPORA
from cq_codec.models.residual_module import FRONT_ENDS
from cq_codec.nn.blocks import BLOCK_TYPES
from cq_codec.quantizers.factory import QUANTIZERS as _QUANTIZER_CLASSES
from cq_codec.training.atomic import write_text   # a bottom-layer utility (no repo imports)

__all__ = ["Config", "ConfigError", "config_from_flags", "config_from_absl", "define_flags", "define_config_flags",
           "flag_kind", "parse_int_list", "parse_float_list", "ORIGINAL_FLAGS", "EXTRA_FLAGS", "QUANTIZERS",
           "BLOCK_TYPES", "FRONT_ENDS"]

QUANTIZERS = tuple(_QUANTIZER_CLASSES)
DISTRIBUTE = ("none", "mirrored", "multiworker")
MODEL_TYPES = ("cq", "waveform")   # cq: LPC + residual cascade; waveform: end-to-end conv + RVQ


class ConfigError(ValueError):
    """A flag value the codec cannot honour; the message names the flag."""


def _parse_list(text: Any, cast, name: str) -> list:
    """Comma- and/or space-separated ('2,2', '2 2', '2, 2': the original CQ release wrote
    `--the_strides '2 2'`)."""
    if isinstance(text, (list, tuple)):
        items = list(text)
    else:
        items = [t for t in re.split(r"[,\s]+", str(text).strip()) if t != ""]
    try:
        return [cast(t) for t in items]
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"--{name}: expected a comma- or space-separated list of {cast.__name__}, got {text!r}") from exc


def parse_int_list(text: Any, name: str = "value") -> list[int]:
    """'2,2' -> [2, 2]; raises ConfigError naming the flag."""
    return _parse_list(text, int, name)


def parse_float_list(text: Any, name: str = "value") -> list[float]:
    """'1e-4,2e-5' -> [1e-4, 2e-5]; raises ConfigError naming the flag."""
    return _parse_list(text, float, name)


def _f(default, help: str, element: type | None = None):
    """A Config field with its description: `help` is the flag's help text (main.py and the study
    scripts generate their flags from it, `define_flags`); `element` is the type of a tuple
    field's entries (int or float), which its flag parses from '1,2' or '1 2'."""
    if isinstance(default, tuple) and element not in (int, float):
        raise TypeError("a tuple field names its element type: int or float")
    return dataclasses.field(default=default, metadata={"help": help, "element": element})


@dataclasses.dataclass
class Config:
    """Everything one experiment needs. Field names follow the original CQ release's flags where
    the meaning is the same; the original flags whose meaning spans other fields are translated
    by `config_from_flags` (see ORIGINAL_FLAGS)."""

    # Mode and bookkeeping.
    training_mode: int = _f(4,
        "0 evaluate, 1 first module, 2 followers on --base_model_id, 3 greedy, 4 greedy + fine-tune, 5 "
        "fine-tune only")
    name: str = _f("default", "experiment name: results go to <results_dir>/<name><suffix>")
    results_dir: str = _f("results", "folder of experiment folders")
    base_model_id: str = _f("", "experiment folder name (under results_dir) whose checkpoint modes 2 and 5 restore, "
                               "or a .keras model file (e.g. cq_codec/pretrained/default.keras) whose weights they start from")
    suffix: str = _f("", "appended to the experiment folder name")
    seed: int = _f(1234, "random seed (training is deterministic on CPU for a seed)")
    # Data.
    corpus: str = _f("demo", "corpus layout: " + "|".join(CORPORA))
    data_dir: str = _f("data/demo",
        "corpus root (the demo corpus is built there when --corpus demo and it is missing)")
    cache_dir: str = _f("cache", "on-disk frame cache")
    max_train_minutes: float = _f(0.0, "cap on training audio in minutes (0 = all)")
    # Speed perturbation of the training split: one extra copy per factor, pitch and formants
    # moved by the factor (cq_codec.data.cache); empty = the recordings only.
    speed_perturb: tuple = _f((),
        "extra speed factors of the training audio, e.g. 0.9,1.1 (one resampled copy per factor: pitch and "
        "formants move with it; empty = the recordings only)", float)
    eval_clips: int = _f(8, "test clips scored and written as audio after training and in mode 0")
    # Architecture (one module; the cascade repeats it).
    num_modules: int = _f(2, "modules in the cascade")
    channels: int = _f(100, "channels of each module")
    bottleneck: int = _f(20, "bottleneck channels of each residual block")
    module_channels: tuple = _f((),
        "channels per module, overriding --channels (the last is reused; empty = --channels for every module), "
        "e.g. 64,64,32 for a narrower third module", int)
    module_bottleneck: tuple = _f((),
        "bottleneck channels per module, overriding --bottleneck (the last is reused; empty = --bottleneck)", int)
    # Residual blocks per encoder/decoder section (the original derived it from the number of
    # dilations in --bottleneck_kernel_and_dilation; its --num_resnets counted the modules).
    blocks_per_section: int = _f(2, "residual blocks per encoder/decoder section")
    kernel_and_dilation: tuple = _f((9, 9, 1, 2),
        "kernel1,kernel2,dilation1,dilation2 of the residual blocks (block j uses the (j mod 2)-th)", int)
    the_strides: tuple = _f((2,), "downsampling stride per module (1, 2 or 4; the last is reused)", int)
    block_type: str = _f("gln", "gln (gated, the original), bottleneck or separable (depthwise-separable)")
    front_end: str = _f("conv",
        "conv (the original: layers at the sample rate) or patch (stride-sample patches, every layer at the "
        "code rate: about 1/5 of the FLOPs)")
    is_cq: bool = _f(True, "collaborative quantization: train the LSF codebook jointly")
    res_scalar: float = _f(1.0, "extra factor on the residual fed to the cascade")
    # Quantization.
    quantizer: str = _f("softmax", "|".join(QUANTIZERS))
    num_bins: int = _f(32, "bins of the first module's softmax quantizer")
    num_bins_followers: tuple = _f((32,),
        "bins of the followers' softmax quantizers (per follower, last reused)", int)
    codebook_size: int = _f(256, "codebook size (vq, rvq, gumbel, pq)")
    embedding_dim: int = _f(4, "code-vector dimension (vq, rvq, gumbel, pq)")
    num_stages: int = _f(3, "RVQ codebooks (levels; the flag keeps seed 000's name)")
    stage_dims: tuple = _f((), "per-codebook code dims (RVQ) or PQ sub-vector sizes, e.g. 2,2", int)
    codebook_sizes: tuple = _f((), "per-codebook (RVQ) or per-group (PQ) codebook sizes, e.g. 256,256,256", int)
    lsf_bins: int = _f(16, "bins per LSF in the LSF codebook")
    gumbel_entropy_temperature: float = _f(0.1,
        "softmax temperature of the Gumbel quantizer's training entropy estimate (1.0 = the plain soft "
        "assignments; 0.1 tracks the argmax codes)")
    # Softness of the softmax quantizer, annealed geometrically from alpha_start to alpha_end over
    # the first `anneal_fraction` of each stage's quantized epochs (Agustsson et al. 2017).
    # Training forward pass of the softmax quantizer: "soft" (the paper's sum_k p_k b_k), "hard"
    # (hard values, soft gradients) or "identity" (hard values, identity gradient to the encoder).
    softmax_gradient: str = _f("identity",
        "softmax quantizer training pass: soft (the paper), hard (hard values, soft gradients), identity (hard "
        "values, identity gradient)")
    alpha_start: float = _f(20.0, "softmax quantizer softness at the start of each stage's quantized epochs")
    alpha_end: float = _f(300.0, "softmax quantizer softness reached after --anneal_fraction of them")
    anneal_fraction: float = _f(0.6, "fraction of a stage's quantized epochs over which alpha is annealed")
    # Bitrate control.
    target_entropy: tuple = _f((2.2,), "entropy target per module (last reused), in --target_unit", float)
    target_unit: str = _f("bits", "bits (per symbol) or kbps (per module)")
    lsf_target_entropy: float = _f(2.5, "entropy target of the LSF codes in bits per LSF (0 = no LSF rate control)")
    tau_init: float = _f(0.5,
        "entropy weight when a stream's rate control starts (0 allowed with --tau_signed: start from no "
        "penalty)")
    tau_step: float = _f(0.05, "gain of the multiplicative entropy-weight (tau) controller, applied every 20 steps")
    tau_signed: bool = _f(False,
        "let tau turn negative (reward entropy) when the codes stay under target with no penalty")
    rate_calibration: bool = _f(False,
        "calibrate the rate controller on the validation split each epoch, so the held-out codes' entropy (not "
        "the training batches') meets the target")
    # Loss weights: time RMSE, mel, sparsity. The paper used 60, 10, 10; with the tau controller
    # setting the rate, the sparsity term only pushes codes toward collapse (measured), so 0.
    coeff_term: tuple = _f((60.0, 10.0, 0.0),
        "loss weights time,mel,sparsity; a 4th value (the original's) is the entropy weight tau starts from "
        "(sets --tau_init; 0 also sets --tau_signed, as the original's tau moved either way)", float)
    # Perceptual noise shaping of the time loss: the error is taken through 1/A(z/gamma) instead
    # of 1/A(z) (weighting W(z) = A(z) / A(z/gamma)), so the coding noise may follow the formants.
    # 1 = the plain signal error (the original).
    weighting_gamma: float = _f(1.0,
        "perceptual weighting of the time loss: error through 1/A(z/gamma) (W(z) = A(z)/A(z/gamma); 1 = the "
        "plain signal error)")
    # An extra spectral loss term (cq_codec.losses.SPECTRAL_LOSSES): "mrstft" (spectral
    # convergence + log magnitude at 512/256/128) or "nsr" (per-bin noise-to-signal ratio), with
    # its weight; "none" = the original loss.
    spectral_loss: str = _f("none",
        "extra spectral loss term: none, mrstft (spectral convergence + log magnitude, STFT 512/256/128) or nsr "
        "(per-bin noise-to-signal ratio against the speech) or nsr_mel (the same on mel bands)")
    spectral_weight: float = _f(0.0, "weight of --spectral_loss")
    spectral_high_weight: tuple = _f((1.0,),
        "weight of 4-8 kHz in the nsr / nsr_mel loss relative to 0-4 kHz (1 = all frequencies alike), per "
        "operating point: the i-th value for the output of i modules (last reused)", float)
    spectral_low_weight: tuple = _f((1.0,),
        "weight of 0-1 kHz in the nsr / nsr_mel loss relative to 1-4 kHz (1 = all frequencies alike), per "
        "operating point as --spectral_high_weight", float)
    # Gain-shape coding (cq_codec/quantizers/gain.py): the residual's RMS per sub-frame (this many
    # per 512-sample frame; 0 = off, the original) is coded as side information on a 3 dB log
    # grid from gain_floor_db (dB relative to the training residual's RMS) up, and the cascade
    # codes the residual divided by it, so its noise follows the signal's level.
    gain_subframes: int = _f(0,
        "gain-shape coding: the residual's RMS per sub-frame (this many per 30 ms frame; 0 = off) is coded in "
        "the stream and the cascade codes the residual divided by it")
    gain_floor_db: float = _f(-40.0,
        "lowest coded gain, dB relative to the training residual's RMS (quieter sub-frames take it)")
    # Open-loop pitch prediction (lpc/ltp.py) trained with: the cascade learns to code the pitch
    # residual it codes at inference (cq_codec/data/pitch.py), and the model carries the predictor.
    pitch_prediction: bool = _f(False,
        "long-term (pitch) prediction in the model and in training: the cascade codes the open-loop pitch "
        "residual, lag and gain per 120-sample sub-frame coded in the stream")
    ltp_threshold: float = _f(0.4, "pitch prediction: normalised correlation below which a sub-frame is not predicted")
    ltp_hold: float = _f(0.8, "pitch prediction: keep the previous lag while it scores this fraction of the best")
    ltp_shaped_loss: bool = _f(False,
        "pitch prediction: the loss sees the cascade's error through the decoder's pitch synthesis filter")
    # Schedule.
    learning_rate_tanh: tuple = _f((1e-4,), "learning rate of the first module", float)
    learning_rate_followers: tuple = _f((1e-4,), "learning rates of the followers (last reused)", float)
    learning_rate_finetune: float = _f(2e-5, "learning rate of joint fine-tuning")
    lr_schedule: str = _f("constant", "constant, or cosine (each stage decays its learning rate to 10%)")
    epoch_tanh: int = _f(10, "epochs of the first module (pretrain epochs included)")
    epoch_followers: tuple = _f((10,), "epochs per follower (last reused)", int)
    epoch_finetune: int = _f(5, "epochs of joint fine-tuning")
    finetune_from: int = _f(1,
        "joint fine-tuning trains the modules from this one on (1 = all of them and the LSF quantizer; 2 keeps "
        "module 1 and the LSF quantizer as they are, so the first operating point's codes do not change)")
    first_follower: int = _f(2,
        "--training_mode 2: the first follower trained; the modules before it keep their weights (e.g. 3 with "
        "--base_model_id retrains module 3 alone)")
    # Joint fine-tuning's loss averages every prefix of the cascade (each is an operating point);
    # with the full cascade's loss alone, fine-tuning drove module 1 from 1.75 to 0.78 bits/symbol.
    finetune_prefix_loss: bool = _f(True,
        "fine-tuning loss averages every prefix of the cascade (keeps each operating point)")
    pretrain_step: int = _f(2, "quantization-free epochs at the start of the first module's stage")
    # Quantization-free epochs at the start of each follower's stage (the original had none;
    # capped at the stage's epochs - 1).
    follower_pretrain_step: int = _f(0,
        "quantization-free epochs at the start of each follower's stage (the original: 0)")
    # The original's --from_where_step: which checkpoint mode 0 evaluates (0 after the first
    # module, 1 after the greedy followers, 2 the latest, i.e. after fine-tuning).
    from_where_step: int = _f(2,
        "which checkpoint mode 0 evaluates: 0 after the first module, 1 after the greedy followers, 2 the "
        "latest (after fine-tuning)")
    max_epochs_per_stage: int = _f(0, "cap on every stage's epochs (0 = none), for smoke runs of a full recipe")
    batch_size: int = _f(32, "frames per batch")
    steps_per_epoch: int = _f(0, "training steps per epoch (0 = one pass over the training split)")
    validation_steps: int = _f(20, "validation batches per epoch")
    distribute: str = _f("none", "none|mirrored (two logical CPU devices)|multiworker (TF_CONFIG)")
    # Denoising: training inputs mixed with noise at an SNR drawn from train_snr (lo,hi dB; empty =
    # clean), evaluation inputs mixed at each SNR of eval_snr (empty = clean); noise from
    # noise_dir, else generated coloured noise + babble of training utterances.
    train_snr: tuple = _f((), "denoising: training SNR range lo,hi in dB (empty = clean training)", float)
    eval_snr: tuple = _f((), "denoising: evaluation input SNRs in dB, e.g. 0,5,10 (empty = clean input)", float)
    noise_dir: str = _f("",
        "folder of noise recordings (default: generated coloured noise + babble of training speech)")
    # The waveform codec (--model_type waveform; cq_codec/models/waveform.py): a causal strided
    # conv encoder / decoder on the 16 kHz signal with an RVQ (quantizer dropout: one model, 1..N
    # codebooks). It trains in one stage (mode 1; mode 0 evaluates) with epoch_tanh epochs at
    # learning_rate_tanh, and uses num_stages, codebook_size / codebook_sizes, stage_dims,
    # block_type, batch_size, steps_per_epoch and validation_steps.
    model_type: str = _f("cq",
        "cq (LPC + residual cascade) or waveform (end-to-end causal conv codec with RVQ; mode 1 trains, mode 0 "
        "evaluates; uses num_stages, codebook_size(s), stage_dims, block_type, epoch_tanh, learning_rate_tanh)")
    wave_strides: tuple = _f((2, 4, 4, 4),
        "waveform: encoder strides; their product is the downsampling factor (64..320)", int)
    wave_channels: int = _f(32, "waveform: channels of the first encoder level (doubled per level, capped at 8x)")
    wave_latent_dim: int = _f(64, "waveform: dimension of the latent frames the RVQ codes")
    wave_units: int = _f(2, "waveform: residual units per encoder / decoder level (dilations 1, 3, 9, ...)")
    wave_patch: bool = _f(False, "waveform: the first stride as a patch reshape (no layer at the sample rate)")
    wave_segment: float = _f(1.0, "waveform: seconds of audio per training example")
    quantizer_dropout: float = _f(0.5, "waveform: probability that a batch trains with n ~ U{1..N} codebooks")
    adversarial: bool = _f(False,
        "waveform: add HiFi-GAN multi-period + multi-scale discriminators and feature matching")
    adversarial_start: int = _f(0, "waveform: training steps before the adversarial terms start")
    adversarial_weight: float = _f(1.0, "waveform: weight of the generator's LSGAN term")
    feature_matching_weight: float = _f(2.0, "waveform: weight of the feature-matching term")
    disc_channels: int = _f(16, "waveform: channels of the discriminators' first layers")

    # ------------------------------------------------------------------ checks
    def validate(self) -> "Config":
        """Raise ConfigError for the first value the codec cannot honour; returns self."""

        def need(cond: bool, flag: str, msg: str) -> None:
            if not cond:
                raise ConfigError(f"--{flag}: {msg}")

        need(self.training_mode in (0, 1, 2, 3, 4, 5), "training_mode",
             f"must be one of 0 (evaluate), 1 (one module), 2 (followers on a base), 3 (greedy), "
             f"4 (greedy + fine-tune), 5 (fine-tune only); got {self.training_mode}")
        need(self.corpus in CORPORA, "corpus", f"must be one of {', '.join(CORPORA)}; got {self.corpus!r}")
        need(self.quantizer in QUANTIZERS, "quantizer", f"must be one of {', '.join(QUANTIZERS)}; got {self.quantizer!r}")
        need(self.block_type in BLOCK_TYPES, "block_type", f"must be one of {', '.join(BLOCK_TYPES)}; got {self.block_type!r}")
        need(self.distribute in DISTRIBUTE, "distribute", f"must be one of {', '.join(DISTRIBUTE)}; got {self.distribute!r}")
        need(self.target_unit in ("bits", "kbps"), "target_unit", f"must be 'bits' or 'kbps'; got {self.target_unit!r}")
        need(1 <= self.num_modules <= 8, "num_modules", f"must be 1..8; got {self.num_modules}")
        need(self.channels >= 2 and self.channels % 2 == 0, "channels", f"must be an even number >= 2; got {self.channels}")
        need(1 <= self.bottleneck <= self.channels, "bottleneck", f"must be in 1..channels ({self.channels}); got {self.bottleneck}")
        for i in range(self.num_modules):
            ch, bn = self.module_width(i)
            need(ch >= 2 and ch % 2 == 0, "module_channels", f"module {i + 1}: must be an even number >= 2; got {ch}")
            need(1 <= bn <= ch, "module_bottleneck", f"module {i + 1}: must be in 1..its channels ({ch}); got {bn}")
        need(self.front_end in FRONT_ENDS, "front_end", f"must be one of {', '.join(FRONT_ENDS)}; got {self.front_end!r}")
        need(self.blocks_per_section >= 0, "blocks_per_section", f"must be >= 0; got {self.blocks_per_section}")
        kd = list(self.kernel_and_dilation)
        need(len(kd) == 4 and all(v >= 1 for v in kd), "kernel_and_dilation",
             f"expected 4 positive integers 'kernel1,kernel2,dilation1,dilation2'; got {kd}")
        strides = list(self.the_strides)
        need(len(strides) >= 1, "the_strides", "needs at least one stride")
        for s in strides:
            need(s in (1, 2, 4), "the_strides",
                 f"stride {s} is not supported: a {C.FRAME_SIZE}-sample frame is coded with stride 1, 2 or 4 "
                 f"(the sub-pixel decoder must upsample by the same integer factor)")
        need(self.num_bins >= 2, "num_bins", f"must be >= 2; got {self.num_bins}")
        need(len(self.num_bins_followers) >= 1 and all(b >= 2 for b in self.num_bins_followers), "num_bins_followers",
             f"every entry must be >= 2; got {list(self.num_bins_followers)}")
        need(self.codebook_size >= 2, "codebook_size", f"must be >= 2; got {self.codebook_size}")
        need(self.embedding_dim >= 1, "embedding_dim", f"must be >= 1; got {self.embedding_dim}")
        need(self.num_stages >= 1, "num_stages", f"must be >= 1; got {self.num_stages}")
        rvq = self.quantizer == "rvq" or self.model_type == "waveform"
        need(self.model_type in MODEL_TYPES, "model_type", f"must be one of {', '.join(MODEL_TYPES)}; got {self.model_type!r}")
        if self.codebook_sizes:
            need(all(k >= 2 for k in self.codebook_sizes), "codebook_sizes", "every entry must be >= 2")
            if rvq:   # RVQ codebooks may differ (seed 000): one size per codebook
                need(len(self.codebook_sizes) == self.num_stages, "codebook_sizes",
                     f"RVQ needs one size per codebook (--num_stages {self.num_stages}); got {list(self.codebook_sizes)}")
            else:
                need(len(set(self.codebook_sizes)) == 1, "codebook_sizes",
                     f"{self.quantizer} groups share one codebook size (unequal sizes are for rvq); got {list(self.codebook_sizes)}")
        if self.stage_dims:
            need(all(d >= 1 for d in self.stage_dims), "stage_dims", "every entry must be >= 1")
            if rvq:
                need(len(self.stage_dims) == self.num_stages, "stage_dims",
                     f"RVQ needs one code dimension per codebook (--num_stages {self.num_stages}); got {list(self.stage_dims)}")
            else:
                need(len(set(self.stage_dims)) == 1, "stage_dims",
                     f"PQ sub-vectors must have equal sizes in this version; got {list(self.stage_dims)}")
            need(sum(self.stage_dims) == self.embedding_dim or self.quantizer != "pq", "stage_dims",
                 f"for pq the sub-vector sizes must add up to --embedding_dim ({self.embedding_dim}); got {list(self.stage_dims)}")
        if self.quantizer == "pq" and not self.stage_dims:
            need(self.embedding_dim % 2 == 0, "embedding_dim", f"pq splits it into 2 groups by default: must be even; got {self.embedding_dim}")
        if self.model_type == "waveform":
            self._validate_waveform(need)
        elif self.quantizer != "softmax":
            positions = C.FRAME_SIZE // max(self.the_strides)
            need(positions % self.embedding_dim == 0, "embedding_dim",
                 f"{positions} latent positions per frame cannot be grouped into vectors of {self.embedding_dim}")
        need(self.lsf_bins >= 2, "lsf_bins", f"must be >= 2; got {self.lsf_bins}")
        need(len(self.target_entropy) >= 1 and all(t > 0 for t in self.target_entropy), "target_entropy",
             f"needs positive targets, one per module (the last is reused); got {list(self.target_entropy)}")
        need(self.softmax_gradient in ("soft", "hard", "identity"), "softmax_gradient",
             f"must be soft, hard or identity; got {self.softmax_gradient!r}")
        need(0 < self.alpha_start <= self.alpha_end, "alpha_start",
             f"needs 0 < alpha_start ({self.alpha_start}) <= alpha_end ({self.alpha_end})")
        need(0 <= self.anneal_fraction <= 1, "anneal_fraction", f"must be in [0, 1]; got {self.anneal_fraction}")
        need(self.lsf_target_entropy >= 0, "lsf_target_entropy", f"must be >= 0; got {self.lsf_target_entropy}")
        need(self.gumbel_entropy_temperature > 0, "gumbel_entropy_temperature",
             f"must be > 0; got {self.gumbel_entropy_temperature}")
        # Signed control (tau a Lagrange multiplier) may start from no penalty at all.
        need(self.tau_init > 0 or (self.tau_signed and self.tau_init == 0), "tau_init",
             f"must be > 0 (or 0 with --tau_signed); got {self.tau_init}")
        need(0 < self.weighting_gamma <= 1, "weighting_gamma", f"must be in (0, 1]; got {self.weighting_gamma}")
        need(self.spectral_loss in ("none", "mrstft", "nsr", "nsr_mel"), "spectral_loss",
             f"must be none, mrstft, nsr or nsr_mel; got {self.spectral_loss!r}")
        need(self.spectral_weight >= 0, "spectral_weight", f"must be >= 0; got {self.spectral_weight}")
        need(len(self.spectral_high_weight) >= 1 and all(w >= 0 for w in self.spectral_high_weight),
             "spectral_high_weight", f"must be one or more values >= 0; got {list(self.spectral_high_weight)}")
        need(all(w == 1.0 for w in self.spectral_high_weight) or self.spectral_loss in ("nsr", "nsr_mel"),
             "spectral_high_weight", f"applies to --spectral_loss nsr or nsr_mel; got {self.spectral_loss!r}")
        need(len(self.spectral_low_weight) >= 1 and all(w >= 0 for w in self.spectral_low_weight),
             "spectral_low_weight", f"must be one or more values >= 0; got {list(self.spectral_low_weight)}")
        need(all(w == 1.0 for w in self.spectral_low_weight) or self.spectral_loss in ("nsr", "nsr_mel"),
             "spectral_low_weight", f"applies to --spectral_loss nsr or nsr_mel; got {self.spectral_loss!r}")
        need(self.gain_subframes in (0, 1, 2, 4, 8, 16), "gain_subframes",
             f"must be 0 (off) or 1, 2, 4, 8 or 16 sub-frames per frame; got {self.gain_subframes}")
        need(-120.0 <= self.gain_floor_db <= 0.0, "gain_floor_db", f"must be in [-120, 0] dB; got {self.gain_floor_db}")
        need(0.0 <= self.ltp_threshold < 1.0, "ltp_threshold", f"must be in [0, 1); got {self.ltp_threshold}")
        need(0.0 <= self.ltp_hold <= 1.0, "ltp_hold", f"must be in [0, 1]; got {self.ltp_hold}")
        need(self.pitch_prediction or not self.ltp_shaped_loss, "ltp_shaped_loss", "needs --pitch_prediction")
        need(not (self.pitch_prediction and self.train_snr), "pitch_prediction",
             "is not supported with denoising (--train_snr) examples")
        need(self.tau_step >= 0, "tau_step", f"must be >= 0; got {self.tau_step}")
        need(len(self.coeff_term) == 3 and all(c >= 0 for c in self.coeff_term), "coeff_term",
             f"expected 3 non-negative weights 'time,mel,sparsity' (on the command line also the original's 4: "
             f"time, mel, sparsity, the entropy weight tau starts from); got {list(self.coeff_term)}")
        for flag in ("learning_rate_tanh", "learning_rate_followers"):
            lrs = list(getattr(self, flag))
            need(len(lrs) >= 1 and all(0 < v < 1 for v in lrs), flag, f"learning rates must be in (0, 1); got {lrs}")
        need(0 < self.learning_rate_finetune < 1, "learning_rate_finetune", "must be in (0, 1)")
        need(self.lr_schedule in ("constant", "cosine"), "lr_schedule",
             f"must be constant or cosine; got {self.lr_schedule!r}")
        need(self.epoch_tanh >= 1, "epoch_tanh", f"must be >= 1; got {self.epoch_tanh}")
        need(len(self.epoch_followers) >= 1 and all(e >= 1 for e in self.epoch_followers), "epoch_followers",
             f"every entry must be >= 1; got {list(self.epoch_followers)}")
        need(self.epoch_finetune >= 0, "epoch_finetune", f"must be >= 0; got {self.epoch_finetune}")
        need(1 <= self.finetune_from <= self.num_modules, "finetune_from",
             f"must be in [1, --num_modules]; got {self.finetune_from}")
        need(2 <= self.first_follower <= max(2, self.num_modules), "first_follower",
             f"must be in [2, --num_modules]; got {self.first_follower}")
        need(self.first_follower == 2 or self.training_mode == 2, "first_follower",
             f"applies to --training_mode 2 (the follower stages alone); got mode {self.training_mode}")
        need(0 <= self.pretrain_step, "pretrain_step", f"must be >= 0; got {self.pretrain_step}")
        need(0 <= self.follower_pretrain_step, "follower_pretrain_step", f"must be >= 0; got {self.follower_pretrain_step}")
        need(self.from_where_step in (0, 1, 2), "from_where_step",
             f"must be 0 (after the first module), 1 (after the greedy followers) or 2 (the latest); got {self.from_where_step}")
        need(self.max_epochs_per_stage >= 0, "max_epochs_per_stage", f"must be >= 0; got {self.max_epochs_per_stage}")
        if self.max_epochs_per_stage:
            need(self.pretrain_step < self.max_epochs_per_stage, "pretrain_step",
                 f"({self.pretrain_step}) must be smaller than --max_epochs_per_stage ({self.max_epochs_per_stage})")
        need(self.pretrain_step < self.epoch_tanh, "pretrain_step",
             f"({self.pretrain_step}) must be smaller than --epoch_tanh ({self.epoch_tanh}), or the first module never trains quantized")
        need(self.batch_size >= 1, "batch_size", f"must be >= 1; got {self.batch_size}")
        need(self.steps_per_epoch >= 0, "steps_per_epoch", f"must be >= 0; got {self.steps_per_epoch}")
        need(self.validation_steps >= 1, "validation_steps", f"must be >= 1; got {self.validation_steps}")
        need(len(self.train_snr) in (0, 2) and (not self.train_snr or self.train_snr[0] <= self.train_snr[1]),
             "train_snr", f"expects 'lo,hi' in dB with lo <= hi (or nothing for clean training); got {list(self.train_snr)}")
        try:
            check_speeds(self.speed_perturb)
        except ValueError as e:
            need(False, "speed_perturb", str(e))
        need(self.noise_dir == "" or os.path.isdir(self.noise_dir), "noise_dir",
             f"{self.noise_dir!r} is not a folder of noise recordings")
        need(self.res_scalar > 0, "res_scalar", f"must be > 0; got {self.res_scalar}")
        need(self.name != "" and os.sep not in self.name, "name", f"must be a plain folder name; got {self.name!r}")
        if self.training_mode in (2, 5):
            need(self.base_model_id != "", "base_model_id",
                 f"mode {self.training_mode} restores a trained model: name its results folder with --base_model_id")
        return self

    def _validate_waveform(self, need) -> None:
        import math
        need(not (self.pitch_prediction or self.gain_subframes), "pitch_prediction" if self.pitch_prediction else "gain_subframes",
             "is an option of the CQ (LPC) codec; the waveform codec has no LPC residual to predict or scale")
        need(self.training_mode in (0, 1), "training_mode",
             f"--model_type waveform is one model trained in one stage: mode 1 trains it (and resumes "
             f"from its checkpoints), mode 0 evaluates it; modes 2-5 are CQ's greedy schedule of "
             f"cascade modules and mean nothing here (its 1..N codebooks all come from one model, "
             f"trained with quantizer dropout); got {self.training_mode}")
        hop = math.prod(self.wave_strides) if self.wave_strides else 0
        need(len(self.wave_strides) >= 1 and all(s >= 1 for s in self.wave_strides) and 64 <= hop <= 320,
             "wave_strides", f"the downsampling factor (product of the strides) must be in 64..320; got "
             f"{list(self.wave_strides)} (product {hop})")
        need(not self.wave_patch or self.wave_strides[0] > 1, "wave_patch",
             "the patch front end takes the first stride's samples as channels: it must be > 1")
        need(self.wave_channels >= 2, "wave_channels", f"must be >= 2; got {self.wave_channels}")
        need(self.wave_latent_dim >= 1, "wave_latent_dim", f"must be >= 1; got {self.wave_latent_dim}")
        need(self.wave_units >= 0, "wave_units", f"must be >= 0; got {self.wave_units}")
        need(self.wave_segment * 16000 >= 4 * hop, "wave_segment",
             f"a training segment needs at least 4 latent frames ({4 * hop / 16000:g} s); got {self.wave_segment}")
        need(0.0 <= self.quantizer_dropout <= 1.0, "quantizer_dropout", f"must be in [0, 1]; got {self.quantizer_dropout}")
        need(self.adversarial_start >= 0, "adversarial_start", f"must be >= 0; got {self.adversarial_start}")
        need(self.adversarial_weight >= 0 and self.feature_matching_weight >= 0, "adversarial_weight",
             "the adversarial and feature-matching weights must be >= 0")
        need(self.disc_channels >= 4, "disc_channels", f"must be >= 4; got {self.disc_channels}")

    # ------------------------------------------------------------------ helpers
    def per_module(self, field: str, i: int):
        """The i-th entry of a per-module list flag; the last entry is reused for later modules."""
        values = list(getattr(self, field))
        return values[min(i, len(values) - 1)]

    def stride(self, i: int) -> int:
        return int(self.per_module("the_strides", i))

    def module_width(self, i: int) -> tuple[int, int]:
        """Module i's (channels, bottleneck): --module_channels / --module_bottleneck, else
        --channels / --bottleneck."""
        ch = int(self.per_module("module_channels", i)) if self.module_channels else int(self.channels)
        bn = int(self.per_module("module_bottleneck", i)) if self.module_bottleneck else int(self.bottleneck)
        return ch, bn

    @property
    def experiment_dir(self) -> str:
        return os.path.join(self.results_dir, self.name + self.suffix)

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2, sort_keys=True)

    def stage_epochs(self, epochs: int) -> int:
        """A stage's epochs under --max_epochs_per_stage."""
        return min(int(epochs), self.max_epochs_per_stage) if self.max_epochs_per_stage else int(epochs)

    @classmethod
    def from_dict(cls, data: dict) -> "Config":
        data = _upgrade_legacy(data)
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ConfigError(f"unknown config keys: {', '.join(unknown)}")
        kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in data.items()}
        return cls(**kwargs)

    @classmethod
    def load(cls, path: str) -> "Config":
        with open(path, "r", encoding="utf-8") as fh:
            return cls.from_dict(json.load(fh))

    def save(self, path: str) -> None:
        """Writes config.json atomically (temporary file, fsync, rename)."""
        write_text(path, self.to_json())


# ---------------------------------------------------------------------------------------------
# Flags: the fields' own flags plus the original CQ release's (seed 004), with its meaning.

# Config fields renamed when the original's flags got their meaning back: a config.json written
# before then (the key on the left) means what the field on the right means now.
_LEGACY_KEYS = {"num_resnets": "blocks_per_section", "bottleneck_kernel_and_dilation": "kernel_and_dilation",
                "epoch_greedy_followers": "epoch_followers", "learning_rate_greedy_followers": "learning_rate_followers",
                "num_bins_for_follower": "num_bins_followers"}


def _upgrade_legacy(data: dict) -> dict:
    """A config.json of the older field names -> today's fields, same meaning (then the followers'
    stages also began with --pretrain_step quantization-free epochs)."""
    if not any(k in data for k in _LEGACY_KEYS):
        return data
    out = {_LEGACY_KEYS.get(k, k): v for k, v in data.items()}
    out.setdefault("follower_pretrain_step", out.get("pretrain_step", Config.pretrain_step))
    return out


# The original flags whose meaning is not one Config field's; main.py defines them as strings
# (None = not given) and `config_from_flags` translates them.
ORIGINAL_FLAGS = {
    "num_resnets": "the original's number of cascaded codecs (sets --num_modules; blocks per section are "
                   "--blocks_per_section)",
    "bottleneck_kernel_and_dilation": "the original's 'kernel kernel wide narrow dilation...', e.g. '9 9 100 20 1 2': "
                                      "the dilated convs' kernel, the non-dilated convs' kernel (1x1 here, as in the "
                                      "original's gated block), --channels, --bottleneck, one dilation per block "
                                      "(their number sets --blocks_per_section)",
    "epoch_greedy_followers": "the original's 'followers finetune' epochs, e.g. '50 50': every follower trains the "
                              "second-to-last value, fine-tuning the last (sets --epoch_followers, --epoch_finetune)",
    "learning_rate_greedy_followers": "the original's 'followers finetune' learning rates, e.g. '2e-5 2e-6' (sets "
                                      "--learning_rate_followers, --learning_rate_finetune)",
    "num_bins_for_follower": "the original's bins per module, the first module included, e.g. '32 32' (sets "
                             "--num_bins, --num_bins_followers)",
    "save_unique_mark": "the original's name of the saved model (sets --name)",
}
# The flags `config_from_flags` reads besides the fields: the original's and two shorthands.
EXTRA_FLAGS = {
    **{name: ("string", text) for name, text in ORIGINAL_FLAGS.items()},
    "epochs": ("integer", "shorthand: sets epoch_tanh, epoch_followers and epoch_finetune"),
    "lr": ("float", "shorthand: sets every learning rate (fine-tune gets lr / 5)"),
}


def _fields() -> dict:
    return {f.name: f for f in dataclasses.fields(Config)}


def flag_kind(field: dataclasses.Field) -> str:
    """The absl kind of a field's flag: bool, integer, float, or string (text; list fields are
    given as '1,2' or '1 2')."""
    for cls, kind in ((bool, "bool"), (int, "integer"), (float, "float")):
        if isinstance(field.default, cls):
            return kind
    return "string"


def flag_default(field: dataclasses.Field, value=dataclasses.MISSING):
    """The flag default of `field` for `value` (default: the field's own): a list as '1,2'."""
    value = field.default if value is dataclasses.MISSING else value
    return ",".join(str(v) for v in value) if isinstance(value, (tuple, list)) else value


def define_flags(defaults: dict | None = None, own: dict | None = None, module_name: str | None = None,
                 flag_values=None) -> None:
    """Defines one absl flag per name of `defaults` ({name: default}; None = every Config field with
    its own default). A name that is a Config field gets its kind and help from the field (a study
    script sets only its default); `own` {name: (kind, help)} describes a script's other flags.
    The flags are listed under the running script's --help (`module_name`, default sys.argv[0])."""
    from absl import flags   # absl only where flags are defined (the library does not need it)
    fields, own = _fields(), dict(own or {})
    if defaults is None:
        defaults = {name: f.default for name, f in fields.items()}
    unknown = sorted(set(own) - set(defaults))
    if unknown:
        raise ValueError(f"flags described but without a default: {', '.join(unknown)}")
    for name, default in defaults.items():
        if name in own:
            kind, text = own[name]
        elif name in fields:
            f = fields[name]
            kind, text, default = flag_kind(f), f.metadata["help"], flag_default(f, default)
            if isinstance(f.default, tuple):
                text += " (comma-separated)"
        else:
            raise ValueError(f"--{name} is not a Config field: describe it in `own` as (kind, help)")
        kw = {} if flag_values is None else {"flag_values": flag_values}
        getattr(flags, f"DEFINE_{kind}")(name, default, text, module_name=module_name or sys.argv[0], **kw)


def define_config_flags(flag_values=None) -> None:
    """Every flag `config_from_absl` reads: one per Config field and the EXTRA_FLAGS."""
    define_flags(flag_values=flag_values)
    define_flags({name: None for name in EXTRA_FLAGS}, EXTRA_FLAGS, flag_values=flag_values)


def config_from_absl(flag_values, warn=None) -> Config:
    """The validated Config from parsed absl flags defined by `define_config_flags`."""
    names = list(_fields()) + list(EXTRA_FLAGS)
    given = {n for n in names if flag_values[n].present}
    return config_from_flags({n: flag_values[n].value for n in names}, given, warn=warn)


def config_from_flags(values: dict, given=(), warn=None) -> Config:
    """The validated Config from flag values.

    `values` maps flag names to values (list flags as text, '1,2' or '1 2'): every Config field,
    the ORIGINAL_FLAGS (None when not given) and the shorthands `epochs` / `lr` (None when not
    given). `given` names the flags set on the command line: an original flag and a flag it sets
    must not disagree. `warn(message)` receives notes on original values this codec does not use.
    Raises ConfigError naming the flag.
    """
    given = set(given)
    warn = warn or (lambda message: None)
    kw = {}
    for f in dataclasses.fields(Config):
        if f.name not in values:
            continue
        v = values[f.name]
        if isinstance(f.default, tuple):
            v = tuple(_parse_list(v, f.metadata["element"], f.name))
        kw[f.name] = v
    kw.update(_translate_original(values, given, kw, warn))
    if values.get("epochs") is not None:
        kw.update(epoch_tanh=values["epochs"], epoch_followers=(values["epochs"],), epoch_finetune=values["epochs"])
    if values.get("lr") is not None:
        kw.update(learning_rate_tanh=(values["lr"],), learning_rate_followers=(values["lr"],),
                  learning_rate_finetune=values["lr"] / 5)
    return Config(**kw).validate()


def _translate_original(values: dict, given: set, kw: dict, warn) -> dict:
    out = {}

    def put(flag: str, field: str, value) -> None:
        if field in given and kw.get(field) != value:
            raise ConfigError(f"--{flag} sets --{field} to {_show(value)}, but --{field} {_show(kw.get(field))} was "
                              f"also given: drop one")
        out[field] = value

    raw = {k: values.get(k) for k in ORIGINAL_FLAGS if values.get(k) not in (None, "")}
    if "num_resnets" in raw:
        (n,) = _ints(raw["num_resnets"], "num_resnets", 1, 1)
        put("num_resnets", "num_modules", n)
    if "save_unique_mark" in raw:
        put("save_unique_mark", "name", str(raw["save_unique_mark"]))
    if "bottleneck_kernel_and_dilation" in raw:
        kd = _ints(raw["bottleneck_kernel_and_dilation"], "bottleneck_kernel_and_dilation", 5, None,
                   "'kernel kernel wide narrow dilation...' (the original's meaning, at least one dilation, e.g. "
                   "'9 9 100 20 1 2'); the 4-value 'kernel1,kernel2,dilation1,dilation2' form is --kernel_and_dilation")
        dil = kd[4:]
        if any(d != dil[j % 2] for j, d in enumerate(dil)):
            raise ConfigError(f"--bottleneck_kernel_and_dilation: the blocks of a section alternate two dilations "
                              f"here (block j uses the (j mod 2)-th); got dilations {dil}")
        if kd[1] != 1:
            warn(f"--bottleneck_kernel_and_dilation: the second kernel ({kd[1]}, the original's non-dilated convs) "
                 f"is not used: the blocks' outer convs are 1x1 here, as in the original's gated block")
        put("bottleneck_kernel_and_dilation", "kernel_and_dilation", (kd[0], kd[0], dil[0], dil[min(1, len(dil) - 1)]))
        put("bottleneck_kernel_and_dilation", "channels", kd[2])
        put("bottleneck_kernel_and_dilation", "bottleneck", kd[3])
        put("bottleneck_kernel_and_dilation", "blocks_per_section", len(dil))
    for flag, followers, finetune, parse in (
            ("epoch_greedy_followers", "epoch_followers", "epoch_finetune", _ints),
            ("learning_rate_greedy_followers", "learning_rate_followers", "learning_rate_finetune", _floats)):
        if flag not in raw:
            continue
        vals = parse(raw[flag], flag, 2, None,
                     f"the original's list: the followers' value then fine-tuning's (at least 2, e.g. '50 50'); "
                     f"for the followers alone use --{followers} (and --{finetune})")
        if len(vals) > 2:
            warn(f"--{flag}: as in the original, every follower uses the second-to-last value ({vals[-2]}) and "
                 f"fine-tuning the last ({vals[-1]}); {vals[:-2]} are not used (per-follower values: --{followers})")
        put(flag, followers, (vals[-2],))
        put(flag, finetune, vals[-1])
    if "num_bins_for_follower" in raw:
        bins = _ints(raw["num_bins_for_follower"], "num_bins_for_follower", 1, None)
        put("num_bins_for_follower", "num_bins", bins[0])
        put("num_bins_for_follower", "num_bins_followers", tuple(bins[1:]) or (bins[0],))
    coeff = kw.get("coeff_term", ())
    if len(coeff) == 4:   # the original's 4th coefficient: the entropy weight tau it starts from
        out["coeff_term"] = tuple(coeff[:3])
        put("coeff_term", "tau_init", float(coeff[3]))
        if coeff[3] == 0 and "tau_signed" not in given:
            # The original's controller moved tau by +-0.015 with no floor: signed control.
            out["tau_signed"] = True
    return out


def _show(v) -> str:
    return ",".join(f"{x:g}" if isinstance(x, float) else str(x) for x in v) if isinstance(v, tuple) else (
        f"{v:g}" if isinstance(v, float) else str(v))


def _counted(parse, text, flag: str, lo: int, hi, what: str) -> list:
    vals = parse(text, flag)
    if len(vals) < lo or (hi is not None and len(vals) > hi):
        count = f"{lo}" if hi == lo else f"at least {lo}" if hi is None else f"{lo} to {hi}"
        raise ConfigError(f"--{flag}: expected {count} values{': ' + what if what else ''}; got {text!r}")
    return vals


def _ints(text, flag, lo, hi, what=""):
    return _counted(parse_int_list, text, flag, lo, hi, what)


def _floats(text, flag, lo, hi, what=""):
    return _counted(parse_float_list, text, flag, lo, hi, what)
