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

    python experiments/histogram_standardisation.py ../shared/data/acdc/train OUT

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
from cmrseg.data import preprocessing

LANDMARKS = np.array([1, 10, 20, 30, 40, 50, 60, 70, 80, 90.0])
SHIFTS = ("none", "other_contrast", "gamma_1.5", "wide_fov")
shipped_normalisation = preprocessing.normalize_intensity


def landmarks(x: np.ndarray) -> np.ndarray | None:
    """The foreground's (voxels above the mean) percentiles :data:`LANDMARKS`; None without one."""
    foreground = x[x > x.mean()]
    return np.percentile(foreground, LANDMARKS) if foreground.size else None


def standardiser(standard: np.ndarray):
    def normalise(image, percentiles=(0.5, 99.5)):
        x = shipped_normalisation(image, percentiles)
        found = landmarks(x)
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
    args = ap.parse_args(argv)
    spec = importlib.util.spec_from_file_location("shift_benchmark", Path(__file__).parents[1] / "benchmarks"
                                                  / "shift_benchmark.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    standard = np.mean([landmarks(shipped_normalisation(np.asarray(h5py.File(f)["image"])))
                        for f in sorted(args.train.glob("*.h5"))], axis=0)
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
            preprocessing.normalize_intensity = standardiser(standard) if standardised else shipped_normalisation
            pred, report = args.out / mode / "pred" / shift, args.out / mode / "eval" / shift
            for command in (["segment", "-i", str(data), "-o", str(pred)],
                            ["evaluate", "--pred", str(pred), "--gt", str(data), "-o", str(report)]):
                try:
                    code = cmrseg(command)
                except SystemExit as stop:
                    code = stop.code
                if code not in (0, 1, None):  # 1: some studies flagged; the summary is written
                    raise SystemExit(f"cmrseg {command[0]} on {shift} ({mode}) exited {code}")
            preprocessing.normalize_intensity = shipped_normalisation
            summary = json.loads((report / "summary.json").read_text())
            cells[mode] = (summary["levels"]["volume"]["avg"], summary["levels"]["apex"]["avg"],
                           summary["clinical"]["all"]["LVM (g) bias"])
        (v0, a0, m0), (v1, a1, m1) = cells["shipped"], cells["standardised"]
        lines.append(f"| {shift} | {v0:.3f} | {v1:.3f} | {a0:.3f} | {a1:.3f} | {m0:+.2f} | {m1:+.2f} |")
    text = "\n".join(lines) + "\n"
    print(text)
    (args.out / "histogram_standardisation.md").write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
