#!/usr/bin/env bash
# Issue 14 lever 1: the loss A/B. One module of the default architecture, the same schedule and
# rate targets, trained on the many-voices corpus with three losses; then scored on the
# held-out voices (val split) at the measured bitrate. Usage:
#   bash scripts/ab_losses.sh [results_dir] [data_dir] [epochs]
set -euo pipefail
cd "$(dirname "$0")/.."
RESULTS=${1:-results/_work/ab_losses}
DATA=${2:-data/many}
EPOCHS=${3:-10}
PY=${PY:-.venv/bin/python}
common=(--training_mode 1 --results_dir "$RESULTS" --corpus demo --data_dir "$DATA" --cache_dir "${CACHE:-cache}"
  --num_modules 1 --channels 64 --bottleneck 16 --blocks_per_section 2 --kernel_and_dilation 9,9,2,1
  --the_strides 4 --block_type gln --front_end patch
  --target_entropy 2.0 --lsf_target_entropy 2.5 --rate_calibration
  --epoch_tanh "$EPOCHS" --tau_init 1.0 --tau_step 0.08 --pretrain_step 2
  --steps_per_epoch 300 --validation_steps 20 --batch_size 32 --lr_schedule cosine
  --learning_rate_tanh 1e-3 --eval_clips 0)
run() { local name=$1; shift; $PY main.py "${common[@]}" --name "$name" "$@" > "$RESULTS/$name.log" 2>&1; }
mkdir -p "$RESULTS"
run time_mel --coeff_term 60,10,0 &
sleep "${STAGGER:-90}"   # the first run builds the frame cache the others read
run nsr --coeff_term 20,10,0 --spectral_loss nsr --spectral_weight 100 &
run mrstft --coeff_term 20,10,0 --spectral_loss mrstft --spectral_weight 30 &
wait
