#!/usr/bin/env bash
# Does a larger batch with Adam's learning rate scaled by sqrt(batch factor) train as well?
# (issue 10: "bigger batches, learning rate scaled, accuracy checked"; the GPU job takes twice
# the batch when its throughput check finds it 1.8x faster, experiments/gpu_job.py.)
#
#   bash experiments/batch_scaling.sh DATA OUT [EPOCHS] [SEEDS]
#
# Trains the Seg stage (seg_as, `fast` protocol networks, bf16 autocast on the CPU) from scratch,
# for seeds 0..SEEDS-1 (default 2): at the protocol's batch for EPOCHS epochs (default: the
# protocol's 30); at twice it with lr x sqrt 2 for the same epochs (half the steps); and at
# twice it for twice the epochs (the same steps). Prints each run's best validation score (the
# trainer's selection score: mean of the base, mid and apex average Dice on the val stacks), its
# volume Dice and its training slices/s. A finished run folder is kept, not trained again.
set -euo pipefail
DATA=$1; OUT=$2; EPOCHS=${3:-30}; SEEDS=${4:-2}
PY=${PYTHON:-python3}
read -r B LR < <($PY -c "from cmrseg.training.config import load_config as l; c = l(protocol='fast'); print(c.batch_stacks, c.lr)")
mkdir -p "$OUT"
for seed in $(seq 0 $((SEEDS - 1))); do
  for variant in "1 $EPOCHS" "2 $EPOCHS" "2 $((2 * EPOCHS))"; do
    read -r factor epochs <<< "$variant"
    run="$OUT/seg_as_b$((B * factor))$([ "$epochs" = "$EPOCHS" ] || echo "_e$epochs")_seed$seed"
    if $PY -c "import sys; from cmrseg.training.run_folder import is_complete_run as c; sys.exit(0 if c(__import__('pathlib').Path('$run')) else 1)"; then
      continue
    fi
    lr=$($PY -c "print(f'{$LR * $factor ** 0.5:.6g}')")
    ${CMRSEG:-cmrseg} train --model seg_as --protocol fast --data "$DATA" --out "$run" --epochs "$epochs" \
      --set progress=false --set amp=bf16 --set seed="$seed" --set batch_stacks=$((B * factor)) --set lr="$lr" \
      --set "snapshot_fractions=[0.5]"
  done
done
$PY - "$OUT" "$DATA" <<'PY'
import csv, statistics, sys
from pathlib import Path

import yaml

stacks = len(list((Path(sys.argv[2]) / "train").glob("*.h5")))  # one stack per training file (ACDC h5 layout)
print("| run | batch (stacks) | lr | epochs | optimiser steps | best val score (epoch) | val volume Dice there | median training slices/s |")
print("|---|---|---|---|---|---|---|---|")
for run in sorted(Path(sys.argv[1]).glob("seg_as_b*_seed*")):
    c = yaml.safe_load((run / "config.yaml").read_text())
    rows = list(csv.DictReader(open(run / "log.csv")))
    best = max((r for r in rows if r.get("val_score")), key=lambda r: float(r["val_score"]))
    sps = statistics.median(float(r["slices_per_s"]) for r in rows[1:] or rows)
    steps = len(rows) * -(-stacks // int(c["batch_stacks"])) if stacks else "?"
    print(f"| {run.name} | {c.get('batch_stacks', '?')} | {c.get('lr', '?')} | {len(rows)} | {steps} | {float(best['val_score']):.4f} ({best['epoch']}) "
          f"| {float(best['val_volume']):.4f} | {sps:.0f} |")
PY
