"""Reporting shared by `cq_codec.experiment` and the studies in scripts/: pick and load clips,
score codecs at operating points on the same clips, and write CSV / Markdown / PNG results.
(Training and loading a codec are `cq_codec.training.modes.train` and
`cq_codec.experiment.load_codec`: one policy for main.py and every study.)

Every measured bitrate is `len(bytes) * 8 / seconds` of real compressed bytes: the codec's
`.nac` file from `cq_codec.api.Codec.compress` (container header included; the payload-only
rate is reported beside it) and each baseline's packets (`Baseline.encode_decode`).
"""

from __future__ import annotations

import csv
import io
import logging
import math
import os
import time
from collections import defaultdict
from collections.abc import Sequence

import numpy as np

import constants as C
from cq_codec.bitstream.container import NacReader
from cq_codec.codes import stream_entropy_bits
from cq_codec.data.audio import load_audio
from cq_codec.evaluation import diagnostics as diag
from cq_codec.evaluation.baselines import AMRWB_MODES_KBPS, get_baseline
from cq_codec.evaluation.metrics import measured_kbps, score_many

__all__ = ["OUTPUT_HELP", "corpus_phrase", "corpus_flags", "options", "select_clips", "load_clips", "plot_history", "eval_summary_markdown",
           "codec_rows", "baseline_rows", "code_statistics", "mean_rows", "write_csv", "write_markdown",
           "plot_metric_vs_kbps", "BASELINE_POINTS", "METRICS", "QUANTIZER_KWARGS"]

log = logging.getLogger("cq_codec.studies")

METRICS = ("pesq_wb", "stoi", "si_sdr")
METRIC_LABELS = {"pesq_wb": "PESQ-WB (MOS-LQO)", "stoi": "STOI", "si_sdr": "SI-SDR (dB)",
                 "pesq_nb": "PESQ-NB (MOS-LQO)", "snr": "SNR (dB)"}
# Baselines at matched rates (kbps): Opus 6-32, every AMR-WB mode, Speex-WB qualities.
BASELINE_POINTS = {
    "opus": (6.0, 8.0, 10.0, 12.0, 16.0, 20.0, 24.0, 32.0),
    "amrwb": (6.6, 8.85, 12.65, 14.25, 15.85, 18.25, 19.85, 23.05, 23.85),
    "speex": (9.8, 12.8, 16.8, 20.6, 23.8),
}
# Study quantizers at a matched fixed-length rate: 8 bits per 8-dim vector (32 vectors per frame,
# 8.53 kbps before entropy coding) for every vector quantizer; softmax: 32 bins per scalar.
QUANTIZER_KWARGS = {
    # Stride 4 (128 scalars per frame) puts 7 kbps at 1.64 bits/symbol; at stride 2 it is 0.82,
    # below what an entropy-controlled 32-bin scalar quantizer reached (tau still rising).
    "softmax": dict(num_bins=32, the_strides=(4,)),
    "vq": dict(embedding_dim=8, codebook_size=256),
    # Gumbel's argmax codes sit under the target even without an entropy penalty (6.3 against
    # 6.6 bits in the quantization-free epoch): signed control lets tau reward entropy, and the
    # sharpened entropy estimate (Config.gumbel_entropy_temperature) makes that reach the argmax
    # codes. tau starts at 0 (no penalty until the codes' entropy says which way to push): from
    # tau_init 0.5 the first quantized epoch collapsed the codes to 3.2-3.7 bits and the controller
    # overshot (tau -7.7, codes +11 % at the end); from 0 they end +5.2 / +2.4 % (seeds 1 / 2).
    "gumbel": dict(embedding_dim=8, codebook_size=256, tau_step=1.0, tau_signed=True, tau_init=0.0),
    "rvq": dict(embedding_dim=8, num_stages=2, codebook_size=16),
    "pq": dict(embedding_dim=8, stage_dims=(4, 4), codebook_size=16),
}


# The output flags every study script shares, {name: (absl kind, help)}; the corpus flags
# (data_dir, corpus, cache_dir) are Config fields and described there (cq_codec.config.define_flags).
OUTPUT_HELP = {
    "out": ("string", "results folder (CSV, Markdown, PNG)"),
    "work": ("string", "trained models and example wavs (not committed)"),
}


def corpus_phrase(opts) -> str:
    """How a summary names the corpus its clips come from: 'the demo corpus', or 'the vctk
    corpus in /data/vctk' when another was used."""
    if opts.corpus == "demo":
        return "the demo corpus"
    return f"the {opts.corpus} corpus in {opts.data_dir}"


