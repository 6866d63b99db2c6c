"""The shift benchmark: how masks and measures move when the images look like another scanner's.

Real studies from other vendors and sequences are not in this repository, so this writes copies
of an ACDC h5 split, each with one difference a user's scanner can bring, runs ``cmrseg segment``
and ``cmrseg evaluate`` on every copy exactly as a user would, and reports one table (a row per
shift: volume and apical Dice, the signed bias of every clinical measure, three MAEs, the QC
verdicts) and one line of summary numbers: the mean volume Dice over the shifts, the largest
drop below the unshifted copy, and the mean and largest |LV mass| and |LVEF| bias.

    python benchmarks/shift_benchmark.py ../shared/data/acdc/val OUT [--model M ...] [--shifts ...]
        [--segment-args "--tta off"] [--name NAME]   # table also in benchmarks/results/shift_NAME.{md,json}

The shifts are made with MONAI's transforms and numpy, not with the training augmentation's own
code (:mod:`cmrseg.data.vendor_shifts`), each fixed and seeded; images only unless said:

* resolution: ``finer_grid`` (a 2x interpolated matrix, as GE's ZIP or Philips' reconstructions
  deliver; image bicubic, truth repeated, pixel size halved) and ``coarse_grid`` (pixels 1.5x
  larger: image area-averaged, truth sampled at the new pixels' centres);
* ``thick_slices``: each slice averaged with its neighbours (weights 1/4, 1/2, 1/4): the
  through-plane partial volume of slices about twice as thick;
* ``blur`` (Gaussian, sigma 1 px) and ``sharpen`` (``GaussianSharpen``: a sharper filter);
* ``gamma_0.67`` / ``gamma_1.5``: another blood-to-myocardium contrast (``AdjustContrast``);
* ``other_contrast``: a non-linear intensity curve of another sequence (``RandHistogramShift``,
  six control points, fixed seed): fat, blood and myocardium moved against each other;
* coil: ``shading`` (``RandBiasField``, degree 3, one field per stack) and ``hot_spot`` (a
  bright blob at twice the 99.5th percentile in the corner farthest from the heart);
* ``noise``: Rician, std 0.02 of the [0, 1] range (SNR 10-28 in the LV blood pool);
* ``gibbs``: half the acquired resolution with its ringing (``GibbsNoise(alpha=0.65)``);
* orientation: ``transpose`` (rows and columns swapped) and ``rotate_90``; image and truth alike;
* field of view: ``wide_fov`` (the matrix padded to 1.4x with background) and ``narrow_fov``
  (cut to 0.7x around the heart); image and truth alike.

Two further rows probe quality control rather than a scanner (``--shifts inverted heavy_noise``):
``inverted`` (dark blood) and ``heavy_noise`` (Rician, std 0.25).
"""

from __future__ import annotations

import argparse
import csv
import json
import platform
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import torch
import torch.nn.functional as F

from cmrseg.device import cpu_description

MEASURES = ("LVM (g)", "LVEDV (mL)", "LVESV (mL)", "RVEDV (mL)", "RVESV (mL)", "LVEF (%)", "RVEF (%)")
SEED = 0
HERE = Path(__file__).resolve().parent


def _monai(transform):
    """An image-only shift from a MONAI 2D transform (the ``[S, H, W]`` stack is its channel-first image)."""

    def apply(image, label, rng):
        if hasattr(transform, "set_random_state"):
            transform.set_random_state(seed=int(rng.integers(2**31)))
        return np.clip(np.asarray(transform(torch.from_numpy(image)), dtype=np.float32), 0.0, 1.0), label, 1.0

    return apply


def _zoom(factor: float):
    """The same field of view on a matrix ``factor`` times as fine (pixels the field of view over
    the new matrix, about 1 / ``factor`` of the old ones), the truth sampled at the centres of the
    image's new pixels (``nearest-exact``). Plain ``nearest`` (``floor(i / factor)``) put the
    truth up to a pixel off a coarser image and drew the LV 2 % small: on val that alone cost the
    default's unshifted masks 0.021 of volume Dice (docs/decisions.md, "The coarse grid's
    truth"). A majority vote over each new pixel's area would erode the thin myocardium."""

    def apply(image, label, rng):
        from monai.transforms import Zoom

        img = np.asarray(Zoom(zoom=factor, mode="bicubic" if factor > 1 else "area", keep_size=False)(
            torch.from_numpy(image)))
        lab = F.interpolate(torch.from_numpy(label.astype(np.float32))[None], size=img.shape[-2:], mode="nearest-exact")
        # how much larger a pixel is: the field of view over the rounded matrix (not exactly 1 / factor)
        pixel_scale = np.mean([n / m for n, m in zip(image.shape[-2:], img.shape[-2:])])
        return np.clip(img, 0.0, 1.0), lab[0].numpy().round().astype(np.uint8), float(pixel_scale)

    return apply


