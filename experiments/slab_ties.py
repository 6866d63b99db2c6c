"""How much of a thick-slice shift's Dice loss is the truth's, and how much the network's?

The shift benchmark's ``thick_slices`` gives each slice a quarter of each neighbour
(``benchmarks/shift_benchmark.py``) and keeps the centre slice's truth. A thicker slice's truth
could only differ from its centre's where both neighbours hold the same label, other than the
centre's (their quarters then weigh as much as its half): the slab's *ties*. This script scores masks with those pixels left out (truth and mask both set
to background there, so they count for neither), next to the usual score, and says what share
of each folder's wrong pixels lie in ties. What is lost outside the ties is the network's.

    python experiments/slab_ties.py TRUTH PRED [PRED ...]

``TRUTH``: a folder of labelled volumes (the benchmark's ``data/none``); each ``PRED``: a
``cmrseg segment`` output folder of the same studies (``pred/none``, ``pred/thick_slices``).
Prints how far the ties can move the truth (Dice of the truth against itself with every tie given
the neighbours' label: the most a slab's truth could differ), then one line per
folder: mean volume Dice (RV, MYO, LV per volume, then over volumes), the same without the
ties, and the ties' share of the wrong pixels. Nothing is written.

Written by hand: the tie is this benchmark's own definition; Dice itself is MONAI's
(``cmrseg.measures.metrics.dice_per_class``).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from cmrseg.data.io.formats import label_formats
from cmrseg.data.io.readers import read_label_volume
from cmrseg.errors import InputError
from cmrseg.measures.metrics import dice_per_class


def slab_ties(label: np.ndarray) -> np.ndarray:
    """``[S, H, W]`` bool: pixels whose slice above and slice below hold the same label, other
    than this slice's. The first and last slices have none (the benchmark pads a stack with its
    own end slices, so one neighbour is the slice itself)."""
    ties = np.zeros(label.shape, dtype=bool)
    ties[1:-1] = (label[:-2] == label[2:]) & (label[:-2] != label[1:-1])
    return ties


def flipped(label: np.ndarray) -> np.ndarray:
    """``label`` with every tie given its neighbours' label."""
    out = label.copy()
    ties = slab_ties(label)[1:-1]
    out[1:-1][ties] = label[:-2][ties]
    return out


def score(truth: np.ndarray, pred: np.ndarray) -> tuple[float, float, int, int]:
    """(mean Dice, mean Dice outside the ties, wrong pixels, wrong pixels in ties) of one volume."""
    ties = slab_ties(truth)
    wrong = pred != truth
    outside = dice_per_class(np.where(ties, 0, pred), np.where(ties, 0, truth))
    return (float(np.nanmean(dice_per_class(pred, truth))), float(np.nanmean(outside)),
            int(wrong.sum()), int((wrong & ties).sum()))


def label_files(folder: Path) -> dict[str, Path]:
    return {p.relative_to(folder).as_posix(): p for p in sorted(folder.rglob("*"))
            if p.is_file() and any(f.matches(p) for f in label_formats())}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("truth", type=Path, help="labelled volumes (the shift benchmark's data/none)")
    ap.add_argument("pred", type=Path, nargs="+", help="cmrseg segment output folders of the same studies")
    args = ap.parse_args(argv)
    truths = label_files(args.truth)
    if not truths:
        print(f"error: {args.truth}: no label files", file=sys.stderr)
        return 1
    moved = [np.nanmean(dice_per_class(flipped(t), t)) for t in
             (read_label_volume(p).label for p in truths.values())]
    print(f"{args.truth}: {len(truths)} volumes; the truth with its ties flipped scores volume Dice "
          f"{np.mean(moved):.3f} against itself")
    try:
        for folder in args.pred:
            preds = label_files(folder)
            missing = sorted(set(truths) - set(preds))
            if missing:
                raise InputError(folder, f"no mask for {len(missing)} of the truth's studies ({missing[0]}, ...)")
            rows = np.array([score(read_label_volume(truths[k]).label, read_label_volume(preds[k]).label)
                             for k in truths])
            print(f"{folder}: {len(rows)} volumes, volume Dice {rows[:, 0].mean():.3f}, without the slab ties "
                  f"{rows[:, 1].mean():.3f}; ties hold {rows[:, 3].sum() / max(rows[:, 2].sum(), 1):.0%} "
                  "of the wrong pixels")
    except InputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
