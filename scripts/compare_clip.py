"""One clip, side by side: every operating point of a CQ model next to Opus and AMR-WB at the
same measured bitrate (Opus at the CQ file's kbps, AMR-WB at its nearest mode).

    python scripts/compare_clip.py [--wav clip.wav] [--model model.keras] [--out results/demo/compare]

Without --wav, the first clip of the demo corpus's test split (speakers and languages never heard
in training) is used, cut to --max_seconds. Without --model, the shipped default model. Prints a
Markdown table (kbps = compressed bytes * 8 / seconds; PESQ-WB, STOI, SI-SDR against the clip)
and writes the reference and every decoded version as wav files under --out.
"""

from __future__ import annotations

import argparse
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def default_clip(data_dir: str) -> str:
    from cq_codec.data import corpora, splits
    from cq_codec.evaluation.studies import select_clips
    parts = splits.split_utterances(corpora.discover(data_dir, "demo"))
    return select_clips(parts["test"], 1)[0].path


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--wav", help="speech clip (any rate / channels; resampled to 16 kHz mono)")
    p.add_argument("--model", help="a .keras model with entropy tables (default: the shipped model)")
    p.add_argument("--data_dir", default=os.path.join(ROOT, "data", "demo"))
    p.add_argument("--max_seconds", type=float, default=8.0)
    p.add_argument("--out", default=os.path.join(ROOT, "results", "demo", "compare"))
    args = p.parse_args()
    from cq_codec import api
    from cq_codec.data.audio import load_audio
    from cq_codec.evaluation.studies import compare_clip
    path = args.wav or default_clip(args.data_dir)
    wav = load_audio(path)[: int(args.max_seconds * 16000)]
    codec = api.load(args.model) if args.model else api.load()
    name = os.path.splitext(os.path.basename(path))[0]
    rows = compare_clip(codec, wav, name=name, out_dir=args.out)
    print(f"\n{path} ({len(wav) / 16000:.2f} s), model {codec.name}:\n")
    print("| codec | kbps (measured) | PESQ-WB | STOI | SI-SDR (dB) |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['codec']} | {r['kbps']:.2f} | {r['pesq_wb']:.2f} | {r['stoi']:.3f} | {r['si_sdr']:.1f} |")
    print(f"\ndecoded wavs: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
