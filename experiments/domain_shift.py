"""How do the masks and measures move when the images look like another scanner's?

Issue 11 reports that on cines from other vendors the LV cavity comes out smaller and the
myocardium larger than the experts' (LV mass +20-25 %). Those studies are not here, so this
script writes copies of an ACDC split with one vendor-like difference each, runs
``cmrseg segment`` and ``cmrseg evaluate`` on every copy exactly as a user would, and tabulates
the signed biases next to the unchanged split. A shift that reproduces the reported pattern
names a likely cause that can be fixed in preprocessing or training and checked here again.

    PYTHONPATH=src python experiments/domain_shift.py ../shared/data/acdc/val OUT [--model M ...]
        [--shifts none finer_grid ...] [--segment-args "--tta on"]

The shifts use MONAI's MR transforms (images only, labels unchanged unless the grid changes):

* ``finer_grid``: reconstruction to a 2x finer in-plane matrix (as GE's ZIP or Philips'
  interpolated reconstructions deliver), bicubic; the truth is repeated 2x2 and the pixel size
  halved, so the physical volumes stay the same.
* ``gibbs``: half the acquired resolution on the same grid: k-space kept within a circle of
  radius a quarter of the matrix, with its ringing (``GibbsNoise(alpha=0.65)``: radius
  (1 - alpha) * max(H, W) / sqrt(2)).
* ``blur``: Gaussian smoothing, sigma 1 pixel.
* ``gamma_0.67`` / ``gamma_1.5``: a different blood-to-myocardium contrast, ``AdjustContrast``.
* ``shading``: a smooth receive-coil intensity field, ``RandBiasField`` (degree 3, coefficients
  0.2-0.4, fixed seed), the same field on every slice of a stack.
* ``noise``: Rician noise, std 0.02 of the [0, 1] range (``RandRicianNoise``, fixed seed); the
  LV blood pool's median intensity in the val volumes is 0.21-0.56 (median 0.44), so SNR 10-28.
* ``hot_spot``: a bright coil hot spot at the chest wall (a Gaussian blob at twice the stack's
  99.5th intensity percentile, in the corner farthest from the heart): the intensity
  normalisation's upper percentile then lies above the blood pool, which comes out darker.
* ``transpose`` / ``rotate_90``: the in-plane orientation of another convention: rows and
  columns swapped (a reflection across the diagonal), or the image turned by a quarter; image
  and truth alike (numpy; the written h5 has no affine, so nothing undoes it).

Two further rows probe quality control rather than a scanner (named with ``--shifts``): images
the model cannot read, whose masks QC should not pass as ``ok``: ``inverted`` (1 - intensity,
dark blood) and ``heavy_noise`` (Rician, std 0.25).

Writes ``OUT/data/SHIFT`` (h5 copies with ``metadata.csv``/``manifest.json``), ``OUT/pred/SHIFT``,
``OUT/eval/SHIFT``, and ``OUT/domain_shift.md`` / ``.json`` with one row per shift: volume and
apical Dice, signed bias of every clinical measure, three mean absolute errors, and how many
patients ``cmrseg segment``'s quality control passed (``ok``) or sent to review.
"""

from __future__ import annotations

import argparse
import csv
import json
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import torch
from monai.transforms import AdjustContrast, GaussianSmooth, GibbsNoise, RandBiasField, RandRicianNoise, Zoom

MEASURES = ("LVM (g)", "LVEDV (mL)", "LVESV (mL)", "RVEDV (mL)", "RVESV (mL)", "LVEF (%)", "RVEF (%)")
SEED = 0


def _finer_grid(image: np.ndarray, label: np.ndarray, rng) -> tuple[np.ndarray, np.ndarray, float]:
    img = Zoom(zoom=2.0, mode="bicubic", keep_size=False)(torch.from_numpy(image))
    lab = Zoom(zoom=2.0, mode="nearest", keep_size=False)(torch.from_numpy(label.astype(np.float32)))
    return np.clip(np.asarray(img), 0.0, 1.0), np.asarray(lab).round().astype(np.uint8), 0.5