def _thick_slices(image, label, rng):
    padded = np.concatenate([image[:1], image, image[-1:]])
    return (0.25 * padded[:-2] + 0.5 * padded[1:-1] + 0.25 * padded[2:]).astype(np.float32), label, 1.0


def _shading(image, label, rng):
    from monai.transforms import RandBiasField

    field = RandBiasField(degree=3, coeff_range=(0.2, 0.4), prob=1.0)
    field.set_random_state(seed=int(rng.integers(2**31)))
    gain = np.asarray(field(torch.ones((1, *image.shape[1:]))))[0]  # one coil field for the whole stack
    return np.clip(image * gain[None], 0.0, 1.0), label, 1.0


def _heart_centre(label: np.ndarray, shape: tuple[int, int]) -> tuple[float, float]:
    rows, cols = np.nonzero(label.any(axis=0))
    return (rows.mean(), cols.mean()) if rows.size else (shape[0] / 2, shape[1] / 2)


def _hot_spot(image, label, rng):
    s, h, w = image.shape
    cy, cx = _heart_centre(label, (h, w))
    by, bx = (0.0 if cy > h / 2 else h - 1.0), (0.0 if cx > w / 2 else w - 1.0)
    sigma = 0.06 * max(h, w)
    yy, xx = np.mgrid[:h, :w]
    blob = np.exp(-((yy - by) ** 2 + (xx - bx) ** 2) / (2 * sigma**2)).astype(np.float32)
    return image + 2.0 * float(np.percentile(image, 99.5)) * blob[None], label, 1.0


def _wide_fov(image, label, rng):
    s, h, w = image.shape
    ph, pw = int(round(0.2 * h)), int(round(0.2 * w))
    pad = ((0, 0), (ph, ph), (pw, pw))
    return np.pad(image, pad), np.pad(label, pad), 1.0


def _narrow_fov(image, label, rng):
    s, h, w = image.shape
    ch, cw = int(round(0.7 * h)), int(round(0.7 * w))
    cy, cx = _heart_centre(label, (h, w))
    y0 = int(np.clip(round(cy - ch / 2), 0, h - ch))
    x0 = int(np.clip(round(cx - cw / 2), 0, w - cw))
    return image[:, y0:y0 + ch, x0:x0 + cw], label[:, y0:y0 + ch, x0:x0 + cw], 1.0


def _shifts() -> dict:
    from monai.transforms import (
        AdjustContrast,
        GaussianSharpen,
        GaussianSmooth,
        GibbsNoise,
        RandHistogramShift,
        RandRicianNoise,
    )

    return {
        "none": lambda image, label, rng: (image, label, 1.0),
        "finer_grid": _zoom(2.0),
        "coarse_grid": _zoom(1 / 1.5),
        "thick_slices": _thick_slices,
        "blur": _monai(GaussianSmooth(sigma=(1.0, 1.0))),
        "sharpen": _monai(GaussianSharpen(sigma1=0.5, sigma2=1.0, alpha=1.0)),
        "gamma_0.67": _monai(AdjustContrast(gamma=0.67)),
        "gamma_1.5": _monai(AdjustContrast(gamma=1.5)),
        "other_contrast": _monai(RandHistogramShift(num_control_points=6, prob=1.0)),
        "shading": _shading,
        "hot_spot": _hot_spot,
        "noise": _monai(RandRicianNoise(prob=1.0, std=0.02, relative=False, sample_std=False)),
        "gibbs": _monai(GibbsNoise(alpha=0.65)),
        "transpose": lambda image, label, rng: (image.transpose(0, 2, 1), label.transpose(0, 2, 1), 1.0),
        "rotate_90": lambda image, label, rng: (np.rot90(image, 1, (1, 2)), np.rot90(label, 1, (1, 2)), 1.0),
        "wide_fov": _wide_fov,
        "narrow_fov": _narrow_fov,
        # probes of quality control, not scanners: images the model was never meant to read
        "inverted": lambda image, label, rng: (1.0 - image, label, 1.0),
        "heavy_noise": _monai(RandRicianNoise(prob=1.0, std=0.25, relative=False, sample_std=False)),
    }


SHIFTS = tuple(_shifts())
#: the shifts a user's scanner could bring (the default ``--shifts``); the rest probe QC
SCANNER_SHIFTS = tuple(k for k in SHIFTS if k not in ("inverted", "heavy_noise"))


