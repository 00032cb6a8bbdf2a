#!/usr/bin/env bash
# Re-trains the default model (cq_codec/pretrained/default.keras, default_v12) from scratch on
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
#      with it (--training_mode 5 on the same experiment);
#   C. default_v10: v9 restored, 8 epochs of joint fine-tuning with gain-shape coding
#      (--gain_subframes 4: 4 coded gains per frame; docs/DESIGN.md "Codec structure");
#   D. open-loop pitch prediction added (scripts/add_ltp.py, threshold 0.4, hold 0.8) and the
#      entropy tables refitted: default_v10_ltp (the default until v11);
#   E. default_v11: D restored, modules 2 and 3 jointly fine-tuned 8 epochs (module 1 and the LSF
#      quantizer kept: --finetune_from 2) with pitch prediction in training, the loss through the
#      pitch synthesis filter, and 4-8 kHz weighted 0.1 in the 3-module output's nsr_mel term
#      (--spectral_high_weight 1,1,0.1), so module 3 spends its bits at 1-4 kHz (docs/DESIGN.md
#      "Where module 3's bits go"): default_v11 (the default until v12);
#   F. default_v12: 8 more epochs of E's fine-tuning without the multi-scale mel term
#      (--coeff_term 20,0,0: time RMSE 20, mel 0, sparsity 0; the time term and the nsr_mel term
#      stay), which lifts the 3-module point (docs/DESIGN.md "Without the multi-scale mel term"):
#      the model installed.
# Measured here: A 66 min, B 21 min, C 9 min, D 1 min on the 2 cores while other jobs shared them;
# E 6 min (5 of training) alone; F 11 min (its training 648 s beside the test suite).
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
[ "${STAGES:-AB}" = A ] && exit 0   # scripts/train_nsr_v8.sh: default_v8 only
v9=(--base_model_id "$NAME" --name default_v9 --results_dir "$RESULTS" --corpus demo --data_dir "$DATA"
  --num_modules 3 --channels 64 --bottleneck 16 --blocks_per_section 2 --kernel_and_dilation 9,9,2,1
  --the_strides 4 --block_type gln --front_end patch
  --coeff_term 20,10,0 --spectral_loss nsr_mel --spectral_weight 250
  --target_entropy 2.0,1.85,2.1 --lsf_target_entropy 2.5 --rate_calibration
  --epoch_tanh 24 --epoch_followers 10 --epoch_finetune 3 --tau_init 1.0 --tau_step 0.08 --pretrain_step 2
  --follower_pretrain_step 2 --steps_per_epoch 300 --validation_steps 20 --batch_size 32 --lr_schedule cosine
  --learning_rate_tanh 1e-3 --learning_rate_followers 1e-3 --learning_rate_finetune 2e-4 --eval_clips 20)
.venv/bin/python main.py --training_mode 2 "${v9[@]}"   # the followers, on v8 restored
.venv/bin/python main.py --training_mode 5 "${v9[@]}"   # joint fine-tuning
# C: gain-shape coding, fine-tuned into v9 (the v9 flags; later flags override earlier ones)
.venv/bin/python main.py --training_mode 5 "${v9[@]}" --base_model_id default_v9 --name default_v10 \
  --epoch_finetune 8 --gain_subframes 4
# D: pitch prediction + tables
.venv/bin/python scripts/add_ltp.py --model "$RESULTS/default_v10" --out "$RESULTS/default_v10_ltp" \
  --threshold 0.4 --hold 0.8 --data_dir "$DATA"
# E: modules 2-3 fine-tuned on the pitch residual, 4-8 kHz weighted less at the top operating point
.venv/bin/python main.py --training_mode 5 "${v9[@]}" --base_model_id "$RESULTS/default_v10_ltp/model.keras" \
  --name default_v11 --epoch_finetune 8 --gain_subframes 4 --pitch_prediction --ltp_threshold 0.4 --ltp_hold 0.8 \
  --ltp_shaped_loss --spectral_high_weight 1,1,0.1 --finetune_from 2
# F: 8 more epochs of E without the multi-scale mel term (--coeff_term 20,0,0: time, mel, sparsity)
.venv/bin/python main.py --training_mode 5 "${v9[@]}" --base_model_id "$RESULTS/default_v11/model.keras" \
  --name default_v12 --epoch_finetune 8 --gain_subframes 4 --pitch_prediction --ltp_threshold 0.4 --ltp_hold 0.8 \
  --ltp_shaped_loss --spectral_high_weight 1,1,0.1 --finetune_from 2 --coeff_term 20,0,0
if [ "${INSTALL:-1}" = 1 ]; then   # INSTALL=0: train and evaluate only
  mkdir -p cq_codec/pretrained
  cp "$RESULTS/default_v12/model.keras" cq_codec/pretrained/default.keras
  echo "installed cq_codec/pretrained/default.keras"
fi
