#!/usr/bin/env bash
# Re-trains the default model (cq_codec/pretrained/default.keras, default_v5) from scratch on
# the demo corpus's training split, then installs it. Resumable: re-running continues from the last finished epoch.
# Usage: [INSTALL=0] bash scripts/train_default.sh [results_dir]
#
# Architecture chosen for quality per CPU-second (scripts/benchmark_training.py,
# scripts/benchmark_codec.py, docs/DESIGN.md "Default model"): 3 modules x 64-channel gated
# blocks, two per section, stride 4, patch front end (every layer at the code rate); per-stage
# cosine learning-rate decay; joint fine-tuning with the loss over every prefix of the cascade
# so each operating point keeps its rate; the rate controller calibrated on the validation
# split. scripts/train_nsr_v8.sh is the many-voices / spectral-loss candidate that did not
# beat it at every operating point (docs/DESIGN.md "Where the error goes").
set -euo pipefail
cd "$(dirname "$0")/.."
RESULTS=${1:-results/_work}
NAME=default_v5
DATA=data/demo
.venv/bin/python main.py --training_mode 4 --name "$NAME" --results_dir "$RESULTS" \
  --corpus demo --data_dir "$DATA" \
  --num_modules 3 --channels 64 --bottleneck 16 --blocks_per_section 2 --kernel_and_dilation 9,9,2,1 \
  --the_strides 4 --block_type gln --front_end patch \
  --target_entropy 2.0,1.85,2.1 --lsf_target_entropy 2.5 --rate_calibration \
  --epoch_tanh 40 --epoch_followers 24 --epoch_finetune 6 --tau_init 1.0 --tau_step 0.08 --pretrain_step 2 --follower_pretrain_step 2 \
  --steps_per_epoch 300 --validation_steps 20 --batch_size 32 --lr_schedule cosine \
  --learning_rate_tanh 1e-3 --learning_rate_followers 1e-3 --learning_rate_finetune 2e-4 \
  --eval_clips 20
if [ "${INSTALL:-1}" = 1 ]; then   # INSTALL=0: train and evaluate only
  mkdir -p cq_codec/pretrained
  cp "$RESULTS/$NAME/model.keras" cq_codec/pretrained/default.keras
  echo "installed cq_codec/pretrained/default.keras"
fi
