"""How large the labelled heart is, against the Det+Seg crop: does a crop of the protocol's
size, centred on the heart, hold all of it?

    PYTHONPATH=src python experiments/heart_extent.py ../shared/data/acdc/train ../shared/data/acdc/val

Per volume, the side (mm) of the smallest square, in the image's rows and columns, that holds
every labelled pixel of every slice (RV, MYO, LV): what one crop per stack, as ``det_seg``
takes, must cover. Printed per split: the distribution and how many volumes exceed each
protocol's ``det_seg`` crop (``model_kwargs.crop`` canvas pixels x ``target_spacing``).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from cmrseg.data.io import load_labelled_dataset
from cmrseg.training.config import load_config


def heart_side_mm(label: np.ndarray, pixel_mm: tuple[float, float]) -> float:
    """Side (mm) of the smallest row/column-aligned square holding every labelled pixel of the
    stack ``label`` ``[S, H, W]``; 0 without labels."""
    m = label > 0
    rows, cols = np.flatnonzero(m.any(axis=(0, 2))), np.flatnonzero(m.any(axis=(0, 1)))
    if rows.size == 0:
        return 0.0
    return float(max((rows[-1] - rows[0] + 1) * pixel_mm[0], (cols[-1] - cols[0] + 1) * pixel_mm[1]))


def crop_mm(protocol: str) -> float:
    cfg = load_config(protocol=protocol, model="det_seg")
    return cfg.model_kwargs["crop"] * cfg.preprocess.target_spacing


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("splits", type=Path, nargs="+", help="labelled folders (as cmrseg evaluate reads them)")
    ap.add_argument("--protocols", nargs="+", default=["fast", "paper"])
    args = ap.parse_args()
    crops = {p: crop_mm(p) for p in args.protocols}
    print("| split | volumes | heart side (mm): median / 90th pct / max | largest | "
          + " | ".join(f"above the {p} crop ({c:.0f} mm)" for p, c in crops.items()) + " |")
    print("|---|---|---|---|" + "---|" * len(crops))
    for split in args.splits:
        vols = load_labelled_dataset(split)
        sides = np.array([heart_side_mm(v.label, v.geometry.inplane_spacing) for v in vols])
        big = vols[int(np.argmax(sides))].name
        print(f"| {split.name} | {len(vols)} | {np.median(sides):.0f} / {np.percentile(sides, 90):.0f} / "
              f"{sides.max():.0f} | {big} | " + " | ".join(str(int((sides > c).sum())) for c in crops.values()) + " |")


if __name__ == "__main__":
    main()
