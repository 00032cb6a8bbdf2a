"""Softmax vs VQ vs RVQ vs PQ vs Gumbel-softmax codecs, same data, budget and target bitrate.

    python scripts/compare_quantizers.py                       # the ~45 min CPU budget
    python scripts/compare_quantizers.py --steps 3000 --channels 100 --seeds 1,2,3   # longer

Every codec: one module, `--channels`, trained `--steps` steps of batch `--batch_size` on the same
frame cache (demo corpus, full training split, seeded shuffles), entropy-controlled to the same
`--target_kbps` per module (--target_unit kbps). Fixed-length rates are matched too: the vector
quantizers code 8-dim vectors (32 per frame) with 8 bits each (VQ and Gumbel: 256 codes; RVQ:
2 stages x 16 codes; PQ: 2 groups of 4 dims x 16 codes), i.e. 8.53 kbps before entropy coding;
softmax codes 128 scalars per frame (stride 4) with 32 bins. Writes <out>/quantizers.csv (per seed),
summary.csv, summary.md, per_clip.csv and plots; models go under <work>.

`--quantizers ...,waveform` adds the end-to-end waveform codec (--model_type waveform: causal conv
encoder / decoder, no LPC, RVQ with quantizer dropout) on the same training split, steps and
batch size (batch of 0.5 s segments), with 8 codebooks of 256 at 125 latent frames/s (8.0 kbps
before entropy coding, next to the 8.53 of the vector quantizers); it has no entropy target, so
the rate-control columns are empty for it, and its codebook counts are its operating points.
"""

from __future__ import annotations

import csv
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np
from absl import app, flags, logging

import constants as C
from cq_codec.config import Config, parse_int_list
from cq_codec.losses import bits_per_symbol_target
from cq_codec.evaluation.studies import QUANTIZER_KWARGS
from cq_codec import config  # noqa: E402
from cq_codec.evaluation import studies  # noqa: E402

DEFAULTS = {
    "quantizers": "softmax,vq,rvq,pq,gumbel",
    "seeds": "1,2",
    "steps": 200,
    "epochs": 4,
    "batch_size": 16,
    "channels": 32,
    "target_kbps": 7.0,
    "learning_rate": 3e-4,
    "tau_step": 0.05,
    "validation_steps": 10,
    "max_train_minutes": 0.0,
    "max_clips": 12,
    "data_dir": "data/demo",
    "corpus": "demo",
    "cache_dir": "cache",
    "out": "results/quantizers",
    "work": "results/_work/quantizers",
}
_HELP = {
    "quantizers": ("string", "quantizers to compare"),
    "seeds": ("string", "training seeds (spread across seeds = stability)"),
    "steps": ("integer", "training steps per codec (split into --epochs epochs)"),
    "epochs": ("integer", "epochs (the first is quantization-free pretraining; tau adapts per epoch)"),
    "target_kbps": ("float", "entropy target per module, kbps (same for every quantizer)"),
    "learning_rate": ("float", "learning rate"),
    "max_clips": ("integer", "test clips scored per codec"),
    **{k: studies.OUTPUT_HELP[k] for k in ("out", "work")},
}


def define_flags() -> None:
    """The absl flags (defined only when run as a script, so tests can import this module): the
    script's own described in _HELP, the others Config fields described there."""
    config.define_flags(DEFAULTS, _HELP)


def options(**overrides):
    """DEFAULTS with `overrides` as an attribute namespace (what `run` reads, like FLAGS)."""
    return studies.options(DEFAULTS, **overrides)

WAVEFORM = "waveform"


