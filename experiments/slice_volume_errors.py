"""How much of a structure's volume error sits on one slice? Per volume: the signed error, the
slice that carries most of it, and what the other slices add up to.

    PYTHONPATH=src python experiments/slice_volume_errors.py PRED_DIR GT_DIR [--structure RV] [--out FILE.md]

PRED_DIR: a ``cmrseg segment`` output (or any folder of predicted masks named like the truth);
GT_DIR: the truth (as for ``cmrseg evaluate``). Volumes per slice use the truth's voxel size.
A large error on one whole slice, with the rest small, is a decision about the slice (the
structure there or not: the base at end-systole, the apex), not a contour error; a mean
absolute error that shrinks much without that slice says the slice decisions dominate it.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from cmrseg.atomic import write_text
from cmrseg.errors import InputError
from cmrseg.evaluation.evaluate import paired_cases
from cmrseg.evaluation.levels import slice_levels
from cmrseg.labels import CLASS_NAMES


def slice_errors(pred_dir: Path, gt_dir: Path, structure: str) -> list[dict]:
    c = CLASS_NAMES.index(structure) + 1
    rows = []
    for case in paired_cases(pred_dir, gt_dir):  # cmrseg evaluate's pairing and its errors
        if case.spacing is None:
            raise InputError(gt_dir / case.name, "no voxel size, so no volumes")
        voxel_ml = float(np.prod(case.spacing)) / 1000.0
        t = (case.gt == c).reshape(case.gt.shape[0], -1).sum(1)
        q = (case.pred == c).reshape(case.pred.shape[0], -1).sum(1)
        err = (q.astype(float) - t) * voxel_ml
        k = int(np.argmax(np.abs(err)))
        rows.append({"volume": case.name, "error": float(err.sum()), "k": k,
                     "slices": len(err), "level": slice_levels(case.gt)[k] or "no heart in truth",
                     "truth_px": int(t[k]), "pred_px": int(q[k]), "slice_error": float(err[k]),
                     "rest": float(err.sum() - err[k])})
    return rows


def markdown(rows: list[dict], structure: str) -> str:
    lines = [f"| volume | {structure} volume error (mL) | largest one-slice error: k (level) | truth / predicted pixels there "
             "| its error (mL) | the other slices (mL) |", "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['volume']} | {r['error']:+.1f} | {r['k']} of {r['slices']} ({r['level']}) | "
                     f"{r['truth_px']} / {r['pred_px']} | {r['slice_error']:+.1f} | {r['rest']:+.1f} |")
    mae = np.mean([abs(r["error"]) for r in rows])
    rest = np.mean([abs(r["rest"]) for r in rows])
    lines.append(f"\nMean absolute {structure} volume error over {len(rows)} volumes: {mae:.2f} mL; "
                 f"without each volume's largest one-slice error: {rest:.2f} mL.")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("pred", type=Path)
    ap.add_argument("gt", type=Path)
    ap.add_argument("--structure", default="RV", choices=CLASS_NAMES)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args(argv)
    try:
        text = markdown(slice_errors(args.pred, args.gt, args.structure), args.structure)
    except InputError as exc:  # one line naming the file, as the cmrseg commands give
        raise SystemExit(f"slice_volume_errors: {exc}") from None
    print(text)
    if args.out:
        write_text(args.out, text)


if __name__ == "__main__":
    main()
