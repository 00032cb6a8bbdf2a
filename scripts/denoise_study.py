"""Denoising codecs with VQ, RVQ and Gumbel-softmax bottlenecks (same small budget).

    python scripts/denoise_study.py                               # offline noise (coloured + babble)
    python scripts/denoise_study.py --noise_dir /path/to/noises   # any wav/flac recordings

Training: each example's noisy input (`x_noisy`, `lsf_noisy`) is mixed on the fly at an SNR drawn
from --train_snr (cq_codec.data.noise.FrameNoiser); the target is the clean frame. Test: the
demo corpus's test clips mixed (seeded) with each noise type at each of --test_snrs, coded by
the denoising codec (compress -> decompress of the noisy clip) and scored against the clean
clip; the improvement is over the noisy input scored the same way. Writes <out>/denoising.csv
(per clip), summary.csv, summary.md, denoising.png; example wavs under <work>/examples.
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np
from absl import app, flags, logging

import constants as C
from cq_codec.config import parse_float_list
from cq_codec import config  # noqa: E402
from cq_codec.evaluation import studies  # noqa: E402

DEFAULTS = {
    "quantizers": "vq,rvq,gumbel",
    "seed": 1,
    "steps": 200,
    "epochs": 4,
    "batch_size": 16,
    "channels": 32,
    "target_kbps": 7.0,
    "train_snr": "0,15",
    "test_snrs": "0,5,10",
    "noise_dir": "",
    "babble_utterances": 40,
    "max_clips": 8,
    "example_clips": 2,
    "data_dir": "data/demo",
    "corpus": "demo",
    "cache_dir": "cache",
    "out": "results/denoising",
    "work": "results/_work/denoising",
    "reference_models": "",
    "clean_reference": "vq",
}
_HELP = {
    "quantizers": ("string", "bottlenecks to train"),
    "seed": ("integer", "training and mixing seed"),
    "steps": ("integer", "training steps per codec"),
    "epochs": ("integer", "epochs (the first quantization-free)"),
    "target_kbps": ("float", "entropy target per module (kbps)"),
    "test_snrs": ("string", "test SNRs (dB)"),
    "babble_utterances": ("integer", "training utterances in the babble bank"),
    "max_clips": ("integer", "test clips"),
    "example_clips": ("integer", "clips whose noisy/denoised wavs are written"),
    "reference_models": ("string", "comma-separated folders of codecs trained on CLEAN speech, scored on the same noisy clips"),
    "clean_reference": ("string", "bottlenecks also trained on CLEAN speech with the denoisers' exact config and budget "
                                  "(the codec a denoiser must beat on noisy input; '' for none)"),
    **{k: studies.OUTPUT_HELP[k] for k in ("out", "work")},
}


def define_flags() -> None:
    """The absl flags (defined only when run as a script, so tests can import this module): the
    script's own described in _HELP, the others Config fields described there."""
    config.define_flags(DEFAULTS, _HELP)


def options(**overrides):
    """DEFAULTS with `overrides` as an attribute namespace (what `run` reads, like FLAGS)."""
    return studies.options(DEFAULTS, **overrides)


def noise_sources(train_utts, noise_dir: str, babble_utterances: int, seed: int) -> dict:
    """{name: NoiseSource}: the folder's noise, or coloured noise and babble of training speech."""
    from cq_codec.data import noise
    from cq_codec.data.audio import load_audio
    if noise_dir:
        return {"folder": noise.FolderNoise(noise_dir)}
    pick = sorted(np.random.default_rng(seed).permutation(len(train_utts))[:babble_utterances])
    babble = noise.BabbleNoise([load_audio(train_utts[i].path) for i in pick], ids=[train_utts[i].speaker for i in pick])
    return {"coloured": noise.ColouredNoise(), "babble": babble}


def noisy_test_set(clips, speakers, sources: dict, snrs, seed: int) -> list[dict]:
    """Every (noise, snr, clip): {'noise', 'snr_db', 'index', 'noisy'} mixed with a seeded rng."""
    from cq_codec.data import noise
    out = []
    for name, src in sources.items():
        for snr in snrs:
            for k, (clip, wav) in enumerate(clips):
                rng = np.random.default_rng([seed, k, int(round(snr * 10)) + 1000, len(name)])
                n = src.sample(len(wav), rng, exclude=speakers[k])
                noisy, _ = noise.mix_at_snr(wav, n, snr)
                out.append({"noise": name, "snr_db": snr, "index": k, "noisy": noisy.astype(np.float32)})
    return out


