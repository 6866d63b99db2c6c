"""Would histogram standardisation undo other sequences' contrast for the default? (issue 35)

A diagnostic on TRAINING patients (val untouched), not a shipped step. Nyul-Udupa standardisation
maps each stack's intensity landmarks (percentiles 1, 10, ..., 90 of its foreground, the voxels
above its mean, after the shipped 0.5/99.5 normalisation) piecewise-linearly onto the mean
landmarks of all training stacks. A monotonic intensity curve (``other_contrast``, ``gamma_*``
of ``benchmarks/shift_benchmark.py``) then gives nearly the same network input as the clean image
(not quite: the foreground, the voxels above the mean, moves a little with the curve); the price
is what it does to clean images (the networks never saw standardised ones) and to images whose
foreground histogram changes with their field of view (``wide_fov``).

Every ninth patient of ``train`` (both phases; ``--every``) is copied, shifted as the shift benchmark does,
segmented with the default as shipped and with the standardisation patched into the
preprocessing, and evaluated:

    python experiments/histogram_standardisation.py ../shared/data/acdc/train OUT [--window-mm 120]

With ``--window-mm`` the landmarks, the stack's and the training stacks', are taken in the central
square of that size, where a short-axis field of view puts the heart: a wider field of view then
adds background the landmarks never see. Folders already evaluated in OUT are reused.

(Written here, not taken from TorchIO's ``HistogramStandardization``: that trains on image files
through its own readers and would be a new dependency for one ``np.interp``.)
"""

from __future__ import annotations

import argparse
import csv
import importlib.util
import json
import shutil
import sys
from pathlib import Path

import h5py
import numpy as np

from cmrseg.cli import main as cmrseg
import cmrseg.inference.predictor as predictor
from cmrseg.data import preprocessing

LANDMARKS = np.array([1, 10, 20, 30, 40, 50, 60, 70, 80, 90.0])
SHIFTS = ("none", "other_contrast", "gamma_1.5", "wide_fov")
shipped_normalisation = preprocessing.normalize_intensity
shipped_preprocess = predictor.preprocess_image


def central(x: np.ndarray, spacing: tuple[float, float] | None, window_mm: float | None) -> np.ndarray:
    """The central ``window_mm`` square of every slice of ``x`` (all of it without a window or a
    pixel size): where a short-axis field of view puts the heart, whatever its size."""
    if window_mm is None or spacing is None:
        return x
    h, w = x.shape[-2:]
    ph, pw = min(h, int(round(window_mm / spacing[0]))), min(w, int(round(window_mm / spacing[1])))
    y0, x0 = (h - ph) // 2, (w - pw) // 2
    return x[..., y0:y0 + ph, x0:x0 + pw]


def landmarks(x: np.ndarray) -> np.ndarray | None:
    """The foreground's (voxels above the mean) percentiles :data:`LANDMARKS`; None without one."""
    foreground = x[x > x.mean()]
    return np.percentile(foreground, LANDMARKS) if foreground.size else None


def standardiser(standard: np.ndarray, spacing: tuple[float, float] | None = None, window_mm: float | None = None):
    """The shipped normalisation followed by the map of the stack's landmarks (in its central
    ``window_mm``, :func:`central`) onto ``standard``."""
    def normalise(image, percentiles=(0.5, 99.5)):
        x = shipped_normalisation(image, percentiles)
        found = landmarks(central(x, spacing, window_mm))
        if found is None:
            return x  # a flat stack: nothing to map
        xp = np.concatenate([[0.0], found, [1.0]])
        if np.any(np.diff(xp) <= 0):
            return x  # tied landmarks: no one-to-one map
        return np.interp(x, xp, np.concatenate([[0.0], standard, [1.0]])).astype(np.float32)
    return normalise


