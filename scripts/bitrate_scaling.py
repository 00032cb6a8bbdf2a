"""Quality against MEASURED bitrate: trained CQ models at every operating point (1..N modules),
waveform codecs (--model_type waveform) at every codebook count 1..N from their one file of
weights, and the baselines (Opus 6-32 kbps, every AMR-WB mode, Speex-WB) on the same test clips.

    python scripts/bitrate_scaling.py --models results/main                 # one or more model folders
    python scripts/bitrate_scaling.py --models "results/_work/quantizers/*" --max_clips 30

Clips: up to --max_clips utterances of the corpus's --split (default test), spread round-robin over every
speaker/language (deterministic). kbps = bytes * 8 / seconds of real compressed data: the
`.nac` file of `Codec.compress` (and its payload without the container header) and each
baseline's packets. Writes <out>/bitrate_scaling.csv (per clip), summary.csv, summary.md and
bitrate_scaling.png (PESQ-WB, STOI, SI-SDR against kbps, all codecs on the same axes). With
--diagnostics on (default), every row also gets the error-allocation diagnostics of
cq_codec/evaluation/diagnostics.py (per-band SNR, segmental SNR, oracle PESQ-WB) and
error_spectra.png shows each row's error spectrum against the speech spectrum.
"""

from __future__ import annotations

import glob
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app, flags, logging
from cq_codec import config  # noqa: E402
from cq_codec.evaluation import studies  # noqa: E402

DEFAULTS = {
    "models": "results/*",
    "max_clips": 30,
    "split": "test",
    "max_seconds": 8.0,
    "baselines": "opus,amrwb,speex",
    "baseline_kbps": "",
    "data_dir": "data/demo",
    "corpus": "demo",
    "seed": 1234,
    "processes": 2,
    "postfilter": "on",
    "diagnostics": "on",
    "out": "results/bitrate_scaling",
}
POSTFILTER_CHOICES = ("on", "off", "both")
_HELP = {
    "models": ("string", "comma-separated model folders (results/<name>/model.keras) or globs"),
    "max_clips": ("integer", "clips (spread over all speakers/languages of --split)"),
    "split": ("string", "which split's clips: test (unseen speakers), val or train (the speakers the "
                        "models were trained on: the generalisation gap)"),
    "max_seconds": ("float", "each clip is cut to this many seconds"),
    "baselines": ("string", "baseline codecs ('' for none)"),
    "baseline_kbps": ("string", "override the rates of every baseline, e.g. '8,16,24' (default: BASELINE_POINTS)"),
    "seed": ("integer", "split seed (corpora without their own split)"),
    "processes": ("integer", "scoring processes"),
    "postfilter": ("string", "decoder postfilter of the CQ models: on, off, or both (rows without it "
                             "labelled 'no postfilter'; the bytes are the same)"),
    "diagnostics": ("string", "on: per-band SNR, segmental SNR, oracle PESQ-WB (one more PESQ per clip) and "
                              "error_spectra.png; off: skip them"),
    **{k: studies.OUTPUT_HELP[k] for k in ("out",)},
}


def define_flags() -> None:
    """The absl flags (defined only when run as a script, so tests can import this module): the
    script's own described in _HELP, the others Config fields described there."""
    config.define_flags(DEFAULTS, _HELP)


def options(**overrides):
    """DEFAULTS with `overrides` as an attribute namespace (what `run` reads, like FLAGS)."""
    return studies.options(DEFAULTS, **overrides)


def model_dirs(spec: str) -> list[str]:
    """Folders holding a model.keras among the comma-separated paths/globs (results/_work excluded
    from globs unless named)."""
    found = []
    for part in (p.strip() for p in spec.split(",") if p.strip()):
        paths = sorted(glob.glob(part)) if any(c in part for c in "*?[") else [part]
        for p in paths:
            if os.path.isfile(os.path.join(p, "model.keras")) and p not in found:
                found.append(p)
            elif not any(c in part for c in "*?["):
                raise FileNotFoundError(f"--models: no model.keras in {p!r}")
    return found


def check_baselines(opts) -> None:
    """Every (--baselines, --baseline_kbps or the default rates) pair names a codec mode that
    exists; raises ValueError naming the flag."""
    from cq_codec.config import ConfigError, parse_float_list
    from cq_codec.evaluation import studies
    from cq_codec.evaluation.baselines import AMRWB_MODES_KBPS, SPEEX_WB_QUALITY_KBPS
    try:
        override = parse_float_list(opts.baseline_kbps, "baseline_kbps") if opts.baseline_kbps else None
    except ConfigError as exc:
        raise ValueError(str(exc)) from None
    rates = {"amrwb": AMRWB_MODES_KBPS, "speex": tuple(SPEEX_WB_QUALITY_KBPS.values())}
    for name in (b.strip() for b in opts.baselines.split(",") if b.strip()):
        if name not in studies.BASELINE_POINTS:
            raise ValueError(f"--baselines: unknown codec {name!r}; known: {', '.join(studies.BASELINE_POINTS)}")
        for kbps in override or studies.BASELINE_POINTS[name]:
            if name == "opus" and not 6 <= kbps <= 510:
                raise ValueError(f"--baseline_kbps: Opus takes 6 to 510 kbps; got {kbps:g}")
            if name in rates and not any(abs(kbps - r) < 1e-6 for r in rates[name]):
                raise ValueError(f"--baseline_kbps: {name} has no {kbps:g} kbps mode; its modes: "
                                 f"{', '.join(f'{r:g}' for r in rates[name])}")


