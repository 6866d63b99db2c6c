"""One structure's pixels, truth / prediction, on chosen slices, for several predictions side by side:
do two models make the same call on a slice (the structure there or not)?

    PYTHONPATH=src python experiments/slice_pixels.py GT_DIR PRED_DIR [PRED_DIR ...] \
        --slices patient087_frame02:0 patient085_frame02:0 [--structure RV]

GT_DIR and PRED_DIR as for ``cmrseg evaluate`` (its pairing of volumes); a slice is
``VOLUME:k``, k the stack's slice index (0 = base). docs/RESULTS.md ("Rule 15's idea on the CPU")
uses it on the five basal slices behind most of the default's RVEF error.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from cmrseg.evaluation.evaluate import paired_cases
from cmrseg.labels import CLASS_NAMES


def slice_pixels(gt_dir: Path, pred_dir: Path, slices: dict[str, int], structure: str) -> dict[str, tuple[int, int]]:
    """``{VOLUME:k: (truth pixels, predicted pixels)}`` of ``structure`` on ``slices``."""
    c = CLASS_NAMES.index(structure) + 1
    out = {}
    for case in paired_cases(pred_dir, gt_dir):
        volume = case.name.split(".")[0]
        if volume in slices:
            k = slices[volume]
            out[f"{volume}:{k}"] = (int((case.gt[k] == c).sum()), int((case.pred[k] == c).sum()))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("gt", type=Path)
    ap.add_argument("preds", type=Path, nargs="+")
    ap.add_argument("--slices", nargs="+", required=True, metavar="VOLUME:K")
    ap.add_argument("--structure", default="RV", choices=CLASS_NAMES)
    args = ap.parse_args()
    slices = {v: int(k) for v, k in (s.rsplit(":", 1) for s in args.slices)}
    names = [f"{v}:{k}" for v, k in slices.items()]
    print("| prediction | " + " | ".join(names) + " |\n|---|" + "---|" * len(names))
    for pred in args.preds:
        counts = slice_pixels(args.gt, pred, slices, args.structure)
        cells = [" / ".join(map(str, counts[n])) if n in counts else "-" for n in names]
        print(f"| {pred.name} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
