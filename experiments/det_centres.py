"""Where Det+Seg puts its crop: the detector's heart mask turned into one crop centre per
stack, by each rule, against the labelled heart.

    PYTHONPATH=src python experiments/det_centres.py RUN ../shared/data/acdc/val [--rules union largest3d]

RUN: a ``det_seg`` run folder. On the run's canvas (its preprocessing), per rule: the stacks
whose crop leaves labelled heart pixels out, the share of the heart's pixels left out, the
crop centre's distance (mm) from the labelled heart's bounding-box centre, and the canvas
Dice (RV, MYO, LV, their mean; per stack, then averaged) of the model segmenting that crop.
Rules: ``union`` (the bounding box of every pixel the detector marks on any slice, as
``det_seg`` did until the fourteenth session), ``largest`` (the bounding box of the largest
connected piece of that union), ``largest3d`` (of the largest connected piece of the detections
in the stack as a volume, slices stacked: ``det_seg``'s rule since then), ``truth`` (the labelled heart's own box: the best a
detector could do).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from cmrseg.data.dataset import StackDataset
from cmrseg.evaluation.metrics import dice_per_class
from cmrseg.inference import Predictor
from cmrseg.models.det_seg import centers_from_mask, largest_piece
from cmrseg.models.outputs import class_argmax


def box_centre(mask: np.ndarray) -> tuple[int, int] | None:
    """(row, col) middle of the bounding box of the 2-D ``mask``, as ``det_seg`` rounds it."""
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    if rows.size == 0:
        return None
    return (rows[0] + rows[-1] + 1) // 2, (cols[0] + cols[-1] + 1) // 2


def centre(rule: str, detected: np.ndarray, label: np.ndarray) -> tuple[int, int]:
    """The crop centre of one stack (``detected``, ``label``: ``[S, H, W]``) by ``rule``."""
    if rule == "largest3d":  # what det_seg does
        return tuple(centers_from_mask(torch.from_numpy(detected), [detected.shape[0]])[0].tolist())
    union = detected.any(axis=0)
    mask = {"union": union, "largest": largest_piece(union), "truth": (label > 0).any(axis=0)}[rule]
    c = box_centre(mask)
    return c if c is not None else (label.shape[-2] // 2, label.shape[-1] // 2)


def left_out(label: np.ndarray, c: tuple[int, int], size: int) -> float:
    """Share of the labelled pixels of ``label`` ``[S, H, W]`` outside the ``size`` square crop
    ``det_seg`` takes around ``c``."""
    heart = label > 0
    r0, c0 = c[0] - size // 2, c[1] - size // 2
    inside = heart[:, max(r0, 0):max(r0 + size, 0), max(c0, 0):max(c0 + size, 0)].sum()
    return 1.0 - inside / max(heart.sum(), 1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("run", type=Path)
    ap.add_argument("data", type=Path, help="a labelled folder (e.g. ACDC val)")
    ap.add_argument("--rules", nargs="+", default=["union", "largest", "largest3d", "truth"])
    args = ap.parse_args()
    pred = Predictor.from_path(args.run, device="cpu", precision="fp32")
    model, mm = pred.model, pred.preprocess.target_spacing
    ds = StackDataset.from_folder(args.data, pred.preprocess, progress=False)
    rows = {r: [] for r in args.rules}
    for rec in ds.records:
        x = torch.from_numpy(rec.image).float()[:, None] / 255.0
        with torch.no_grad():
            detected = (class_argmax(model.detect(x)) == 1).numpy()
            truth_c = np.array(centre("truth", detected, rec.label))
            for rule in args.rules:
                c = centre(rule, detected, rec.label)
                out = model(x, centers=torch.tensor([c]))
                dice = dice_per_class(class_argmax(out.logits).numpy(), rec.label)
                rows[rule].append((left_out(rec.label, c, model.crop_size), np.linalg.norm(np.array(c) - truth_c) * mm,
                                   np.nanmean(dice), *dice))
    print(f"| rule | stacks with heart left out (of {len(ds.records)}) | heart left out (mean / max) | "
          "centre off the heart's (mm, mean / max) | canvas Dice RV / MYO / LV | mean |")
    print("|---|---|---|---|---|---|")
    for rule, r in rows.items():
        a = np.array(r, dtype=float)
        print(f"| {rule} | {int((a[:, 0] > 0).sum())} | {100 * a[:, 0].mean():.2f} / {100 * a[:, 0].max():.1f} % | "
              f"{a[:, 1].mean():.1f} / {a[:, 1].max():.1f} | {np.nanmean(a[:, 3]):.3f} / {np.nanmean(a[:, 4]):.3f} / "
              f"{np.nanmean(a[:, 5]):.3f} | {np.nanmean(a[:, 2]):.3f} |")


if __name__ == "__main__":
    main()