def make_config(quantizer: str, prefix: str = "denoise", **b):
    from cq_codec.config import Config
    from cq_codec.evaluation.studies import QUANTIZER_KWARGS
    return Config(name=f"{prefix}_{quantizer}_s{b['seed']}", results_dir=b["work"], seed=b["seed"], corpus=b["corpus"],
                  data_dir=b["data_dir"], cache_dir=b["cache_dir"], training_mode=1, num_modules=1,
                  channels=b["channels"], bottleneck=max(2, b["channels"] // 4), quantizer=quantizer,
                  epoch_tanh=b["epochs"], pretrain_step=1, steps_per_epoch=max(1, b["steps"] // b["epochs"]),
                  validation_steps=2, batch_size=b["batch_size"], target_entropy=(b["target_kbps"],), target_unit="kbps",
                  learning_rate_tanh=(3e-4,), **QUANTIZER_KWARGS[quantizer]).validate()


def plot(summary, out: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    keys = [("si_sdr", "SI-SDR (dB)"), ("pesq_wb", "PESQ-WB (MOS-LQO)"), ("stoi", "STOI")]
    noises = list(dict.fromkeys(r["noise"] for r in summary))
    fig, axes = plt.subplots(len(noises), 3, figsize=(15, 4 * len(noises)), squeeze=False)
    for i, nz in enumerate(noises):
        for ax, (k, label) in zip(axes[i], keys):
            for j, system in enumerate(dict.fromkeys(r["system"] for r in summary)):
                pts = sorted((r["snr_db"], r[k]) for r in summary if r["noise"] == nz and r["system"] == system)
                ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=system,
                        ls="--" if system == "noisy input" else (":" if "clean-trained" in system else "-"), color="k" if system == "noisy input" else f"C{j}")
            ax.set_xlabel("input SNR (dB)")
            ax.set_ylabel(label)
            ax.set_title(f"{nz} noise")
            ax.grid(alpha=0.3)
            ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(os.path.join(out, "denoising.png"), dpi=100)
    plt.close(fig)


def run(opts) -> None:
    """The study with options `opts` (absl FLAGS or `options(...)`)."""
    from cq_codec.data import noise
    from cq_codec.data.audio import write_wav
    from cq_codec.data import corpora, splits
    from cq_codec.evaluation import studies
    from cq_codec.evaluation.metrics import score_many
    from cq_codec import experiment
    from cq_codec.training import modes
    logging.set_verbosity(logging.INFO)
    snr_lo, snr_hi = parse_float_list(opts.train_snr, "train_snr")
    test_snrs = parse_float_list(opts.test_snrs, "test_snrs")
    b = dict(seed=opts.seed, steps=opts.steps, epochs=opts.epochs, batch_size=opts.batch_size, channels=opts.channels,
             target_kbps=opts.target_kbps, data_dir=opts.data_dir, corpus=opts.corpus, cache_dir=opts.cache_dir,
             work=opts.work)
    cfgs = [make_config(q.strip(), **b) for q in opts.quantizers.split(",") if q.strip()]
    parts = splits.split_utterances(corpora.discover(opts.data_dir, opts.corpus), seed=opts.seed)
    sources = noise_sources(parts["train"], opts.noise_dir, opts.babble_utterances, opts.seed)
    train_source = noise.MixtureNoise(list(sources.values()))
    test_utts = studies.select_clips(parts["test"], opts.max_clips)
    clips = studies.load_clips(test_utts)
    tests = noisy_test_set(clips, [u.speaker for u in test_utts], sources, test_snrs, opts.seed)
    examples = os.path.join(opts.work, "examples")
    os.makedirs(examples, exist_ok=True)
    os.makedirs(opts.out, exist_ok=True)
    # The noisy input itself, scored the same way (the reference for every improvement).
    rows = []
    base = score_many([(clips[t["index"]][1], t["noisy"]) for t in tests])
    for t, s in zip(tests, base):
        rows.append({"system": "noisy input", "noise": t["noise"], "snr_db": t["snr_db"], "clip": clips[t["index"]][0],
                     "kbps": float("nan"), **s})
    for t in tests:
        if t["index"] < opts.example_clips:
            write_wav(os.path.join(examples, f"{t['noise']}_{t['snr_db']:g}dB_{t['index']:02d}_noisy.wav"), t["noisy"])
    for cfg in cfgs:
        noiser = noise.FrameNoiser(modes.load_data(cfg)[1].std, snr_db=(snr_lo, snr_hi), source=train_source)
        trained = modes.train(cfg, noisy_examples=noiser)
        codec = experiment.load_codec(cfg.experiment_dir)
        for (nz, snr) in dict.fromkeys((t["noise"], t["snr_db"]) for t in tests):
            sel = [t for t in tests if t["noise"] == nz and t["snr_db"] == snr]
            got = studies.codec_rows(codec, [clips[t["index"]] for t in sel], cfg.quantizer,
                                     inputs=[t["noisy"] for t in sel])
            for t, r in zip(sel, got):
                r.update(system=f"{cfg.quantizer} denoiser", noise=nz, snr_db=snr, train_seconds=trained["train_seconds"])
                rows.append(r)
                if t["index"] < opts.example_clips:
                    data = codec.compress(t["noisy"], C.SAMPLE_RATE)
                    write_wav(os.path.join(examples, f"{nz}_{snr:g}dB_{t['index']:02d}_{cfg.quantizer}_denoised.wav"),
                              codec.decompress(data)[0])
        studies.write_csv(rows, os.path.join(opts.out, "denoising.csv"))
    references = [m.strip() for m in opts.reference_models.split(",") if m.strip()]
    for q in (q.strip() for q in opts.clean_reference.split(",") if q.strip()):
        cfg = make_config(q, prefix="clean", **b)
        modes.train(cfg)
        references.append(cfg.experiment_dir)
    for d in references:
        codec = experiment.load_codec(d, parts["train"], opts.seed)
        system = f"{os.path.basename(os.path.normpath(d))} (clean-trained)"
        for (nz, snr) in dict.fromkeys((t["noise"], t["snr_db"]) for t in tests):
            sel = [t for t in tests if t["noise"] == nz and t["snr_db"] == snr]
            for r in studies.codec_rows(codec, [clips[t["index"]] for t in sel], system, inputs=[t["noisy"] for t in sel]):
                r.update(system=system, noise=nz, snr_db=snr)
                rows.append(r)
    studies.write_csv(rows, os.path.join(opts.out, "denoising.csv"))
    metrics = ["si_sdr", "pesq_wb", "stoi", "kbps"]
    summary = studies.mean_rows(rows, ["system", "noise", "snr_db"], metrics)
    ref = {(r["noise"], r["snr_db"]): r for r in summary if r["system"] == "noisy input"}
    for r in summary:
        for m in ("si_sdr", "pesq_wb", "stoi"):
            r[f"d_{m}"] = r[m] - ref[(r["noise"], r["snr_db"])][m]
    studies.write_csv(summary, os.path.join(opts.out, "summary.csv"))
    plot(summary, opts.out)
    notes = (f"Denoising codecs (one module, {opts.channels} channels, {opts.steps} steps x batch {opts.batch_size}, "
             f"target {opts.target_kbps:g} kbps, trained on noise at {snr_lo:g}-{snr_hi:g} dB SNR, seed {opts.seed}). "
             f"Test: {len(clips)} test clips of {studies.corpus_phrase(opts)} x noise {list(sources)} x SNR {test_snrs} dB (seeded). "
             "d_* = improvement over the noisy input (output vs clean minus noisy vs clean); "
             "kbps = .nac bytes * 8 / seconds. '(clean-trained)' rows: codecs of the same config and budget trained on clean "
             "speech (clean_*: --clean_reference), coding the same noisy clips: the reference a denoiser must beat.\n\n"
             f"Command: `python scripts/denoise_study.py --quantizers {opts.quantizers} --steps {opts.steps} "
             f"--epochs {opts.epochs} --batch_size {opts.batch_size} --channels {opts.channels} "
             f"--train_snr {opts.train_snr} --test_snrs {opts.test_snrs} --max_clips {opts.max_clips}"
             + studies.corpus_flags(opts)
             + (f" --noise_dir {opts.noise_dir}" if opts.noise_dir else "")
             + (f" --reference_models {opts.reference_models}" if opts.reference_models else "")
             + f" --clean_reference '{opts.clean_reference}'`")
    studies.write_markdown(summary, os.path.join(opts.out, "summary.md"),
                           ["system", "noise", "snr_db", "si_sdr", "d_si_sdr", "pesq_wb", "d_pesq_wb", "stoi", "d_stoi",
                            "kbps", "clips"], "Denoising study", notes)
    logging.info("wrote %s", opts.out)


def main(argv):
    del argv
    run(flags.FLAGS)


if __name__ == "__main__":
    define_flags()
    app.run(main)
