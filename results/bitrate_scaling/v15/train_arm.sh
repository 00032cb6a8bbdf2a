#!/usr/bin/env bash
# Session 13's arms: module 3 trained anew (mode 2, --first_follower 3) on the shipped default_v12,
# with stage F's loss and side streams from scripts/train_default.sh, plus the arm's flags.
# Usage (from the repository root): bash results/bitrate_scaling/v15/train_arm.sh <name> <epochs> <flags...>
# e.g. ... m3s2b16 24 --the_strides 4,4,2 --module_channels 64,64,32 --module_bottleneck 16,16,16 --target_entropy 2.0,1.85,0.8
set -euo pipefail
name=$1; epochs=$2; shift 2
RESULTS=${RESULTS:-results/_work/arms}
.venv/bin/python main.py --training_mode 2 --results_dir "$RESULTS" --corpus demo --data_dir data/many \
  --num_modules 3 --channels 64 --bottleneck 16 --blocks_per_section 2 --kernel_and_dilation 9,9,2,1 \
  --block_type gln --front_end patch --spectral_loss nsr_mel --spectral_weight 250 \
  --lsf_target_entropy 2.5 --rate_calibration --epoch_tanh 24 --tau_init 1.0 --tau_step 0.08 --pretrain_step 2 \
  --follower_pretrain_step 2 --steps_per_epoch 300 --validation_steps 20 --batch_size 32 --lr_schedule cosine \
  --learning_rate_tanh 1e-3 --learning_rate_followers 1e-3 --learning_rate_finetune 2e-4 --eval_clips 0 \
  --gain_subframes 4 --pitch_prediction --ltp_threshold 0.4 --ltp_hold 0.8 --ltp_shaped_loss \
  --spectral_high_weight 1,1,0.1 --coeff_term 20,0,0 \
  --base_model_id cq_codec/pretrained/default.keras --name "$name" --first_follower 3 --epoch_followers "$epochs" "$@"