def write_shifted(src: Path, dst: Path, shift: str) -> None:
    """Copy the h5 split ``src`` to ``dst`` with ``shift`` applied (each patient's pixel size in
    ``metadata.csv`` and matrix sizes in ``manifest.json`` kept consistent)."""
    if dst.exists():
        shutil.rmtree(dst)
    dst.mkdir(parents=True)
    apply = _shifts()[shift]
    rng = np.random.default_rng(SEED)
    manifest = json.loads((src / "manifest.json").read_text())
    patient_of = {entry["volume"]: entry["patient"] for entry in manifest}
    pixel_factor, shapes = {}, {}
    for f in sorted(src.glob("*.h5")):
        with h5py.File(f, "r") as h:
            image, label = np.asarray(h["image"], dtype=np.float32), np.asarray(h["label"])
        image, label, pixel_factor[patient_of[f.stem]] = apply(image, label, rng)
        if image.shape != label.shape:
            raise RuntimeError(f"{f.name}: shift {shift} gave image {image.shape} and label {label.shape}")
        with h5py.File(dst / f.name, "w") as h:
            h.create_dataset("image", data=np.ascontiguousarray(image, dtype=np.float32), compression="gzip")
            h.create_dataset("label", data=np.ascontiguousarray(label, dtype=np.uint8), compression="gzip")
        shapes[f.stem] = image.shape
    with open(src / "metadata.csv", newline="") as fin, open(dst / "metadata.csv", "w", newline="") as fout:
        reader = csv.DictReader(fin)
        writer = csv.DictWriter(fout, fieldnames=reader.fieldnames)
        writer.writeheader()
        for r in reader:
            r["pixel_mm"] = f"{float(r['pixel_mm']) * pixel_factor.get(r['patient'], 1.0):.6f}"
            writer.writerow(r)
    for entry in manifest:
        s, h, w = shapes[entry["volume"]]
        entry.update(slices=s, height=h, width=w)
    (dst / "manifest.json").write_text(json.dumps(manifest, indent=1))


def row(shift: str, summary: dict, segmented: dict, seconds: float) -> dict:
    """One table row from ``cmrseg evaluate``'s and ``cmrseg segment``'s ``summary.json``."""
    clin = summary["clinical"]["all"]
    verdicts = [c.get("qc") for c in segmented["studies"].values()]
    out = {"shift": shift, "vol": summary["levels"]["volume"]["avg"], "apex": summary["levels"]["apex"]["avg"],
           "seconds": seconds, "qc": {v: verdicts.count(v) for v in sorted(set(verdicts), key=str)}}
    for m in MEASURES:
        out[f"{m} bias"], out[f"{m} MAE"] = clin[f"{m} bias"], clin[f"{m} MAE"]
    perf = (summary.get("quality_control") or {}).get("measures") or {}
    # the verdict against the studies that really failed (issue 36): failed, of them flagged, good
    # ones sent to review, gross failures, of them flagged, and flagged with the measure named
    out["qc failures"] = {k: perf.get(k) for k in ("failed", "recall", "good", "good_to_review", "gross",
                                                   "gross_caught", "gross_named")}
    return out


def overall(rows: list[dict]) -> dict:
    """The summary numbers over the scanner-like shifts (QC probes and ``none`` left out)."""
    base = next((r for r in rows if r["shift"] == "none"), None)
    shifted = [r for r in rows if r["shift"] in SCANNER_SHIFTS and r["shift"] != "none"]
    if not shifted:
        return {}
    worst = min(shifted, key=lambda r: r["vol"])
    out = {"shifts": len(shifted), "mean volume Dice": float(np.mean([r["vol"] for r in shifted])),
           "worst shift": worst["shift"], "worst volume Dice": worst["vol"]}
    if base is not None:
        out["unshifted volume Dice"] = base["vol"]
        out["largest drop"] = base["vol"] - worst["vol"]
    for m in ("LVM (g)", "LVEF (%)"):
        biases = [abs(r[f"{m} bias"]) for r in shifted]
        out[f"mean |{m} bias|"], out[f"largest |{m} bias|"] = float(np.mean(biases)), float(np.max(biases))
    return out


def _of(share: float | None, n: int | None) -> str:
    """``3 of 4`` from a share of ``n`` studies."""
    return "–" if share is None or not n else f"{round(share * n)} of {n}"


def _gross(f: dict) -> str:
    """``2 of 2 (2)``: gross failures flagged of all, and of them with the measure named (records
    written before the reasons named measures have no count: ``2 of 2``)."""
    if f.get("gross") is None:
        return "–"
    named = f" ({f['gross_named']})" if f.get("gross_named") is not None else ""
    return f"{f['gross_caught']} of {f['gross']}{named}"