def corpus_flags(opts) -> str:
    """The corpus flags of the command a summary prints (always: a reader reruns it as is)."""
    import shlex
    return f" --corpus {shlex.quote(str(opts.corpus))} --data_dir {shlex.quote(str(opts.data_dir))}"


def options(defaults: dict, **overrides):
    """`defaults` with `overrides` as an attribute namespace (what a study's `run` reads, like FLAGS)."""
    import types
    unknown = set(overrides) - set(defaults)
    if unknown:
        raise ValueError(f"unknown options: {sorted(unknown)}")
    return types.SimpleNamespace(**{**defaults, **overrides})


def select_clips(utterances: Sequence, max_clips: int) -> list:
    """Up to `max_clips` utterances spread over every (language, speaker): round robin over the
    groups in sorted order, each group's utterances in path order. Deterministic."""
    if isinstance(max_clips, bool) or int(max_clips) != max_clips or max_clips < 1:
        raise ValueError(f"max_clips must be a positive integer, got {max_clips!r}")
    groups = defaultdict(list)
    for u in sorted(utterances, key=lambda u: u.path):
        groups[(u.language or "", u.speaker)].append(u)
    queues = [groups[k] for k in sorted(groups)]
    out, depth = [], 0
    while len(out) < max_clips and any(depth < len(q) for q in queues):
        out += [q[depth] for q in queues if depth < len(q)][: max_clips - len(out)]
        depth += 1
    return out


def load_clips(utterances: Sequence, max_seconds: float = 8.0) -> list[tuple[str, np.ndarray]]:
    """[(name, float32 wav [N] at 16 kHz)], each cut to `max_seconds`."""
    clips = []
    for u in utterances:
        wav = np.asarray(load_audio(u.path), np.float32)[: int(max_seconds * C.SAMPLE_RATE)]
        clips.append((f"{u.speaker}/{os.path.splitext(os.path.basename(u.path))[0]}", wav))
    return clips


def _payload_kbps(data: bytes, seconds: float) -> float:
    reader = NacReader(io.BytesIO(data))
    return sum(len(p) for p in reader) * 8 / seconds / C.BITS_PER_KBIT


def codec_rows(codec, clips: Sequence[tuple[str, np.ndarray]], label: str, num_modules: int | None = None,
               inputs: Sequence[np.ndarray] | None = None, processes: int = 2,
               diagnostics: bool = False) -> list[dict]:
    """Compress -> decompress every clip at one operating point and score it against the clip.

    `inputs` (default: the clips themselves) is what gets coded, e.g. noisy versions of the clean
    clips. Rows: codec, label, modules, clip, seconds, kbps (file bytes), payload_kbps,
    encode_ms_per_s, decode_ms_per_s and the metrics of `score`; with `diagnostics`, those of
    `diagnostics.diagnose` too (per-clip spectra included: `diagnostics.pop_spectra` them).
    """
    n = num_modules or codec.num_modules
    rows, pairs = [], []
    for k, (name, clean) in enumerate(clips):
        x = clean if inputs is None else inputs[k]
        t0 = time.perf_counter()
        data = codec.compress(x, C.SAMPLE_RATE, num_modules=n)
        t1 = time.perf_counter()
        decoded, _ = codec.decompress(data)
        t2 = time.perf_counter()
        sec = len(x) / C.SAMPLE_RATE
        rows.append({"codec": "cq", "label": label, "modules": n, "clip": name, "seconds": sec,
                     "bytes": len(data), "kbps": measured_kbps(len(data), len(x)),
                     "payload_kbps": _payload_kbps(data, sec),
                     "encode_ms_per_s": 1000 * (t1 - t0) / sec, "decode_ms_per_s": 1000 * (t2 - t1) / sec})
        pairs.append((np.asarray(clean, np.float32), decoded[: len(clean)]))
    for row, s in zip(rows, score_many(pairs, processes=processes, names=[r["clip"] for r in rows])):
        row.update(s)
    if diagnostics:
        diag.add_to_rows(rows, pairs, processes)
    return rows


