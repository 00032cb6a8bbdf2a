"""The README's main job: demo corpus -> a short `--training_mode 4` run -> evaluation.

    python scripts/demo.py [--minutes 20] [--steps 150] [--name demo]

1. builds the demo corpus (Debian speech packages, see cq_codec/data/demo.py) if missing;
2. trains a small CQ codec with the whole greedy schedule (`main.py --training_mode 4`), on a
   capped slice of the training split so that it finishes in minutes on 2 CPU cores;
3. main.py scores the test clips (PESQ-WB, STOI, SI-SDR) and writes decoded audio;
4. prints the results table and where the files are;
5. runs scripts/compare_clip.py: the shipped default model on a held-out test clip at each of its
   operating points, next to Opus and AMR-WB at the same measured bitrates (decoded wavs written).
Re-running resumes: finished stages are skipped (checkpoints chain by themselves).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data_dir", default=os.path.join(ROOT, "data", "demo"))
    p.add_argument("--results_dir", default=os.path.join(ROOT, "results"))
    p.add_argument("--name", default="demo")
    p.add_argument("--minutes", type=float, default=20.0, help="training audio used (minutes)")
    p.add_argument("--steps", type=int, default=150, help="training steps per epoch")
    p.add_argument("--eval_clips", type=int, default=4)
    args = p.parse_args()

    sys.path.insert(0, ROOT)
    from cq_codec.data.demo import DemoCorpusError, build_demo_corpus
    try:
        build_demo_corpus(args.data_dir)
    except DemoCorpusError as exc:
        print(f"demo: {exc}", file=sys.stderr)
        return 1

    cmd = [sys.executable, os.path.join(ROOT, "main.py"), "--training_mode=4", f"--name={args.name}",
           f"--results_dir={args.results_dir}", f"--data_dir={args.data_dir}", "--corpus=demo",
           f"--max_train_minutes={args.minutes}", f"--steps_per_epoch={args.steps}", "--validation_steps=10",
           "--num_modules=2", "--channels=48", "--bottleneck=12", "--blocks_per_section=1", "--the_strides=4",
           "--epoch_tanh=3", "--epoch_followers=2", "--epoch_finetune=1", "--pretrain_step=1", "--follower_pretrain_step=1",
           "--target_entropy=2.0", f"--eval_clips={args.eval_clips}", "--batch_size=32",
           "--learning_rate_tanh=1e-3", "--learning_rate_followers=1e-3", "--learning_rate_finetune=2e-4"]
    print("demo: " + " ".join(cmd), flush=True)
    rc = subprocess.call(cmd, cwd=ROOT)
    if rc != 0:
        return rc
    exp = os.path.join(args.results_dir, args.name)
    summary = os.path.join(exp, "eval.md")
    if os.path.exists(summary):
        print(f"\nTest-split scores of the demo model (means over {args.eval_clips} clips; "
              f"entropy_kbps is the codes' zeroth-order entropy):\n")
        with open(summary, encoding="utf-8") as fh:
            print(fh.read())
    print(f"Results: {exp}/ (audio/, metrics.csv, plots/training.png, eval.csv, model.keras)")
    # The shipped default model on a held-out clip, next to Opus and AMR-WB at the same bitrates.
    print("\ndemo: the shipped default model (cq_codec/pretrained/default.keras) against Opus and AMR-WB "
          "on one test clip:", flush=True)
    return subprocess.call([sys.executable, os.path.join(ROOT, "scripts", "compare_clip.py"),
                            f"--data_dir={args.data_dir}", f"--out={os.path.join(exp, 'compare')}"], cwd=ROOT)


if __name__ == "__main__":
    sys.exit(main())
