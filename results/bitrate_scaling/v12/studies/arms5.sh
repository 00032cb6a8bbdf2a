#!/usr/bin/env bash
# Issue 14 A/B, session 10: the nsr_mel loss with 4-8 kHz down-weighted (--spectral_high_weight),
# otherwise ltps_ft8's recipe (v10 + 8 epochs of joint fine-tuning, pitch prediction + shaped loss).
set -euo pipefail
cd /work/wt/quality
PY=/work/main/.venv/bin/python
export PYTHONPATH=$PWD TF_CPP_MIN_LOG_LEVEL=2
R=/work/runs
v9=(--results_dir "$R" --corpus demo --data_dir data/many
  --num_modules 3 --channels 64 --bottleneck 16 --blocks_per_section 2 --kernel_and_dilation 9,9,2,1
  --the_strides 4 --block_type gln --front_end patch
  --coeff_term 20,10,0 --spectral_loss nsr_mel --spectral_weight 250
  --target_entropy 2.0,1.85,2.1 --lsf_target_entropy 2.5 --rate_calibration
  --epoch_tanh 24 --epoch_followers 10 --epoch_finetune 3 --tau_init 1.0 --tau_step 0.08 --pretrain_step 2
  --follower_pretrain_step 2 --steps_per_epoch 300 --validation_steps 20 --batch_size 32 --lr_schedule cosine
  --learning_rate_tanh 1e-3 --learning_rate_followers 1e-3 --learning_rate_finetune 2e-4 --eval_clips 20)
BASE=$PWD/cq_codec/pretrained/default.keras
NAME=$1; HW=$2
/usr/bin/time -f "%e s" -o $R/$NAME.time $PY main.py --training_mode 5 "${v9[@]}" --base_model_id "$BASE" --name $NAME \
  --epoch_finetune 8 --gain_subframes 4 --pitch_prediction --ltp_threshold 0.4 --ltp_hold 0.8 --ltp_shaped_loss \
  --spectral_high_weight $HW ${EXTRA:-} > $R/$NAME.log 2>&1
echo DONE $NAME
