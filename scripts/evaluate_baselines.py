"""Score traditional codecs (Opus, AMR-WB, Speex-WB) on real speech.

Each clip is coded by each baseline for real, scored against its input after delay alignment
(PESQ-WB, PESQ-NB, STOI, SI-SDR, SNR), and the results are averaged per codec and rate.
Measured kbps is total payload bits / total duration (1 kbps = 1000 bit/s); file kbps adds the
container (AMR-WB magic; Ogg pages and headers for Speex; Opus has none here).

Usage:
  python scripts/evaluate_baselines.py --data_dir /path/to/wavs --max_clips 40 --out base.csv
  python scripts/evaluate_baselines.py a.wav b.flac --codecs opus:9,amrwb:8.85 --out base.csv
"""

import csv
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from anywhere in the repo

import numpy as np  # noqa: E402
import soundfile as sf  # noqa: E402
import soxr  # noqa: E402
from absl import app, flags, logging  # noqa: E402

from constants import SAMPLE_RATE  # noqa: E402
from cq_codec.evaluation.baselines import get_baseline  # noqa: E402
from cq_codec.evaluation.metrics import measured_kbps, score_many  # noqa: E402

DEFAULT_CODECS = ("opus:9,opus:16,opus:24,amrwb:8.85,amrwb:15.85,amrwb:23.85,"
                  "speex:9.8,speex:16.8,speex:23.8")
AUDIO_SUFFIXES = (".wav", ".flac", ".ogg")
METRICS = ("pesq_wb", "pesq_nb", "stoi", "si_sdr", "snr")
COLUMNS = ("codec", "nominal_kbps", "measured_kbps", "file_kbps", "pesq_wb", "pesq_nb", "stoi",
           "si_sdr", "snr", "clips", "nan_pesq_clips", "seconds")

FLAGS = flags.FLAGS
flags.DEFINE_string("data_dir", None, "Folder searched recursively for wav/flac/ogg files.")
flags.DEFINE_integer("max_clips", 0, "Use at most this many clips (sorted by path); 0 = all.")
flags.DEFINE_string("codecs", DEFAULT_CODECS, "Comma-separated name:kbps list.")
flags.DEFINE_string("out", "baselines.csv", "CSV file for the per-codec table.")
flags.DEFINE_string("per_clip_out", None, "Optional CSV with one row per codec and clip.")
flags.DEFINE_integer("processes", 2, "Worker processes for scoring.")


def find_clips(paths, data_dir, max_clips):
    """Sorted audio paths from explicit files and/or a folder; at most max_clips (0 = all)."""
    clips = [Path(p) for p in paths]
    if data_dir:
        if not os.path.isdir(data_dir):
            raise ValueError(f"--data_dir {data_dir!r} is not a folder")
        clips += sorted(p for p in Path(data_dir).rglob("*") if p.suffix.lower() in AUDIO_SUFFIXES)
    missing = [str(p) for p in clips if not p.is_file()]
    if missing:
        raise ValueError(f"not files: {missing[:5]}")
    if not clips:
        raise ValueError("no clips: pass wav files or --data_dir")
    return clips[:max_clips] if max_clips > 0 else clips


def load_clip(path):
    """Audio file -> float32 16 kHz mono `[N]` (downmixed, soxr-resampled)."""
    x, sr = sf.read(str(path), dtype="float32", always_2d=True)
    x = x.mean(axis=1)
    if sr != SAMPLE_RATE:
        x = soxr.resample(x, sr, SAMPLE_RATE)
    return np.ascontiguousarray(x, dtype=np.float32)


def parse_codecs(spec):
    """'opus:9,amrwb:8.85' -> [('opus', 9.0), ('amrwb', 8.85)]."""
    out = []
    for item in filter(None, (s.strip() for s in spec.split(","))):
        name, sep, kbps = item.partition(":")
        if not sep:
            raise ValueError(f"codec {item!r} must be name:kbps")
        out.append((name, float(kbps)))
    return out


def evaluate(clips, names, codec_specs, processes):
    """Code and score every clip with every codec; return (summary rows, per-clip rows)."""
    total_samples = sum(c.size for c in clips)
    summary, per_clip = [], []
    for name, kbps in codec_specs:
        codec = get_baseline(name, kbps)
        start = time.time()
        decoded, payload, file_bytes = [], 0, 0
        for clip in clips:
            out, num_bytes = codec.encode_decode(clip)
            decoded.append(out)
            payload += num_bytes
            file_bytes += codec.last_stats["file_bytes"]
        scores = score_many(list(zip(clips, decoded)), processes=processes, names=names)
        row = {"codec": codec.name, "nominal_kbps": codec.bitrate_kbps,
               "measured_kbps": measured_kbps(payload, total_samples),
               "file_kbps": measured_kbps(file_bytes, total_samples)}
        for metric in METRICS:
            row[metric] = float(np.nanmean([s[metric] for s in scores]))
        row["clips"] = len(clips)
        row["nan_pesq_clips"] = sum(np.isnan(s["pesq_wb"]) for s in scores)
        row["seconds"] = time.time() - start
        summary.append(row)
        for clip_name, s in zip(names, scores):
            per_clip.append({"codec": codec.name, "nominal_kbps": codec.bitrate_kbps,
                             "clip": clip_name, **s})
        logging.info("%s %.2f kbps done in %.1f s", codec.name, codec.bitrate_kbps,
                     row["seconds"])
    return summary, per_clip


def markdown_table(rows):
    """The summary as a Markdown table."""
    lines = ["| codec | nominal kbps | measured kbps | file kbps | PESQ-WB | PESQ-NB | STOI | "
             "SI-SDR (dB) |", "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['codec']} | {r['nominal_kbps']:.2f} | {r['measured_kbps']:.2f} | "
                     f"{r['file_kbps']:.2f} | {r['pesq_wb']:.3f} | {r['pesq_nb']:.3f} | "
                     f"{r['stoi']:.3f} | {r['si_sdr']:.2f} |")
    return "\n".join(lines)


def write_csv(path, rows, columns):
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(columns))
        writer.writeheader()
        writer.writerows(rows)


def main(argv):
    paths = find_clips(argv[1:], FLAGS.data_dir, FLAGS.max_clips)
    clips = [load_clip(p) for p in paths]
    names = [str(p) for p in paths]
    seconds = sum(c.size for c in clips) / SAMPLE_RATE
    print(f"{len(clips)} clips, {seconds / 60:.2f} minutes of audio")
    summary, per_clip = evaluate(clips, names, parse_codecs(FLAGS.codecs), FLAGS.processes)
    print(markdown_table(summary))
    write_csv(FLAGS.out, summary, COLUMNS)
    if FLAGS.per_clip_out:
        write_csv(FLAGS.per_clip_out, per_clip,
                  ("codec", "nominal_kbps", "clip", *METRICS, "delay_samples", "num_samples"))
    print(f"wrote {FLAGS.out}")


if __name__ == "__main__":
    app.run(main)