def _image_only(transform):
    """A shift that changes the image on the same grid (the [S, H, W] stack is MONAI's
    channel-first 2D image: one 2D transform per slice)."""

    def apply(image, label, rng):
        if hasattr(transform, "set_random_state"):
            transform.set_random_state(seed=int(rng.integers(2**31)))
        out = np.asarray(transform(torch.from_numpy(image)), dtype=np.float32)
        return np.clip(out, 0.0, 1.0), label, 1.0

    return apply


def _shading(image, label, rng):
    field = RandBiasField(degree=3, coeff_range=(0.2, 0.4), prob=1.0)
    field.set_random_state(seed=int(rng.integers(2**31)))
    # one field for the whole stack: a coil's sensitivity does not change between slices
    ones = np.ones((1, *image.shape[1:]), dtype=np.float32)
    gain = np.asarray(field(torch.from_numpy(ones)))[0]
    return np.clip(image * gain[None], 0.0, 1.0), label, 1.0


def _hot_spot(image, label, rng):
    """A bright receive-coil hot spot at the chest wall: a Gaussian blob (sigma 6 % of the
    matrix) at 2x the stack's 99.5th intensity percentile, added in the image corner farthest
    from the heart (the truth's centre), the same on every slice."""
    s, h, w = image.shape
    rows, cols = np.nonzero(label.any(axis=0))
    cy, cx = (rows.mean(), cols.mean()) if rows.size else (h / 2, w / 2)
    by, bx = (0.0 if cy > h / 2 else h - 1.0), (0.0 if cx > w / 2 else w - 1.0)
    sigma = 0.06 * max(h, w)
    yy, xx = np.mgrid[:h, :w]
    blob = np.exp(-((yy - by) ** 2 + (xx - bx) ** 2) / (2 * sigma**2)).astype(np.float32)
    return image + 2.0 * float(np.percentile(image, 99.5)) * blob[None], label, 1.0


SHIFTS = {
    "none": lambda image, label, rng: (image, label, 1.0),
    "finer_grid": _finer_grid,
    "gibbs": _image_only(GibbsNoise(alpha=0.65)),
    "blur": _image_only(GaussianSmooth(sigma=(1.0, 1.0))),
    "gamma_0.67": _image_only(AdjustContrast(gamma=0.67)),
    "gamma_1.5": _image_only(AdjustContrast(gamma=1.5)),
    "shading": _shading,
    "noise": _image_only(RandRicianNoise(prob=1.0, std=0.02, relative=False, sample_std=False)),
    "hot_spot": _hot_spot,
    # in-plane orientation: the same plane stored with rows and columns swapped, or turned by a
    # quarter (another phase-encoding direction or planning convention); labels move with it
    "transpose": lambda image, label, rng: (image.transpose(0, 2, 1), label.transpose(0, 2, 1), 1.0),
    "rotate_90": lambda image, label, rng: (np.rot90(image, 1, (1, 2)), np.rot90(label, 1, (1, 2)), 1.0),
    # probes of quality control, not scanners: images the model was never meant to read
    "inverted": lambda image, label, rng: (1.0 - image, label, 1.0),
    "heavy_noise": _image_only(RandRicianNoise(prob=1.0, std=0.25, relative=False, sample_std=False)),
}
#: the shifts a vendor's images could show (the default ``--shifts``); the rest probe QC
SCANNER_SHIFTS = [k for k in SHIFTS if k not in ("inverted", "heavy_noise")]