def subset(split: Path, dst: Path, every: int) -> None:
    """Both phases of every ``every``-th patient of ``split``, with its metadata and manifest."""
    files = sorted(split.glob("*.h5"))
    patients = sorted({f.name.split("_")[0] for f in files})[::every]
    dst.mkdir(parents=True)
    for f in files:
        if f.name.split("_")[0] in patients:
            shutil.copy(f, dst / f.name)
    with open(split / "metadata.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    with open(dst / "metadata.csv", "w", newline="") as out:
        writer = csv.DictWriter(out, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(r for r in rows if r["patient"] in patients)
    manifest = [e for e in json.loads((split / "manifest.json").read_text()) if e["patient"] in patients]
    (dst / "manifest.json").write_text(json.dumps(manifest, indent=1))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("train", type=Path, help="the training split (h5), for the landmarks and the patients")
    ap.add_argument("out", type=Path, help="working folder")
    ap.add_argument("--every", type=int, default=9, help="every how many-th training patient to segment")
    ap.add_argument("--window-mm", type=float,
                    help="take the landmarks in the central square of this size (mm) instead of the whole slice")
    args = ap.parse_args(argv)
    spec = importlib.util.spec_from_file_location("shift_benchmark", Path(__file__).parents[1] / "benchmarks"
                                                  / "shift_benchmark.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    with open(args.train / "metadata.csv", newline="") as f:
        pixel_mm = {r["patient"]: float(r["pixel_mm"]) for r in csv.DictReader(f)}
    standard = np.mean([landmarks(central(shipped_normalisation(np.asarray(h5py.File(f)["image"])),
                                          (pixel_mm[f.name.split("_")[0]],) * 2, args.window_mm))
                        for f in sorted(args.train.glob("*.h5"))], axis=0)

    def standardised_preprocess(image, spacing, cfg, where=None):
        preprocessing.normalize_intensity = standardiser(standard, spacing, args.window_mm)
        try:
            return shipped_preprocess(image, spacing, cfg, where)
        finally:
            preprocessing.normalize_intensity = shipped_normalisation

    src = args.out / "src"
    if not src.exists():
        subset(args.train, src, args.every)
    lines = ["| shift | volume Dice, shipped | standardised | apex, shipped | standardised | LV mass bias (g), shipped "
             "| standardised |", "|---|---|---|---|---|---|---|"]
    for shift in SHIFTS:
        data = args.out / "data" / shift
        if not data.exists():
            bench.write_shifted(src, data, shift)
        cells = {}
        for mode in ("shipped", "standardised"):
            standardised = mode == "standardised"
            predictor.preprocess_image = standardised_preprocess if standardised else shipped_preprocess
            folder = args.out / (f"{mode}_{args.window_mm:g}mm" if standardised and args.window_mm else mode)
            pred, report = folder / "pred" / shift, folder / "eval" / shift
            done = (report / "summary.json").is_file()  # a folder already evaluated is reused
            for command in () if done else (["segment", "-i", str(data), "-o", str(pred)],
                                            ["evaluate", "--pred", str(pred), "--gt", str(data), "-o", str(report)]):
                try:
                    code = cmrseg(command)
                except SystemExit as stop:
                    code = stop.code
                if code not in (0, 1, None):  # 1: some studies flagged; the summary is written
                    raise SystemExit(f"cmrseg {command[0]} on {shift} ({mode}) exited {code}")
            predictor.preprocess_image = shipped_preprocess
            summary = json.loads((report / "summary.json").read_text())
            cells[mode] = (summary["levels"]["volume"]["avg"], summary["levels"]["apex"]["avg"],
                           summary["clinical"]["all"]["LVM (g) bias"])
        (v0, a0, m0), (v1, a1, m1) = cells["shipped"], cells["standardised"]
        lines.append(f"| {shift} | {v0:.3f} | {v1:.3f} | {a0:.3f} | {a1:.3f} | {m0:+.2f} | {m1:+.2f} |")
    text = "\n".join(lines) + "\n"
    print(text)
    name = f"histogram_standardisation_{args.window_mm:g}mm.md" if args.window_mm else "histogram_standardisation.md"
    (args.out / name).write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