def markdown(rows: list[dict]) -> str:
    head = ["shift", "vol", "apex"] + [f"{m} bias" for m in MEASURES] + ["LVM (g) MAE", "LVEF (%) MAE", "RVEF (%) MAE",
                                                                        "QC verdicts (patients)",
                                                                        "failed: flagged", "good: to review",
                                                                        "gross: flagged (measure named)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [r["shift"], f"{r['vol']:.3f}", f"{r['apex']:.3f}"]
        cells += [f"{r[f'{m} bias']:+.2f}" for m in MEASURES]
        cells += [f"{r[c]:.2f}" for c in ("LVM (g) MAE", "LVEF (%) MAE", "RVEF (%) MAE")]
        cells.append(", ".join(f"{n} {v}" for v, n in r["qc"].items()))
        f = r.get("qc failures") or {}
        cells += [_of(f.get("recall"), f.get("failed")), _of(f.get("good_to_review"), f.get("good")),
                  _gross(f)]
        lines.append("| " + " | ".join(cells) + " |")
    summary = overall(rows)
    if summary:
        lines.append("")
        lines.append(f"Over {summary['shifts']} shifts: mean volume Dice {summary['mean volume Dice']:.3f} (worst "
                     f"{summary['worst shift']} {summary['worst volume Dice']:.3f}"
                     + (f", {summary['largest drop']:.3f} below unshifted" if "largest drop" in summary else "")
                     + f"); mean |LV mass bias| {summary['mean |LVM (g) bias|']:.2f} g (largest "
                     f"{summary['largest |LVM (g) bias|']:.2f}); mean |LVEF bias| {summary['mean |LVEF (%) bias|']:.2f} "
                     f"points (largest {summary['largest |LVEF (%) bias|']:.2f})")
    return "\n".join(lines) + "\n"


def _cmrseg(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "cmrseg", *args], check=True)


def run_shift(split: Path, out: Path, shift: str, model: list[str] | None, segment_args: str) -> float:
    """Write the shifted copy, segment and evaluate it; returns the segmentation's seconds."""
    data, pred, ev = (out / d / shift for d in ("data", "pred", "eval"))
    write_shifted(split, data, shift)
    seg = ["segment", "-i", str(data), "-o", str(pred), "--overwrite"]
    seg += (["--model", *model] if model else []) + shlex.split(segment_args)
    t0 = time.perf_counter()
    _cmrseg(*seg)
    seconds = time.perf_counter() - t0
    _cmrseg("evaluate", "--pred", str(pred), "--gt", str(data), "-o", str(ev))
    return seconds


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("split", type=Path, help="an h5 split folder (for example ../shared/data/acdc/val)")
    ap.add_argument("out", type=Path, help="working folder (shifted copies, masks, evaluations)")
    ap.add_argument("--model", nargs="+", help="models for cmrseg segment (default: its default)")
    ap.add_argument("--shifts", nargs="+", default=list(SCANNER_SHIFTS), choices=SHIFTS,
                    help="default: every scanner-like shift (not the QC probes inverted, heavy_noise)")
    ap.add_argument("--segment-args", default="", help="further cmrseg segment options, one string")
    ap.add_argument("--name", help="also write the table to benchmarks/results/shift_NAME.md and .json")
    ap.add_argument("--reuse", action="store_true", help="tabulate shifts already evaluated in OUT instead of rerunning")
    args = ap.parse_args(argv)
    rows = []
    for shift in args.shifts:
        ev, pred = args.out / "eval" / shift, args.out / "pred" / shift
        seconds = float("nan")
        if not (args.reuse and (ev / "summary.json").is_file()):
            print(f"== {shift}", flush=True)
            seconds = run_shift(args.split, args.out, shift, args.model, args.segment_args)
        rows.append(row(shift, json.loads((ev / "summary.json").read_text()),
                        json.loads((pred / "summary.json").read_text()), seconds))
        (args.out / "shift_benchmark.md").write_text(markdown(rows))
    report = {"rows": rows, "overall": overall(rows), "model": args.model or "default", "segment_args": args.segment_args,
              "machine": platform.platform(), "cpu": cpu_description(),
              "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
              "torch": torch.__version__}
    (args.out / "shift_benchmark.json").write_text(json.dumps(report, indent=1))
    if args.name:
        (HERE / "results" / f"shift_{args.name}.json").write_text(json.dumps(report, indent=1))
        (HERE / "results" / f"shift_{args.name}.md").write_text(markdown(rows))
    print(markdown(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