def baseline_rows(name: str, kbps: float, clips: Sequence[tuple[str, np.ndarray]], processes: int = 2,
                  diagnostics: bool = False) -> list[dict]:
    """One baseline codec at one nominal rate on every clip (measured kbps from its bytes); with
    `diagnostics` as in `codec_rows`."""
    codec = get_baseline(name, kbps)
    rows, pairs = [], []
    for clip, wav in clips:
        t0 = time.perf_counter()
        decoded, nbytes = codec.encode_decode(np.asarray(wav, np.float32))
        sec = len(wav) / C.SAMPLE_RATE
        rows.append({"codec": name, "label": f"{name} {kbps:g}", "nominal_kbps": kbps, "clip": clip, "seconds": sec,
                     "bytes": nbytes, "kbps": measured_kbps(nbytes, len(wav)), "payload_kbps": measured_kbps(nbytes, len(wav)),
                     "codec_ms_per_s": 1000 * (time.perf_counter() - t0) / sec})
        pairs.append((np.asarray(wav, np.float32), decoded))
    for row, s in zip(rows, score_many(pairs, processes=processes, names=[r["clip"] for r in rows])):
        row.update(s)
    if diagnostics:
        diag.add_to_rows(rows, pairs, processes)
    return rows


def code_statistics(codec, clips: Sequence[tuple[str, np.ndarray]], num_modules: int | None = None) -> dict:
    """Codebook use of the last active module on `clips`: mean over its S streams of the
    fraction of the alphabet used (utilisation), the perplexity 2^H and H (bits per code)."""
    n = num_modules or codec.num_modules
    codes = [codec.encode(w, C.SAMPLE_RATE, num_modules=n).modules[n - 1] for _, w in clips]
    flat = np.concatenate([c.reshape(-1, c.shape[-1]) for c in codes])
    sizes = codec.model.codec_modules[n - 1].quantizer.codebook_sizes
    ent = stream_entropy_bits(flat, sizes)
    util = [np.count_nonzero(np.bincount(flat[:, s], minlength=k)) / k for s, k in enumerate(sizes)]
    perp = 2.0 ** ent
    return {"utilisation": float(np.mean(util)), "perplexity": float(np.mean(perp)),
            "bits_per_code": float(np.mean(ent)), "alphabet": int(sizes[0]), "streams": int(flat.shape[1])}


def mean_rows(rows: Sequence[dict], keys: Sequence[str], values: Sequence[str]) -> list[dict]:
    """Group `rows` by `keys` (first-seen order) and average `values` (NaN-aware); adds `clips`."""
    groups: dict = {}
    for r in rows:
        groups.setdefault(tuple(r[k] for k in keys), []).append(r)
    out = []
    for key, sel in groups.items():
        row = dict(zip(keys, key))
        for v in values:
            vals = np.array([float(r[v]) for r in sel if r.get(v) not in (None, "")], np.float64)
            row[v] = float(np.nanmean(vals)) if vals.size and np.any(np.isfinite(vals)) else float("nan")
        row["clips"] = len(sel)
        out.append(row)
    return out


def write_csv(rows: Sequence[dict], path: str) -> None:
    """Rows (dicts) -> CSV; the header is the union of keys in first-seen order."""
    if not rows:
        raise ValueError(f"no rows to write to {path}")
    cols = list(dict.fromkeys(k for r in rows for k in r))
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as fh:
        w = csv.DictWriter(fh, cols)
        w.writeheader()
        w.writerows(rows)


def _fmt(v) -> str:
    if isinstance(v, float):
        return "nan" if math.isnan(v) else (f"{v:.3f}" if abs(v) < 1000 else f"{v:.0f}")
    return str(v)


def write_markdown(rows: Sequence[dict], path: str, columns: Sequence[str], title: str, notes: str = "") -> None:
    """A Markdown file: `# title`, `notes`, and one table of `columns`."""
    lines = [f"# {title}", ""] + ([notes.strip(), ""] if notes else [])
    lines += ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(_fmt(r.get(c, "")) for c in columns) + " |" for r in rows]
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with open(path, "w", encoding="utf-8") as fh:
        fh.write("\n".join(lines) + "\n")


