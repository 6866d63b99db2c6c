"""``cmrseg segment`` on one synthetic cine as a user runs it: wall time end to end, where the
time goes, and the peak memory of the whole command (issue 12 speed, issue 13 memory).

    python benchmarks/bench_segment_cine.py [--format dicom|dicom_enhanced|dicom_slices|nifti]
        [--frames 20] [--slices 12] [--size 208] [--model NAME|RUN] [--tta auto|on|off|fast] [--workers 2]
        [--frames-per-forward auto|N] [--precision auto|fp32|bf16] [--backend auto|torch|onnx]
        [--save-probabilities] [--second-opinion auto|off] [--out FILE.json]

The cine is the phantom's anatomy (cmrseg.data.phantom) rendered at ``--size`` pixels,
``--frames`` frames and ``--slices`` slices, written as a DICOM series (``dicom``: one file per
image, as most scanners export it; ``dicom_enhanced``: one Enhanced MR multi-frame file;
``dicom_slices``: one series per slice position) or a 4D NIfTI. Reported: the command's wall time and peak resident
memory (the largest of the command and its reader processes, ru_maxrss of the children), and
the same steps timed in this process (discovery, reading, model, writing masks and pictures).
"""

import argparse
import json
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from cmrseg.device import cpu_description
from cmrseg.inference.options import BACKENDS, SECOND_OPINIONS, TTA_MODES


def make_cine(folder: Path, fmt: str, frames: int, slices: int, size: int, seed: int = 0) -> Path:
    from cmrseg.data.io.dicom import write_dicom_series
    from cmrseg.data.io.nifti import write_nifti_image
    from cmrseg.data.phantom import oblique_affine, random_params, render_volume

    rng = np.random.default_rng(seed)
    p = random_params(rng, (size, size))
    p.heart_slices = slices - 2
    affine = oblique_affine(p, rng)
    cine = np.stack([render_volume(p, 0.5 - 0.5 * np.cos(2 * np.pi * t / frames), rng, ss=1)[0] for t in range(frames)])
    if fmt.startswith("dicom"):
        layout = {"dicom": "classic", "dicom_enhanced": "enhanced", "dicom_slices": "series_per_slice"}[fmt]
        return write_dicom_series(cine, affine, folder / "sax_cine", description="SAX cine", layout=layout)
    return write_nifti_image(cine, affine, folder / "sax_cine_4d.nii.gz")


def in_process_steps(src: Path, model: str | None, out: Path, extras: tuple[str, ...] = (),
                     inference: dict[str, str] | None = None) -> dict[str, float]:
    """The steps of one study, timed in this process (one thread per reader is not modelled)."""
    from cmrseg.data.io.discovery import discover, load_study
    from cmrseg.inference.ensemble import load_predictor
    from cmrseg.inference.options import InferenceOptions, SegmentOptions
    from cmrseg.inference.segment import Batch, process_study

    predictor = load_predictor(model, InferenceOptions(device="cpu", **(inference or {})))  # as cmrseg segment does
    t0 = time.perf_counter()
    sources, _ = discover([src])
    t1 = time.perf_counter()
    study = load_study(sources[0])
    t2 = time.perf_counter()
    options = SegmentOptions(save_probabilities="probabilities" in extras)
    record = process_study(study, Batch(out, options, predictor))
    t3 = time.perf_counter()
    return {"discover_s": t1 - t0, "read_s": t2 - t1, "model_s": record["model_seconds"],
            "measure_write_draw_s": (t3 - t2) - record["model_seconds"], "frames": len(study.frames),
            "slices": study.frames[0].num_slices, "matrix": list(study.frames[0].shape[1:]),
            "read_twice": record.get("second_opinion") is not None}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--format", choices=("dicom", "dicom_enhanced", "dicom_slices", "nifti"), default="dicom")
    ap.add_argument("--frames", type=int, default=20)
    ap.add_argument("--slices", type=int, default=12)
    ap.add_argument("--size", type=int, default=208)
    ap.add_argument("--model")
    ap.add_argument("--tta", default="auto", choices=TTA_MODES, help="as cmrseg segment --tta")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--frames-per-forward", default="auto", help="as cmrseg segment --frames-per-forward")
    ap.add_argument("--precision", default="auto", help="as cmrseg segment --precision")
    ap.add_argument("--backend", default="auto", choices=BACKENDS,
                    help="as cmrseg segment --backend (onnx: a folder from cmrseg export-onnx as --model)")
    ap.add_argument("--save-probabilities", action="store_true", help="cmrseg segment --save-probabilities")
    ap.add_argument("--second-opinion", default="auto", choices=SECOND_OPINIONS, help="as cmrseg segment --second-opinion")
    ap.add_argument("--out")
    args = ap.parse_args()
    torch.set_num_threads(2)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        src = make_cine(tmp / "in", args.format, args.frames, args.slices, args.size)
        cmd = [sys.executable, "-m", "cmrseg", "segment", "-i", str(src), "-o", str(tmp / "out"),
               "--workers", str(args.workers), "--tta", args.tta, "--frames-per-forward", args.frames_per_forward,
               "--precision", args.precision, "--backend", args.backend, "--second-opinion", args.second_opinion]
        cmd += ["--model", args.model] if args.model else []
        cmd += ["--save-probabilities"] if args.save_probabilities else []
        t0 = time.perf_counter()
        res = subprocess.run(cmd, capture_output=True, text=True)
        wall = time.perf_counter() - t0
        if res.returncode != 0:
            raise SystemExit(res.stderr[-2000:])
        peak_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
        inference = {"tta": args.tta, "frames_per_forward": args.frames_per_forward, "precision": args.precision,
                     "backend": args.backend, "second_opinion": args.second_opinion}
        steps = in_process_steps(src, args.model, tmp / "out2", ("probabilities",) if args.save_probabilities else (),
                                 inference)
        saved_mb = sum(f.stat().st_size for f in (tmp / "out").glob("*_probabilities.npz")) / 2**20
        files = len(list(src.iterdir())) if src.is_dir() else 1
    result = {"format": args.format, "files": files, "command_wall_s": round(wall, 2), "peak_rss_mb": round(peak_mb),
              **{k: (round(v, 2) if isinstance(v, float) else v) for k, v in steps.items()},
              "probabilities_saved_mb": round(saved_mb, 1) if args.save_probabilities else None,
              "model": args.model or "default", **inference, "workers": args.workers, "torch": torch.__version__,
              "machine": platform.platform(), "cpu": cpu_description(), "cpus": torch.get_num_threads(),
              "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
    print(json.dumps(result, indent=2))
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
