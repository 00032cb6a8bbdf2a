#!/usr/bin/env bash
# Issue 14, session 10: module 3 alone retrained on top of default_v10 (modules 1-2, LSF, gain, LTP kept),
# pitch prediction + shaped loss in training, nsr_mel with 4-8 kHz weighted $HW.
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
NAME=$1; HW=$2; EP=${3:-10}; LR=${4:-5e-4}
/usr/bin/time -f "%e s" -o $R/$NAME.time $PY main.py --training_mode 2 "${v9[@]}" --base_model_id "$BASE" --name $NAME \
  --first_follower 3 --epoch_followers $EP --learning_rate_followers $LR --follower_pretrain_step 0 \
  --gain_subframes 4 --pitch_prediction --ltp_threshold 0.4 --ltp_hold 0.8 --ltp_shaped_loss \
  --spectral_high_weight $HW > $R/$NAME.log 2>&1
echo DONE $NAME
