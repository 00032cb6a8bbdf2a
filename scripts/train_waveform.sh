#!/usr/bin/env bash
# Trains the shipped waveform codec (cq_codec/pretrained/waveform_rvq.keras) on the demo corpus's
# training split, then installs it. Resumable: re-running continues after the last finished
# epoch (checkpoints/ in the results folder). Usage:
#   [INSTALL=0] [PYTHON=.venv/bin/python] [DATA=data/demo] bash scripts/train_waveform.sh [results_dir]
#
# Sized for a shared 2-core CPU and about an hour (docs/DESIGN.md "Waveform codec"): patch front
# end (4 samples per step, no layer at 16 kHz), strides 4,2,4,4 = hop 128 (125 latent frames/s),
# 32..128 channels, two causal bottleneck residual units per stage, 64-dim latents coded by 12 RVQ
# codebooks of 256 (1 kbps each before entropy coding; quantizer dropout: one model, 1..12
# codebooks), multi-resolution STFT + commitment loss, 0.5 s segments, batch 12, 11 epochs of 200
# steps with cosine learning-rate decay. --adversarial is off (it would double the cost).
# One TensorFlow thread per pool: on 2 cores shared with other training runs, more threads spin
# and slow every process down (measured: a first attempt with the default pools made < 50 steps
# in 14 minutes at a load average of 20).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-.venv/bin/python}
RESULTS=${1:-results}
DATA=${DATA:-data/demo}
NAME=waveform_rvq
export TF_NUM_INTRAOP_THREADS=${TF_NUM_INTRAOP_THREADS:-1} TF_NUM_INTEROP_THREADS=${TF_NUM_INTEROP_THREADS:-1}
"$PYTHON" main.py --model_type waveform --training_mode 1 --name "$NAME" --results_dir "$RESULTS" \
  --corpus demo --data_dir "$DATA" \
  --wave_strides 4,2,4,4 --wave_patch --wave_channels 16 --wave_latent_dim 64 --wave_units 2 \
  --block_type bottleneck --num_stages 12 --codebook_size 256 --quantizer_dropout 0.5 \
  --wave_segment 0.5 --batch_size 12 --steps_per_epoch 200 --epoch_tanh 11 --pretrain_step 0 \
  --learning_rate_tanh 5e-4 --lr_schedule cosine --validation_steps 20 --eval_clips 10
if [ "${INSTALL:-1}" = 1 ]; then   # INSTALL=0: train and evaluate only
  mkdir -p cq_codec/pretrained
  cp "$RESULTS/$NAME/model.keras" cq_codec/pretrained/waveform_rvq.keras
  echo "installed cq_codec/pretrained/waveform_rvq.keras"
fi
