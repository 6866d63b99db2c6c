#!/usr/bin/env bash
# Issue 11, item 1: does the soft-Dice term pull the measures? A training pair that differs only
# in `dice_weight` (0 = the paper's cross-entropy alone, 1 = the loss shipped at the time): both continue the
# shipped Seg stage for the same number of epochs with the same seed, data order and schedule,
# then bias_table.py measures their signed clinical errors on val (heart-centred, as shipped).
#
#   bash experiments/soft_dice_pair.sh DATA OUT [EPOCHS]
set -euo pipefail
DATA=$1; OUT=$2; EPOCHS=${3:-12}
CMRSEG=${CMRSEG:-cmrseg}
PY=${PYTHON:-python3}
WEIGHTS=$($PY -c "from cmrseg.inference.predictor import WEIGHTS_DIR; print(WEIGHTS_DIR)")
mkdir -p "$OUT"
$PY "$(dirname "$0")/seg_stage_weights.py" "$WEIGHTS/seg_as+ref_as_mt/weights.safetensors" "$OUT/shipped_seg.safetensors"
for dw in 0 1; do
    $CMRSEG train --model seg_as --protocol fast --data "$DATA" --out "$OUT/dice$dw" --epochs "$EPOCHS" \
        --set progress=false --set amp=bf16 --set lr=5e-4 --set warmup_epochs=1 --set val_every=100 \
        --set "init_weights=$OUT/shipped_seg.safetensors" --set "dice_weight=$dw"
done
$PY experiments/bias_table.py "$DATA/val" --models "$OUT/dice0" "$OUT/dice1" --centred-crop 128 \
    --out "$OUT/bias_table.md"