def write_shifted(src: Path, dst: Path, shift: str) -> None:
    """Copy the h5 split ``src`` to ``dst`` with ``shift`` applied (pixel size in
    ``metadata.csv`` and matrix sizes in ``manifest.json`` kept consistent)."""
    if dst.exists():
        shutil.rmtree(dst)
    dst.mkdir(parents=True)
    rng = np.random.default_rng(SEED)
    pixel_factor = 1.0
    shapes = {}
    for f in sorted(src.glob("*.h5")):
        with h5py.File(f, "r") as h:
            image, label = np.asarray(h["image"], dtype=np.float32), np.asarray(h["label"])
        image, label, pixel_factor = SHIFTS[shift](image, label, rng)
        if image.shape != label.shape:
            raise RuntimeError(f"{f.name}: shift {shift} gave image {image.shape} and label {label.shape}")
        with h5py.File(dst / f.name, "w") as h:
            h.create_dataset("image", data=image.astype(np.float32), compression="gzip")
            h.create_dataset("label", data=label.astype(np.uint8), compression="gzip")
        shapes[f.stem] = image.shape
    with open(src / "metadata.csv", newline="") as fin, open(dst / "metadata.csv", "w", newline="") as fout:
        reader = csv.DictReader(fin)
        writer = csv.DictWriter(fout, fieldnames=reader.fieldnames)
        writer.writeheader()
        for row in reader:
            row["pixel_mm"] = f"{float(row['pixel_mm']) * pixel_factor:.6f}"
            writer.writerow(row)
    manifest = json.loads((src / "manifest.json").read_text())
    for entry in manifest:
        s, h, w = shapes[entry["volume"]]
        entry.update(slices=s, height=h, width=w)
    (dst / "manifest.json").write_text(json.dumps(manifest, indent=1))


def cmrseg(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "cmrseg", *args], check=True)


def row(shift: str, summary: dict, segmented: dict, seconds: float) -> dict:
    """One table row from ``cmrseg evaluate``'s and ``cmrseg segment``'s ``summary.json``."""
    clin = summary["clinical"]["all"]
    verdicts = [c.get("qc") for c in segmented["cases"].values()]
    out = {"shift": shift, "vol": summary["levels"]["volume"]["avg"], "apex": summary["levels"]["apex"]["avg"],
           "seconds": seconds, "qc": {v: verdicts.count(v) for v in sorted(set(verdicts), key=str)}}
    for m in MEASURES:
        out[f"{m} bias"], out[f"{m} MAE"] = clin[f"{m} bias"], clin[f"{m} MAE"]
    return out


def markdown(rows: list[dict]) -> str:
    head = ["shift", "vol", "apex"] + [f"{m} bias" for m in MEASURES] + ["LVM (g) MAE", "LVEF (%) MAE", "RVEF (%) MAE",
                                                                        "QC verdicts (patients)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [r["shift"], f"{r['vol']:.3f}", f"{r['apex']:.3f}"]
        cells += [f"{r[f'{m} bias']:+.2f}" for m in MEASURES]
        cells += [f"{r[c]:.2f}" for c in ("LVM (g) MAE", "LVEF (%) MAE", "RVEF (%) MAE")]
        cells.append(", ".join(f"{n} {v}" for v, n in r["qc"].items()))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("split", type=Path, help="an h5 split folder (for example ../shared/data/acdc/val)")
    ap.add_argument("out", type=Path)
    ap.add_argument("--model", nargs="+", help="models for cmrseg segment (default: its default)")
    ap.add_argument("--shifts", nargs="+", default=SCANNER_SHIFTS, choices=list(SHIFTS),
                    help="default: every scanner-like shift (not the QC probes inverted, heavy_noise)")
    ap.add_argument("--segment-args", default="", help="further cmrseg segment options, one string")
    ap.add_argument("--reuse", action="store_true", help="tabulate shifts already segmented and evaluated in OUT "
                                                         "instead of running them again")
    args = ap.parse_args(argv)
    rows = []
    for shift in args.shifts:
        data, pred, ev = (args.out / d / shift for d in ("data", "pred", "eval"))
        seconds = float("nan")
        if not (args.reuse and (ev / "summary.json").is_file()):
            print(f"== {shift}", flush=True)
            write_shifted(args.split, data, shift)
            seg = ["segment", "-i", str(data), "-o", str(pred), "--overwrite"]
            seg += (["--model", *args.model] if args.model else []) + shlex.split(args.segment_args)
            t0 = time.perf_counter()
            cmrseg(*seg)
            seconds = time.perf_counter() - t0
            cmrseg("evaluate", "--pred", str(pred), "--gt", str(data), "-o", str(ev))
        rows.append(row(shift, json.loads((ev / "summary.json").read_text()),
                        json.loads((pred / "summary.json").read_text()), seconds))
        (args.out / "domain_shift.json").write_text(json.dumps(rows, indent=1))
        (args.out / "domain_shift.md").write_text(markdown(rows))
    print(markdown(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
