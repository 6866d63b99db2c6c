#!/usr/bin/env bash
# Continue the `fast` protocol's CPU training of the proposed model (both stages) from a
# finished `cmrseg reproduce --protocol fast` folder: a second cosine cycle for the Seg stage
# (warm restart from its weights), then the Ref stage fine-tuned on the new Seg stage's outputs.
#
#   bash experiments/finetune_fast.sh DATA FASTRUN OUT [SEG_EPOCHS] [REF_EPOCHS]
#
# DATA: folder with train/ and val/ (../shared/data/acdc); FASTRUN: the reproduce folder
# (its runs/seg_as and runs/seg_as+ref_as_mt); OUT gets seg_as/ and seg_as+ref_as_mt/.
set -euo pipefail
DATA=$1; FASTRUN=$2; OUT=$3; SEG_EPOCHS=${4:-30}; REF_EPOCHS=${5:-15}
CMRSEG=${CMRSEG:-cmrseg}
common=(--protocol fast --data "$DATA" --set progress=false --set lr=5e-4 --set warmup_epochs=1)
$CMRSEG train --model seg_as "${common[@]}" --out "$OUT/seg_as" --epochs "$SEG_EPOCHS" \
    --set "init_weights=$FASTRUN/runs/seg_as" --set "snapshot_fractions=[0.1, 0.3]"
$CMRSEG train --model seg_as+ref_as_mt "${common[@]}" --out "$OUT/seg_as+ref_as_mt" --epochs "$REF_EPOCHS" \
    --set "init_weights=$FASTRUN/runs/seg_as+ref_as_mt" --set "stage1_run=$OUT/seg_as"