def plot_metric_vs_kbps(summary: Sequence[dict], path: str, metrics: Sequence[str] = METRICS,
                        series_key: str = "codec", title: str = "") -> None:
    """One panel per metric, metric against measured kbps, one line per `series_key` value."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, len(metrics), figsize=(5 * len(metrics), 4), squeeze=False)
    series = list(dict.fromkeys(r[series_key] for r in summary))
    for ax, m in zip(axes[0], metrics):
        for s in series:
            pts = sorted((r["kbps"], r[m]) for r in summary if r[series_key] == s)
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=str(s))
        ax.set_xlabel("measured bitrate (kbps, from compressed bytes)")
        ax.set_ylabel(METRIC_LABELS.get(m, m))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def nearest_amrwb_mode(kbps: float) -> float:
    """The AMR-WB mode (kbps) closest to `kbps`."""
    return min(AMRWB_MODES_KBPS, key=lambda m: abs(m - kbps))


def compare_clip(codec, wav: np.ndarray, name: str = "clip", baselines: Sequence[str] = ("opus", "amrwb"),
                 out_dir: str | None = None, processes: int = 1) -> list[dict]:
    """One clip through every operating point of `codec` and, at each point's measured file
    bitrate, through Opus (same target rate) and AMR-WB (nearest mode). Rows are in operating
    point order: cq first, then its baselines. With `out_dir`, writes every decoded wav there."""
    wav = np.asarray(wav, np.float32)
    rows, pairs = [], []
    for n in range(1, codec.num_modules + 1):
        data = codec.compress(wav, C.SAMPLE_RATE, num_modules=n)
        decoded, _ = codec.decompress(data)
        kbps = measured_kbps(len(data), len(wav))
        rows.append({"point": n, "codec": f"cq ({n} module{'s' if n > 1 else ''})", "kbps": kbps})
        pairs.append(decoded[: len(wav)])
        for b in baselines:
            rate = nearest_amrwb_mode(kbps) if b in ("amrwb", "amr-wb") else max(6.0, round(kbps, 1))  # Opus: >= 6
            dec, nbytes = get_baseline(b, rate).encode_decode(wav)
            rows.append({"point": n, "codec": f"{b} {rate:g}", "kbps": measured_kbps(nbytes, len(wav))})
            pairs.append(dec[: len(wav)])
    for row, s in zip(rows, score_many([(wav, d) for d in pairs], processes=processes)):
        row.update({k: s[k] for k in METRICS})
    if out_dir:
        import soundfile as sf
        os.makedirs(out_dir, exist_ok=True)
        sf.write(os.path.join(out_dir, f"{name}_reference.wav"), wav, C.SAMPLE_RATE)
        for row, dec in zip(rows, pairs):
            tag = row["codec"].replace(" ", "_").replace("(", "").replace(")", "")
            sf.write(os.path.join(out_dir, f"{name}_{tag}_{row['kbps']:.1f}kbps.wav"), dec, C.SAMPLE_RATE)
    return rows


def eval_summary_markdown(rows: list[dict]) -> str:
    """eval.md: the mean of every metric per operating point (modules, or the waveform codec's
    codebooks; and per input SNR for noisy evaluation), a Markdown table."""
    group = [k for k in ("snr_db", "modules", "codebooks") if k in rows[0]]
    keys = [k for k in rows[0] if k not in ("clip", "seconds", *group)]
    lines = ["| " + " | ".join(group + keys) + " |", "|---" * (len(group) + len(keys)) + "|"]
    for g in sorted({tuple(r[k] for k in group) for r in rows}):
        sel = [r for r in rows if tuple(r[k] for k in group) == g]
        means = [np.nanmean([float(r[k]) for r in sel]) for k in keys]
        lines.append("| " + " | ".join(f"{v:g}" for v in g) + " | " + " | ".join(f"{m:.3f}" for m in means) + " |")
    return "\n".join(lines) + "\n"


def plot_history(csv_path: str, out_path: str) -> None:
    """Training curves from metrics.csv: loss, time/mel terms and estimated kbps per epoch."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    with open(csv_path, newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    if not rows:
        return
    x = np.arange(1, len(rows) + 1)
    get = lambda k: np.array([float(r[k]) if r.get(k) not in (None, "") else np.nan for r in rows])
    fig, axes = plt.subplots(1, 3, figsize=(14, 4))
    for key in ("loss", "val_loss"):
        axes[0].plot(x, get(key), label=key)
    for key in ("time", "val_time", "mel", "val_mel"):
        axes[1].plot(x, get(key), label=key)
    for key in ("kbps", "val_kbps"):
        axes[2].plot(x, get(key), label=key)
    for ax, title, unit in zip(axes, ("total loss", "reconstruction terms", "estimated bitrate"), ("loss", "RMSE", "kbps")):
        ax.set_title(title)
        ax.set_xlabel("epoch (all stages in order)")
        ax.set_ylabel(unit)
        ax.legend()
    stages = [r["stage"] for r in rows]
    for i in range(1, len(stages)):
        if stages[i] != stages[i - 1]:
            for ax in axes:
                ax.axvline(i + 0.5, color="grey", ls=":")
    fig.tight_layout()
    os.makedirs(os.path.dirname(out_path), exist_ok=True)
    fig.savefig(out_path, dpi=100)
    plt.close(fig)
