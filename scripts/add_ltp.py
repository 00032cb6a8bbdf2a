"""Give a trained CQ model open-loop long-term (pitch) prediction (lpc/ltp.py) and refit its
entropy tables (the pitch codes become a side stream of the `.nac` payload):

    python scripts/add_ltp.py --model results/_work/default_v9 --out results/_work/v9_ltp \
        [--gain_levels 8 --gain_step 0.125 --threshold 0.3 --hold 0] [--data_dir data/many]

The cascade's weights are kept as they are: at inference it codes the pitch residual instead of
the LPC residual, and the decoder runs the pitch synthesis filter. The new folder holds
model.keras and loads like any results folder (`scripts/bitrate_scaling.py --models ...`).
"""

from __future__ import annotations

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app, flags, logging  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_string("model", None, "trained CQ model: results folder or .keras file", required=True)
flags.DEFINE_string("out", None, "results folder to write model.keras into", required=True)
flags.DEFINE_integer("gain_levels", 8, "pitch gain levels (index k: b = k * gain_step; 0 = off)")
flags.DEFINE_float("gain_step", 0.125, "pitch gain grid spacing")
flags.DEFINE_float("threshold", 0.3, "normalised correlation below which a sub-frame is not predicted")
flags.DEFINE_float("hold", 0.0, "keep the previous lag while it scores >= hold x the best (0: off)")
flags.DEFINE_string("corpus", "demo", "corpus the tables are fitted on (its train split)")
flags.DEFINE_string("data_dir", "data/many", "corpus folder")
flags.DEFINE_integer("seed", 1234, "seed of the split and of the table-fitting order")


def main(argv):
    del argv
    from cq_codec import api
    from cq_codec.data import corpora, splits
    from cq_codec.models.cq import CQCodec, with_ltp
    from cq_codec.training import modes
    logging.set_verbosity(logging.INFO)
    path = os.path.join(FLAGS.model, "model.keras") if os.path.isdir(FLAGS.model) else FLAGS.model
    model = api.load_model(path)
    if not isinstance(model, CQCodec):
        raise SystemExit(f"add_ltp: {path} is not a CQ model")
    model = with_ltp(model, FLAGS.gain_levels, FLAGS.gain_step, FLAGS.threshold, FLAGS.hold)
    parts = splits.split_utterances(corpora.discover(FLAGS.data_dir, FLAGS.corpus), seed=FLAGS.seed)
    modes.fit_tables(model, parts["train"], FLAGS.seed)
    os.makedirs(FLAGS.out, exist_ok=True)
    model.save(os.path.join(FLAGS.out, "model.keras"))
    logging.info("wrote %s: bits per frame %s", os.path.join(FLAGS.out, "model.keras"),
                 [round(b, 1) for b in model.entropy_tables["bits_per_frame"]])


if __name__ == "__main__":
    app.run(main)
