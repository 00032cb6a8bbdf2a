#!/usr/bin/env bash
# Re-trains the default model (cq_codec/pretrained/default.keras, default_v9) from scratch on
# the demo corpus with many voices (data/many: the demo packages plus the many-speaker Debian
# packages of cq_codec/data/voices.py, 98 training voices in 25 languages; built here if
# missing), then installs it. Resumable: re-running continues from the last finished epoch.
# Usage: [INSTALL=0] bash scripts/train_default.sh [results_dir]
#
# Architecture (quality per CPU-second; docs/DESIGN.md "Default model"): 3 modules x 64-channel
# gated blocks, two per section, stride 4, patch front end; per-stage cosine learning-rate
# decay; joint fine-tuning with the loss over every prefix of the cascade; the rate controller
# calibrated on the validation split. Loss (docs/DESIGN.md "Where the error goes"):
#   A. default_v8: 20 x time + 10 x log-mel + 100 x per-bin noise-to-signal (nsr), 24 + 14 + 14 + 4
#      epochs (its module 1 is the one shipped);
#   B. default_v9: v8 restored (--training_mode 2 --base_model_id default_v8), the followers
#      retrained 10 + 10 epochs with the mel-band noise-to-signal loss (nsr_mel, weight 250),
#      which stops them spending their bits at 4-8 kHz, then 3 epochs of joint fine-tuning
#      with it (--training_mode 5 on the same experiment).
# Measured here: A 66 min, B 21 min on the 2 cores while other jobs shared them.
set -euo pipefail
cd /work/wt/run_gain; export PYTHONPATH=$PWD
RESULTS=${1:-results/_work}
NAME=gain_v8
DATA=${DATA:-data/many}
if [ ! -f "$DATA/manifest.json" ]; then
  reuse=(); [ -f data/demo/manifest.json ] && reuse=(--reuse data/demo)
  /work/main/.venv/bin/python scripts/build_demo_corpus.py --out "$DATA" --voices many "${reuse[@]}"
fi
/work/main/.venv/bin/python main.py --training_mode 4 --name "$NAME" --results_dir "$RESULTS" \
  --corpus demo --data_dir "$DATA" --cache_dir /work/cache --gain_subframes 4 \
  --num_modules 3 --channels 64 --bottleneck 16 --blocks_per_section 2 --kernel_and_dilation 9,9,2,1 \
  --the_strides 4 --block_type gln --front_end patch \
  --coeff_term 20,10,0 --spectral_loss nsr --spectral_weight 100 \
  --target_entropy 2.0,1.85,2.1 --lsf_target_entropy 2.5 --rate_calibration \
  --epoch_tanh 24 --epoch_followers 14 --epoch_finetune 4 --tau_init 1.0 --tau_step 0.08 --pretrain_step 2 --follower_pretrain_step 2 \
  --steps_per_epoch 300 --validation_steps 20 --batch_size 32 --lr_schedule cosine \
  --learning_rate_tanh 1e-3 --learning_rate_followers 1e-3 --learning_rate_finetune 2e-4 \
  --eval_clips 20
[ "${STAGES:-AB}" = A ] && exit 0   # scripts/train_nsr_v8.sh: default_v8 only
v9=(--base_model_id "$NAME" --name gain_v10 --results_dir "$RESULTS" --corpus demo --data_dir "$DATA" --cache_dir /work/cache --gain_subframes 4
  --num_modules 3 --channels 64 --bottleneck 16 --blocks_per_section 2 --kernel_and_dilation 9,9,2,1
  --the_strides 4 --block_type gln --front_end patch
  --coeff_term 20,10,0 --spectral_loss nsr_mel --spectral_weight 250
  --target_entropy 2.0,1.85,2.1 --lsf_target_entropy 2.5 --rate_calibration
  --epoch_tanh 24 --epoch_followers 10 --epoch_finetune 3 --tau_init 1.0 --tau_step 0.08 --pretrain_step 2
  --follower_pretrain_step 2 --steps_per_epoch 300 --validation_steps 20 --batch_size 32 --lr_schedule cosine
  --learning_rate_tanh 1e-3 --learning_rate_followers 1e-3 --learning_rate_finetune 2e-4 --eval_clips 20)
/work/main/.venv/bin/python main.py --training_mode 2 "${v9[@]}"   # the followers, on v8 restored
/work/main/.venv/bin/python main.py --training_mode 5 "${v9[@]}"   # joint fine-tuning
if [ "${INSTALL:-1}" = 1 ]; then   # INSTALL=0: train and evaluate only
  mkdir -p cq_codec/pretrained
  cp "$RESULTS/default_v9/model.keras" cq_codec/pretrained/default.keras
  echo "installed cq_codec/pretrained/default.keras"
fi
