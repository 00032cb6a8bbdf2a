#!/usr/bin/env python3
"""The decoder postfilter's settings at each operating point: a study (issue 14).

The postfilter (`lpc.postfilter.Postfilter`) is decoder-only, so its settings cost no bits and
leave the `.nac` bytes alone. Each clip is compressed once per operating point, then decoded
with each setting; PESQ-WB / STOI / SI-SDR are averaged per operating point. The first row is
the decoder's current default per point, the second the postfilter off.

Usage: python scripts/postfilter_study.py [--split val] [--max_clips 24] [--model path]
         [--settings "0.7:0.85:0.25,0.7:0.85:0.15:0.6"]
           (gamma_num:gamma_den:pitch_gain[:pitch_threshold[:tilt]] per setting)
Results: docs/DESIGN.md "Postfilter".
"""

from __future__ import annotations

import csv
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))   # this checkout's code

import numpy as np  # noqa: E402
from absl import app, flags  # noqa: E402

import constants as C  # noqa: E402

flags.DEFINE_string("split", "val", "which split's clips")
flags.DEFINE_integer("max_clips", 24, "clips, spread over the split's voices")
flags.DEFINE_string("data_dir", "data/many", "demo-corpus directory")
flags.DEFINE_string("model", None, "model.keras (default: the shipped model)")
flags.DEFINE_string("settings", "0.7:0.85:0.15,0.7:0.85:0.35,0.75:0.9:0.25,0.65:0.8:0.25,0.8:0.9:0.15,0.7:0.85:0.25:0.6",
                    "gamma_num:gamma_den:pitch_gain[:pitch_threshold[:tilt]] per setting")
flags.DEFINE_integer("seed", 1234, "split seed (as scripts/bitrate_scaling.py)")
flags.DEFINE_string("csv", None, "also write per-clip rows here")
FLAGS = flags.FLAGS


def parse_settings(text: str) -> list[dict]:
    """"g1:g2:p[:t],..." -> Postfilter keyword dicts (a clear error for a malformed entry)."""
    out = []
    for item in (s.strip() for s in text.split(",")):
        if not item:
            continue
        parts = item.split(":")
        if len(parts) not in (3, 4, 5):
            raise ValueError(f"setting {item!r}: expected gamma_num:gamma_den:pitch_gain[:pitch_threshold[:tilt]]")
        try:
            vals = [float(p) for p in parts]
        except ValueError:
            raise ValueError(f"setting {item!r}: every field must be a number") from None
        kw = dict(gamma_num=vals[0], gamma_den=vals[1], pitch_gain=vals[2])
        if len(vals) >= 4:
            kw["pitch_threshold"] = vals[3]
        if len(vals) == 5:
            kw["tilt"] = vals[4]
        out.append(kw)
    return out


def main(argv):
    del argv
    import cq_codec
    from cq_codec.data import corpora, splits
    from cq_codec.evaluation import studies
    from cq_codec.evaluation.metrics import score_many
    from lpc.postfilter import Postfilter
    settings = parse_settings(FLAGS.settings)
    for kw in settings:
        Postfilter(**kw)                    # validates before any coding work
    parts = splits.split_utterances(corpora.discover(FLAGS.data_dir, "demo"), seed=FLAGS.seed)
    clips = studies.load_clips(studies.select_clips(parts[FLAGS.split], FLAGS.max_clips))
    codec = cq_codec.load(FLAGS.model)
    points = range(1, codec.num_modules + 1)
    data = {k: [codec.compress(x, C.SAMPLE_RATE, num_modules=k) for _, x in clips] for k in points}
    print(f"{len(clips)} {FLAGS.split} clips; PESQ-WB / STOI / SI-SDR at {', '.join(map(str, points))} modules")
    rows = []
    for label, kw in [("default", True), ("off", False)] + [(":".join(f"{v:g}" for v in s.values()), s) for s in settings]:
        res = []
        for k in points:
            pairs = []
            for (_, x), d in zip(clips, data[k]):
                codec.postfilter = Postfilter(**kw) if isinstance(kw, dict) else kw   # fresh state per clip
                pairs.append((x, codec.decompress(d)[0][: len(x)]))
            s = score_many(pairs, processes=2)
            for (name, _), r in zip(clips, s):
                rows.append({"setting": label, "modules": k, "clip": name,
                             **{m: r[m] for m in ("pesq_wb", "stoi", "si_sdr")}})
            res.append([np.mean([r[m] for r in s]) for m in ("pesq_wb", "stoi", "si_sdr")])
        res = np.array(res)
        print(f"{label:24s} PESQ-WB " + " / ".join(f"{v:.3f}" for v in res[:, 0])
              + "  STOI " + " / ".join(f"{v:.3f}" for v in res[:, 1])
              + "  SI-SDR " + " / ".join(f"{v:.2f}" for v in res[:, 2]), flush=True)
    codec.postfilter = True
    if FLAGS.csv:
        os.makedirs(os.path.dirname(os.path.abspath(FLAGS.csv)), exist_ok=True)
        with open(FLAGS.csv, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(rows[0]))
            w.writeheader()
            w.writerows(rows)


if __name__ == "__main__":
    app.run(main)
