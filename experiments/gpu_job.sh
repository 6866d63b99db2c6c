#!/usr/bin/env bash
# The GPU job in one device call (see experiments/gpu_job.py for what it does and in which order):
#   bash experiments/gpu_job.sh $OUT [SECONDS] [extra gpu_job.py options]
# Carry .gpu (python experiments/make_gpu_bundle.py ../shared/data/acdc .gpu/acdc), and .whl (the
# MONAI wheel: the device's python has no MONAI, which the end-of-call evaluation uses) only where
# it fits: tree + .gpu + .whl <= 64 MiB. With four shipped models it does not (13.2 + 49.4 + 1.6
# MiB, 2026-12-07): the evaluation then fails in the log, and the models come back all the same,
# to be scored on the CPU machine as every candidate is (docs/RESULTS.md). Wheel made with
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 -d .whl monai==1.6.1
# The first device call (2026-11-27, docs/RESULTS.md) ran
#   bash experiments/gpu_job.sh $OUT 430 --bench-seconds 0 --eval-reserve 55 --proposed-share 0.85
# The shipped default's members trained further instead, with members trained apart in the time left
# (docs/decisions.md, rules 14 and 15):
#   bash experiments/gpu_job.sh $OUT 540 --plan continue
# The cross-validation folds' models (rule 27's, docs/RESULTS.md; cp /work/cv/splits.json .gpu/ first):
#   bash experiments/gpu_job.sh $OUT 540 --plan folds --splits .gpu/splits.json --bench-seconds 0
# (no throughput check: the protocol's own batch, as the folds trained on the CPU)
# The distilled student of issue 35 trained for the whole call (its CPU run had 59 epochs; judged by rule 28, docs/RESULTS.md):
#   bash experiments/gpu_job.sh $OUT 540 --plan student --bench-seconds 0
set -u
OUT=${1:?usage: gpu_job.sh OUT [SECONDS]}; SECONDS_TOTAL=${2:-540}; shift $(( $# >= 2 ? 2 : 1 ))
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
if ! python3 -c "import monai" 2>/dev/null && ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl \
    && export PYTHONPATH="$PYTHONPATH:/tmp/site"
fi
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'no cuda')"
mkdir -p "$OUT"
python3 experiments/gpu_job.py --data "${BUNDLE:-.gpu/acdc}" --out "$OUT" --seconds "$SECONDS_TOTAL" "$@" 2>&1 | tee "$OUT/job.log"
