#!/usr/bin/env bash
# Train and evaluate every Table 1 and Table 2 model with the paper protocol on one GPU, in
# one call, then pack the results for the trip back (experiments/pack_results.py).
#   experiments/acdc_paper_gpu.sh BUNDLE_DIR OUT_DIR [TRAIN_SECONDS] [START_DEADLINE_MIN] [JOBS]
# BUNDLE_DIR from experiments/make_gpu_bundle.py. Runs start in priority order (the proposed
# model's chain first) with JOBS processes sharing the GPU; none starts after the deadline,
# and training stops at TRAIN_SECONDS, after which the finished runs are evaluated.
# TABLES="" trains Table 1 only (default: Tables 1 and 2 and the Ref-input ablation). Runs
# resume from their checkpoints, so a second call on a still-warm machine with the same WORK
# continues them.
set -u
BUNDLE=$1; OUT=$2; TRAIN_S=${3:-420}; DEADLINE=${4:-4.5}; JOBS=${5:-4}
WORK=${WORK:-/tmp/repro}
PROTOCOL=${PROTOCOL:-paper}; DEVICE=${DEVICE:-cuda}; TABLES=${TABLES-"--ablations --ref-input-ablation"}
export PYTHONUNBUFFERED=1 OMP_NUM_THREADS=4
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'no cuda')"
common=(--data "$BUNDLE" --protocol "$PROTOCOL" $TABLES --device "$DEVICE" --out "$WORK" --set checkpoint_every=20 ${EXTRA:-})
start=$(date +%s)
timeout "$TRAIN_S" python3 -m cmrseg reproduce "${common[@]}" --jobs "$JOBS" --deadline-min "$DEADLINE" > "$OUT/train_console.log" 2>&1
echo "training phase: exit $? after $(( $(date +%s) - start )) s"
pkill -f "cmrseg train" 2>/dev/null; sleep 2
# evaluate every finished run (finished runs are not retrained; unfinished ones are skipped)
python3 -m cmrseg reproduce "${common[@]}" --jobs "$JOBS" --deadline-min 0 > "$OUT/eval_console.log" 2>&1
echo "evaluation phase: exit $? after $(( $(date +%s) - start )) s"
tail -n 60 "$OUT/eval_console.log"
python3 experiments/pack_results.py "$WORK" "$OUT" seg_as+ref_as_mt seg_ss seg_as det_seg
ls -la "$OUT"