def make_config(quantizer: str, seed: int, work: str, **budget) -> Config:
    """The study's config of one codec (one module; `budget`: steps, epochs, batch_size, channels,
    target_kbps, learning_rate, max_train_minutes, data_dir, corpus, cache_dir)."""
    if quantizer == WAVEFORM:
        epochs, steps = int(budget["epochs"]), int(budget["steps"])
        return Config(name=f"waveform_s{seed}", results_dir=work, seed=seed, corpus=budget["corpus"],
                      data_dir=budget["data_dir"], max_train_minutes=budget["max_train_minutes"], training_mode=1,
                      model_type="waveform", wave_strides=(4, 2, 4, 4), wave_patch=True,
                      wave_channels=max(2, budget["channels"] // 2), num_stages=8, codebook_size=256,
                      block_type="bottleneck", wave_segment=0.5, epoch_tanh=max(1, epochs), pretrain_step=0,
                      steps_per_epoch=max(1, steps // max(1, epochs)), batch_size=budget["batch_size"],
                      validation_steps=int(budget.get("validation_steps", 10)),
                      learning_rate_tanh=(budget["learning_rate"],)).validate()
    if quantizer not in QUANTIZER_KWARGS:
        raise ValueError(f"unknown quantizer {quantizer!r}; choose from {sorted(QUANTIZER_KWARGS)}")
    epochs, steps = int(budget["epochs"]), int(budget["steps"])
    if epochs < 2 or steps < epochs:
        raise ValueError(f"need epochs >= 2 (one pretrain epoch) and steps >= epochs; got {steps} steps, {epochs} epochs")
    return Config(name=f"{quantizer}_s{seed}", results_dir=work, seed=seed, corpus=budget["corpus"],
                  data_dir=budget["data_dir"], cache_dir=budget["cache_dir"],
                  max_train_minutes=budget["max_train_minutes"], training_mode=1, num_modules=1,
                  channels=budget["channels"], bottleneck=max(2, budget["channels"] // 4), quantizer=quantizer,
                  epoch_tanh=epochs, pretrain_step=1, steps_per_epoch=steps // epochs,
                  validation_steps=int(budget.get("validation_steps", 10)),
                  batch_size=budget["batch_size"], target_entropy=(budget["target_kbps"],),
                  target_unit="kbps", learning_rate_tanh=(budget["learning_rate"],),
                  **{"tau_step": float(budget.get("tau_step", 0.05)), **QUANTIZER_KWARGS[quantizer]}).validate()


def _history(exp: str) -> list[dict]:
    with open(os.path.join(exp, "metrics.csv"), newline="") as fh:
        return list(csv.DictReader(fh))


def rvq_stage_rows(codec, clips, label) -> list[dict]:
    """RVQ with fewer stages at inference (bitrate control inside one module). The `.nac` layout
    always carries every stage, so this rate is the zeroth-order entropy of the codes used
    (LSF + first n stages), not bytes; the table marks it as such."""
    from cq_codec import inference
    from cq_codec.evaluation.metrics import score_many
    q = codec.model.codec_modules[0].quantizer
    rows = []
    for n in range(1, q.num_stages + 1):
        q.num_active_stages = n
        pairs, bits, secs = [], 0.0, 0.0
        for _, wav in clips:
            codes = inference.encode(codec.model, wav)
            bits += codes.entropy_bits()   # LSFs + module 1 (its first n stages)
            secs += len(wav) / C.SAMPLE_RATE
            decoded = inference.decode(codec.model, codes)
            pairs.append((wav, decoded))
        scores = score_many(pairs)
        rows.append({"label": label, "stages": n, "entropy_kbps": bits / secs / C.BITS_PER_KBIT,
                     **{k: float(np.nanmean([s[k] for s in scores])) for k in ("pesq_wb", "stoi", "si_sdr")}})
    q.num_active_stages = q.num_stages
    return rows


def _waveform_row(cfg, opts, clips, per_seed, per_clip, histories):
    """Trains and scores the waveform codec with all its codebooks; appends its rows. Returns the clips."""
    from cq_codec import experiment
    from cq_codec.evaluation import studies
    from cq_codec.training import waveform as wt
    nan = float("nan")
    trained = wt.train_codec(cfg)
    if clips is None:
        clips = studies.load_clips(studies.select_clips(trained["parts"]["test"], opts.max_clips))
    codec = experiment.load_codec(cfg.experiment_dir)
    rows = studies.codec_rows(codec, clips, cfg.name)          # every codebook
    for r in rows:
        r.update(quantizer=WAVEFORM, seed=cfg.seed)
    per_clip += rows
    hist = _history(cfg.experiment_dir)
    histories[(WAVEFORM, cfg.seed)] = hist
    mean = studies.mean_rows(rows, ["quantizer", "seed"], ["kbps", "payload_kbps", "pesq_wb", "stoi", "si_sdr",
                                                             "encode_ms_per_s", "decode_ms_per_s"])[0]
    codes = np.concatenate([codec.encode(w, C.SAMPLE_RATE) for _, w in clips])
    util, perp, ent = [], [], []
    for s, k in enumerate(codec.model.codebook_sizes):
        counts = np.bincount(codes[:, s], minlength=k).astype(np.float64)
        p = counts[counts > 0] / counts.sum()
        h = float(-(p * np.log2(p)).sum())
        util.append(np.count_nonzero(counts) / k)
        perp.append(2 ** h)
        ent.append(h)
    mean.update(utilisation=float(np.mean(util)), perplexity=float(np.mean(perp)), bits_per_code=float(np.mean(ent)),
                code_error_pct=nan, params=int(codec.model.count_params()), target_bits=nan, val_bits=nan,
                train_bits=nan, entropy_error_pct=nan, train_seconds=trained["train_seconds"],
                steps=cfg.steps_per_epoch * cfg.epoch_tanh,
                final_val_loss=float(hist[-1][f"val_stft_{codec.model.num_codebooks}"]),
                operating_points=codec.model.num_codebooks, collapsed=float(np.mean(util)) < 0.1)
    per_seed.append(mean)
    return clips


def plots(per_seed: list[dict], summary: list[dict], histories: dict, out: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    names = [r["quantizer"] for r in summary]
    x = np.arange(len(names))
    panels = [("pesq_wb", "PESQ-WB (MOS-LQO)"), ("stoi", "STOI"), ("kbps", "measured bitrate (kbps, .nac bytes)"),
              ("utilisation", "codebook utilisation (fraction of codes used)"),
              ("encode_ms_per_s", "encode time (ms per s of audio)"), ("params", "parameters")]
    fig, axes = plt.subplots(2, 3, figsize=(15, 8))
    for ax, (key, label) in zip(axes.ravel(), panels):
        ax.bar(x, [r[key] for r in summary], yerr=[r.get(key + "_std", 0.0) for r in summary], capsize=4, color="C0",
               alpha=0.7, label="mean over seeds (+- std)")
        for i, q in enumerate(names):
            vals = [r[key] for r in per_seed if r["quantizer"] == q]
            ax.scatter([i] * len(vals), vals, color="k", s=12, zorder=3, label="one seed" if i == 0 else None)
        ax.set_xticks(x, names)
        ax.set_xlabel("quantizer")
        ax.set_ylabel(label)
        ax.legend(fontsize=7)
    fig.suptitle("Quantizers at matched budget and target bitrate")
    fig.tight_layout()
    fig.savefig(os.path.join(out, "quantizers.png"), dpi=100)
    plt.close(fig)
    fig, axes = plt.subplots(1, 2, figsize=(12, 4))
    for (q, seed), rows in histories.items():
        ep = np.arange(1, len(rows) + 1)
        for ax, key in zip(axes, ("val_loss", "val_kbps")):
            if key not in rows[0]:      # the waveform codec logs other terms (val_stft_n)
                continue
            ax.plot(ep, [float(r[key]) for r in rows], marker=".", label=f"{q} seed {seed}",
                    color=f"C{names.index(q)}", ls="-" if seed == min(s for qq, s in histories if qq == q) else "--")
    for ax, lab in zip(axes, ("validation loss", "validation entropy estimate (kbps)")):
        ax.set_xlabel("epoch (epoch 1: quantization bypassed)")
        ax.set_ylabel(lab)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(os.path.join(out, "training.png"), dpi=100)
    plt.close(fig)


def run(opts) -> None:
    """The study with options `opts` (absl FLAGS or `options(...)`)."""
    from cq_codec import experiment
    from cq_codec.evaluation import studies
    from cq_codec.training import modes
    logging.set_verbosity(logging.INFO)
    quantizers = [q.strip() for q in opts.quantizers.split(",") if q.strip()]
    seeds = parse_int_list(opts.seeds, "seeds")
    budget = dict(steps=opts.steps, epochs=opts.epochs, batch_size=opts.batch_size, channels=opts.channels,
                  target_kbps=opts.target_kbps, learning_rate=opts.learning_rate, tau_step=opts.tau_step,
                  validation_steps=opts.validation_steps,
                  max_train_minutes=opts.max_train_minutes, data_dir=opts.data_dir, corpus=opts.corpus,
                  cache_dir=opts.cache_dir)
    cfgs = [make_config(q, s, opts.work, **budget) for q in quantizers for s in seeds]   # validate all first
    os.makedirs(opts.out, exist_ok=True)
    per_seed, per_clip, histories, stage_rows, clips = [], [], {}, [], None
    for cfg in cfgs:
        logging.info("training %s", cfg.name)
        if cfg.model_type == WAVEFORM:
            clips = _waveform_row(cfg, opts, clips, per_seed, per_clip, histories)
            studies.write_csv(per_seed, os.path.join(opts.out, "quantizers.csv"))
            continue
        trained = modes.train(cfg)
        if clips is None:
            clips = studies.load_clips(studies.select_clips(trained["parts"]["test"], opts.max_clips))
        codec = experiment.load_codec(cfg.experiment_dir)
        rows = studies.codec_rows(codec, clips, cfg.name)
        for r in rows:
            r.update(quantizer=cfg.quantizer, seed=cfg.seed)
        per_clip += rows
        stats = studies.code_statistics(codec, clips)
        hist = _history(cfg.experiment_dir)
        histories[(cfg.quantizer, cfg.seed)] = hist
        mean = studies.mean_rows(rows, ["quantizer", "seed"], ["kbps", "payload_kbps", "pesq_wb", "stoi", "si_sdr",
                                                                 "encode_ms_per_s", "decode_ms_per_s"])[0]
        mod = codec.model.codec_modules[0]
        target_bits = bits_per_symbol_target(cfg.target_entropy[0], cfg.target_unit,
                                             mod.num_positions * mod.quantizer.num_streams)
        val_bits = float(hist[-1]["val_Hh_1"])
        stats["code_error_pct"] = 100.0 * (stats["bits_per_code"] / target_bits - 1.0)
        mean.update(stats, params=int(codec.model.count_params()), target_bits=target_bits, val_bits=val_bits,
                    train_bits=float(hist[-1]["Hh_1"]), entropy_error_pct=100.0 * (val_bits / target_bits - 1.0), train_seconds=trained["train_seconds"],
                    steps=cfg.steps_per_epoch * cfg.epoch_tanh, final_val_loss=float(hist[-1]["val_loss"]),
                    operating_points=codec.num_modules * (cfg.num_stages if cfg.quantizer == "rvq" else 1),
                    collapsed=stats["utilisation"] < 0.1)
        per_seed.append(mean)
        if cfg.quantizer == "rvq":
            try:
                stage_rows += [dict(r, seed=cfg.seed) for r in rvq_stage_rows(codec, clips, cfg.name)]
            except Exception as e:  # the sweep is extra information: report and go on
                logging.warning("RVQ stage sweep failed for %s: %s: %s", cfg.name, type(e).__name__, e)
        studies.write_csv(per_seed, os.path.join(opts.out, "quantizers.csv"))   # partial results survive a kill
    studies.write_csv(per_clip, os.path.join(opts.out, "per_clip.csv"))
    keys = ["kbps", "payload_kbps", "target_bits", "val_bits", "train_bits", "entropy_error_pct", "bits_per_code",
            "code_error_pct", "utilisation", "perplexity", "pesq_wb", "stoi", "si_sdr",
            "encode_ms_per_s", "decode_ms_per_s", "params", "train_seconds", "final_val_loss", "operating_points"]
    summary = studies.mean_rows(per_seed, ["quantizer"], keys)
    for s in summary:
        for k in keys:
            vals = [r[k] for r in per_seed if r["quantizer"] == s["quantizer"]]
            s[k + "_std"] = float(np.std(vals)) if len(vals) > 1 else 0.0
        s["seeds"] = s.pop("clips")
        s["collapsed_seeds"] = sum(r["collapsed"] for r in per_seed if r["quantizer"] == s["quantizer"])
    studies.write_csv(summary, os.path.join(opts.out, "summary.csv"))
    if stage_rows:
        studies.write_csv(stage_rows, os.path.join(opts.out, "rvq_stages.csv"))
    plots(per_seed, summary, histories, opts.out)
    table_rows = [dict(s, pesq=f"{s['pesq_wb']:.3f} ± {s['pesq_wb_std']:.3f}", stoi_=f"{s['stoi']:.3f} ± {s['stoi_std']:.3f}")
                  for s in summary]
    notes = (f"Budget per codec: {opts.steps} steps x batch {opts.batch_size}, {opts.epochs} epochs (first one "
             f"quantization-free), one module with {opts.channels} channels, target {opts.target_kbps:g} kbps per "
             f"module (entropy-controlled), seeds {seeds}, {len(clips)} test clips of {studies.corpus_phrase(opts)}. "
             "kbps = whole .nac file bytes * 8 / seconds; payload_kbps = entropy-coded chunks only "
             "(the container header, 42 bytes with the default name, costs ~0.1 kbps on a 3 s clip). "
             "Fixed-length rates matched: vector quantizers code 8 bits per 8-dim vector (8.53 kbps before entropy "
             "coding); softmax 32 bins per scalar. utilisation: fraction of the codebook used on the test clips "
             "(mean over streams); collapsed = utilisation < 0.1. ± = std over seeds. operating_points: modules x RVQ stages "
             "(see rvq_stages.csv for the RVQ stage sweep, an entropy estimate). "
             "target_bits: the module's entropy target per code symbol; val_bits / train_bits: the hard codes' "
             "(Miller-Madow corrected) entropy per symbol on the validation / training batches of the last epoch; "
             "entropy_error_pct = val_bits / target_bits - 1; "
             "bits_per_code: the plug-in entropy of the codes the codec makes on the test clips (per stream), "
             "code_error_pct = bits_per_code / target_bits - 1: the measured rate against the target.\n\n"
             f"Command: `python scripts/compare_quantizers.py --steps {opts.steps} --epochs {opts.epochs} "
             f"--batch_size {opts.batch_size} --channels {opts.channels} --seeds {opts.seeds} "
             f"--target_kbps {opts.target_kbps:g} --tau_step {opts.tau_step:g} --validation_steps {opts.validation_steps} "
             f"--max_clips {opts.max_clips}{studies.corpus_flags(opts)}`")
    studies.write_markdown(table_rows, os.path.join(opts.out, "summary.md"),
                           ["quantizer", "kbps", "payload_kbps", "target_bits", "val_bits", "train_bits",
                            "entropy_error_pct", "bits_per_code", "code_error_pct", "utilisation", "perplexity", "pesq",
                            "stoi_", "si_sdr", "encode_ms_per_s", "decode_ms_per_s", "params", "train_seconds",
                            "final_val_loss", "operating_points", "collapsed_seeds"],
                           "Quantizer comparison", notes)
    if stage_rows:
        with open(os.path.join(opts.out, "summary.md"), "a", encoding="utf-8") as fh:
            fh.write("\n## RVQ stages at inference (rate = zeroth-order entropy of LSF + used stages)\n\n"
                     "| model | stages | entropy kbps | PESQ-WB | STOI | SI-SDR |\n|---|---|---|---|---|---|\n")
            for r in stage_rows:
                fh.write(f"| {r['label']} | {r['stages']} | {r['entropy_kbps']:.2f} | {r['pesq_wb']:.3f} | "
                         f"{r['stoi']:.3f} | {r['si_sdr']:.2f} |\n")
    logging.info("wrote %s", opts.out)


def main(argv):
    del argv
    run(flags.FLAGS)


if __name__ == "__main__":
    define_flags()
    app.run(main)
