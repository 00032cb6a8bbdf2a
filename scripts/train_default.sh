#!/usr/bin/env bash
# Re-trains the default model (cq_codec/pretrained/default.keras) from scratch on the demo
# corpus's training split, then installs it. Resumable: re-running continues from the last
# finished epoch. Usage: bash scripts/train_default.sh [results_dir]
set -euo pipefail
cd "$(dirname "$0")/.."
RESULTS=${1:-results/_work}
NAME=default_v2
.venv/bin/python main.py --training_mode 4 --name "$NAME" --results_dir "$RESULTS" \
  --corpus demo --data_dir data/demo \
  --num_modules 3 --channels 64 --bottleneck 16 --num_resnets 2 --the_strides 4 --block_type gln \
  --target_entropy 1.75,1.65,1.9 --lsf_target_entropy 2.5 \
  --epoch_tanh 7 --epoch_greedy_followers 4 --epoch_finetune 1 --tau_init 1.0 --tau_step 0.08 --pretrain_step 1 \
  --steps_per_epoch 300 --validation_steps 20 --batch_size 32 \
  --learning_rate_tanh 1e-3 --learning_rate_greedy_followers 1e-3 --learning_rate_finetune 2e-4 \
  --eval_clips 20
mkdir -p cq_codec/pretrained
cp "$RESULTS/$NAME/model.keras" cq_codec/pretrained/default.keras
echo "installed cq_codec/pretrained/default.keras"
