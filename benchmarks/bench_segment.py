"""End-to-end ``cmrseg segment`` speed and peak memory: read, preprocess, both stages,
resample back, write the mask, per 10-slice stack, with the model ``cmrseg segment`` would use:
the default (the shipped ensemble), a shipped name, a run or ensemble folder, or several
(``--model A B``: their ensemble).

    python benchmarks/bench_segment.py DATA_DIR [--model NAME|RUN ...] [--tta on|off|fast] [--precision auto|fp32|bf16]
        [--device cpu] [--threads 2] [--n 10]

DATA_DIR holds h5 or NIfTI volumes (for example ../shared/data/acdc/val). Each volume's time
(reading to written mask) is scaled to 10 slices; the median is reported with the peak
resident memory of the process (ru_maxrss).
"""

import argparse
import json
import platform
import resource
import statistics
import tempfile
import time
from pathlib import Path

import torch

from cmrseg.data.io import read_volumes, write_mask
from cmrseg.data.io.common import is_h5, is_nifti
from cmrseg.device import cpu_description
from cmrseg.inference.ensemble import load_predictor
from cmrseg.inference.options import PRECISIONS, TTA_MODES, InferenceOptions


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("data")
    ap.add_argument("--model", nargs="+", help="as cmrseg segment --model (default: the default model)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--backend", default="auto")
    ap.add_argument("--n", type=int, default=10)
    ap.add_argument("--tta", default="auto", choices=TTA_MODES, help="as cmrseg segment --tta")
    ap.add_argument("--precision", default="auto", choices=PRECISIONS,
                    help="as cmrseg segment --precision (fp32: as on a CPU without native bf16)")
    ap.add_argument("--out")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    predictor = load_predictor(args.model, InferenceOptions(device=args.device, backend=args.backend,
                                                            precision=args.precision, tta=args.tta))
    files = sorted(p for p in Path(args.data).iterdir() if (is_h5(p) or is_nifti(p)) and "_gt" not in p.name)[: args.n]
    per10 = []
    with tempfile.TemporaryDirectory() as tmp:
        predictor.predict_volume(read_volumes(files[0])[0])  # warm-up
        for f in files:
            t0 = time.perf_counter()
            (vol,) = read_volumes(f)
            pred = predictor.predict_volume(vol)
            write_mask(pred.mask, vol, tmp)
            per10.append((time.perf_counter() - t0) * 10 / vol.num_slices)
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    res = {"model": predictor.name, "backend": predictor.meta.get("backend"), "postprocess": predictor.postprocess,
           "tta": predictor.options.tta, "precision": args.precision,
           "device": str(predictor.device),
           "threads": args.threads, "volumes": len(files), "median_s_per_10_slices": statistics.median(per10),
           "peak_rss_mb": peak_mb, "torch": torch.__version__, "machine": platform.platform(), "cpu": cpu_description(),
           "date": time.strftime("%Y-%m-%d")}
    print(json.dumps(res, indent=2))
    if args.out:
        Path(args.out).write_text(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
