#!/usr/bin/env bash
# default_v8 (results/default_v8/, NOT the shipped default: it beats default_v5 at ~9 kbps and
# loses at ~17 and ~25 kbps, docs/DESIGN.md "Where the error goes"). Trains from scratch on the
# demo corpus with many voices (data/many: the demo packages plus the many-speaker Debian packages
# of cq_codec/data/voices.py, 98 training voices in 25 languages; built here if missing), then
# scores it. Resumable: re-running continues from the last finished epoch.
# Usage: bash scripts/train_nsr_v8.sh [results_dir]   (about 66 minutes on the 2 cores, shared)
#
# Architecture chosen for quality per CPU-second (scripts/benchmark_training.py,
# scripts/benchmark_codec.py, docs/DESIGN.md "Default model"): 3 modules x 64-channel gated
# blocks, two per section, stride 4, patch front end (every layer at the code rate); per-stage
# cosine learning-rate decay; joint fine-tuning with the loss over every prefix of the cascade
# so each operating point keeps its rate; the rate controller calibrated on the validation
# split. Loss (issue 14, docs/DESIGN.md "Where the error goes"): 20 x time RMSE + 10 x log-mel
# + 100 x the per-bin noise-to-signal spectral loss, so the coding error follows the speech.
set -euo pipefail
cd "$(dirname "$0")/.."
RESULTS=${1:-results/_work}
NAME=default_v8
DATA=${DATA:-data/many}
if [ ! -f "$DATA/manifest.json" ]; then
  reuse=(); [ -f data/demo/manifest.json ] && reuse=(--reuse data/demo)
  .venv/bin/python scripts/build_demo_corpus.py --out "$DATA" --voices many "${reuse[@]}"
fi
.venv/bin/python main.py --training_mode 4 --name "$NAME" --results_dir "$RESULTS" \
  --corpus demo --data_dir "$DATA" \
  --num_modules 3 --channels 64 --bottleneck 16 --blocks_per_section 2 --kernel_and_dilation 9,9,2,1 \
  --the_strides 4 --block_type gln --front_end patch \
  --coeff_term 20,10,0 --spectral_loss nsr --spectral_weight 100 \
  --target_entropy 2.0,1.85,2.1 --lsf_target_entropy 2.5 --rate_calibration \
  --epoch_tanh 24 --epoch_followers 14 --epoch_finetune 4 --tau_init 1.0 --tau_step 0.08 --pretrain_step 2 --follower_pretrain_step 2 \
  --steps_per_epoch 300 --validation_steps 20 --batch_size 32 --lr_schedule cosine \
  --learning_rate_tanh 1e-3 --learning_rate_followers 1e-3 --learning_rate_finetune 2e-4 \
  --eval_clips 20