def run(opts) -> None:
    """The study with options `opts` (absl FLAGS or `options(...)`)."""
    from cq_codec import experiment
    from cq_codec.config import parse_float_list
    from cq_codec.data import corpora, splits
    from cq_codec.evaluation import diagnostics, studies
    logging.set_verbosity(logging.INFO)
    if opts.split not in splits.SPLITS:
        raise ValueError(f"--split must be {', '.join(splits.SPLITS[:-1])} or {splits.SPLITS[-1]}; got {opts.split!r}")
    if opts.postfilter not in POSTFILTER_CHOICES:
        raise ValueError(f"--postfilter must be on, off or both; got {opts.postfilter!r}")
    if opts.diagnostics not in ("on", "off"):
        raise ValueError(f"--diagnostics must be on or off; got {opts.diagnostics!r}")
    diag = opts.diagnostics == "on"
    check_baselines(opts)   # before any scoring: a bad rate fails now, not after the models
    parts = splits.split_utterances(corpora.discover(opts.data_dir, opts.corpus), seed=opts.seed)
    utts = studies.select_clips(parts[opts.split], opts.max_clips)
    clips = studies.load_clips(utts, opts.max_seconds)
    logging.info("%d clips from %d speakers", len(clips), len({u.speaker for u in utts}))
    rows = []
    for d in model_dirs(opts.models):
        codec = experiment.load_codec(d, parts["train"])
        name = os.path.basename(os.path.normpath(d))
        if getattr(codec, "kind", "cq") == "waveform":   # no postfilter; n codebooks per point
            for n in range(1, codec.num_codebooks + 1):
                got = studies.codec_rows(codec, clips, name, num_modules=n, processes=opts.processes,
                                         diagnostics=diag)
                for r in got:
                    r.update(codec=f"waveform {name}", codebooks=n, modules=1,
                             label=f"waveform {name} {n} codebook{'s' if n > 1 else ''}")
                rows += got
            continue
        for post in {"on": (True,), "off": (False,), "both": (True, False)}[opts.postfilter]:
            codec.postfilter = post
            label = name + ("" if post else " (no postfilter)")
            for n in range(1, codec.num_modules + 1):
                got = studies.codec_rows(codec, clips, label, num_modules=n, processes=opts.processes,
                                         diagnostics=diag)
                for r in got:
                    r["codec"] = f"cq {label}"
                    r["label"] = f"cq {label} {n} module{'s' if n > 1 else ''}"
                rows += got
    override = parse_float_list(opts.baseline_kbps, "baseline_kbps") if opts.baseline_kbps else None
    for name in (b.strip() for b in opts.baselines.split(",") if b.strip()):
        for kbps in override or studies.BASELINE_POINTS[name]:
            logging.info("baseline %s at %g kbps", name, kbps)
            rows += studies.baseline_rows(name, kbps, clips, processes=opts.processes, diagnostics=diag)
    if not rows:
        raise ValueError("nothing to evaluate: no --models found and no --baselines")
    os.makedirs(opts.out, exist_ok=True)
    if diag:
        diagnostics.plot_error_spectra(diagnostics.pop_spectra(rows), os.path.join(opts.out, "error_spectra.png"),
                                       title=f"Speech and error long-term spectra ({len(clips)} {opts.split} clips)")
    studies.write_csv(rows, os.path.join(opts.out, "bitrate_scaling.csv"))
    values = ["kbps", "payload_kbps", "pesq_wb", "pesq_nb", "stoi", "si_sdr"] + (list(diagnostics.COLUMNS) if diag else [])
    summary = studies.mean_rows(rows, ["codec", "label"], values)
    studies.write_csv(summary, os.path.join(opts.out, "summary.csv"))
    plot_rows = list(summary) + [dict(r, codec=r["codec"] + " (payload only)", kbps=r["payload_kbps"])
                                 for r in summary if r["codec"].startswith(("cq ", "waveform "))]
    studies.plot_metric_vs_kbps(plot_rows, os.path.join(opts.out, "bitrate_scaling.png"),
                                title=f"Quality against measured bitrate ({len(clips)} {opts.split} clips)")
    notes = (f"{len(clips)} clips of {studies.corpus_phrase(opts)}, its {opts.split} split ({len({u.speaker for u in utts})} speakers), "
             f"each at most {opts.max_seconds:g} s. kbps = compressed bytes * 8 / seconds: for CQ and the waveform codec the whole `.nac` file "
             "(its compact header included), payload_kbps = its entropy-coded chunks only; for the baselines "
             "the codec packets (Opus packets, AMR-WB storage frames, Speex audio packets; no container), so "
             "payload_kbps is the like-for-like comparison.\n\n"
             f"Command: `python scripts/bitrate_scaling.py --models {opts.models} --max_clips {opts.max_clips}"
             + (f" --split {opts.split}" if opts.split != "test" else "")
             + (f" --postfilter {opts.postfilter}" if opts.postfilter != "on" else "")
             + (f" --baselines {opts.baselines}" if opts.baselines else "")
             + (f" --baseline_kbps {opts.baseline_kbps}" if opts.baseline_kbps else "")
             + studies.corpus_flags(opts)
             + (" --diagnostics off" if not diag else "") + "`" + ("\n\n" + diagnostics.NOTES if diag else ""))
    studies.write_markdown(summary, os.path.join(opts.out, "summary.md"),
                           ["label", "kbps", "payload_kbps", "pesq_wb", "pesq_nb", "stoi", "si_sdr"]
                           + (list(diagnostics.COLUMNS) if diag else []) + ["clips"],
                           "Bitrate scaling", notes)
    logging.info("wrote %s", opts.out)


def main(argv):
    del argv
    run(flags.FLAGS)


if __name__ == "__main__":
    define_flags()
    app.run(main)
