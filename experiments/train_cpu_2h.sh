#!/usr/bin/env bash
# The best models a 2-core CPU trains in about two hours (issue 11, item 4): the shipped proposed
# model and seg_ss, continued with bf16 autocast where the CPU computes bf16 natively (AMX,
# AVX512-BF16; float32 elsewhere, where emulated bf16 trains at half the speed: AMP=bf16|off
# chooses) under wall-clock budgets, with heart-centred validation and Ref-stage inputs
# (cmrseg.models.centred).
#
#   [INIT=MODEL] [EXTRA_SETS="key=value ..."] bash experiments/train_cpu_2h.sh DATA OUT [SEG_MIN] [REF_MIN] [SS_MIN]
#
# DATA: train/ + val/ (../shared/data/acdc). OUT gets seg_as/, seg_as+ref_as_mt/ and seg_ss/.
# Each stage trains for as many epochs as its budget allows (time_budget_s, at most the cap
# given with --epochs), learning-rate schedule fitted to them; SS_MIN=0 skips seg_ss. EXTRA_SETS:
# further config overrides for every run, after the defaults here (e.g. "dice_weight=0.5 lr=3e-4";
# "fixed_shape=true compile=true" trained seg_as 10-18 % faster here after a compile of about a
# minute, docs/RESULTS.md "Training throughput"; the runs documented so far trained without).
# INIT: the proposed model to continue, a model or run folder (default: the shipped one).
set -euo pipefail
DATA=$1; OUT=$2; SEG_MIN=${3:-45}; REF_MIN=${4:-35}; SS_MIN=${5:-30}
CMRSEG=${CMRSEG:-cmrseg}
PY=${PYTHON:-python3}
WEIGHTS=$($PY -c "from cmrseg.inference.predictor import WEIGHTS_DIR; print(WEIGHTS_DIR)")
INIT=${INIT:-$WEIGHTS/seg_as+ref_as_mt}
mkdir -p "$OUT"
AMP=${AMP:-$($PY -c "from cmrseg.device import cpu_has_fast_bf16; print('bf16' if cpu_has_fast_bf16() else 'off')")}
common=(--protocol fast --data "$DATA" --set progress=false --set amp="$AMP" --set lr=5e-4 --set warmup_epochs=1)
for kv in ${EXTRA_SETS:-}; do common+=(--set "$kv"); done
$CMRSEG train --model seg_as "${common[@]}" --out "$OUT/seg_as" --epochs 120 \
    --set "init_weights=$INIT" --set "snapshot_fractions=[0.1, 0.3]" \
    --set "time_budget_s=$((SEG_MIN * 60))"
$CMRSEG train --model seg_as+ref_as_mt "${common[@]}" --out "$OUT/seg_as+ref_as_mt" --epochs 120 \
    --set "init_weights=$INIT" --set "seg_stage_run=$OUT/seg_as" \
    --set "time_budget_s=$((REF_MIN * 60))"
[ "$SS_MIN" -gt 0 ] || exit 0
$CMRSEG train --model seg_ss "${common[@]}" --out "$OUT/seg_ss" --epochs 120 \
    --set "init_weights=$WEIGHTS/seg_ss" --set "time_budget_s=$((SS_MIN * 60))"
