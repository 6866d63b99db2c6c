"""Where do the volume errors sit? Signed error (prediction - truth) of each structure's volume
by slice level (base / mid / apex, ``cmrseg.evaluation.levels``) and phase, mean per patient.

    PYTHONPATH=src python experiments/volume_error_by_level.py PRED_DIR GT_DIR

PRED_DIR as ``cmrseg segment`` writes it, GT_DIR as ``cmrseg evaluate`` takes it (same-named
label files; spacing and phase from the truth's side files). The level columns of a row add up
to that phase's volume bias in ``cmrseg evaluate``'s clinical table.
"""

import sys
from collections import defaultdict
from pathlib import Path

import numpy as np

from cmrseg.data.io.readers import read_label_volume
from cmrseg.evaluation.evaluate import label_files
from cmrseg.evaluation.levels import LEVELS, slice_levels
from cmrseg.labels import CLASS_NAMES


def main(pred_dir: str, gt_dir: str) -> None:
    gts, preds = label_files(Path(gt_dir)), label_files(Path(pred_dir))
    missing = sorted(set(gts) - set(preds))
    if missing:
        raise SystemExit(f"{pred_dir}: no prediction for {len(missing)} of {len(gts)} truth files: "
                         + ", ".join(missing[:5]))
    error = defaultdict(float)  # (phase, class, level) -> mL summed over volumes
    patients = set()
    for key in sorted(gts):
        g, p = read_label_volume(gts[key]), read_label_volume(preds[key])
        phase, ml = g.meta.get("phase"), g.geometry.voxel_volume_ml
        if phase not in ("ED", "ES") or ml is None:
            continue
        patients.add(g.meta.get("patient"))
        for k, level in enumerate(slice_levels(g.label)):
            for c, name in enumerate(CLASS_NAMES, start=1):
                error[phase, name, level or "no heart"] += ml * (int((p.label[k] == c).sum()) - int((g.label[k] == c).sum()))
    n = max(len(patients), 1)
    print(f"signed volume error (mL), mean over {n} patients")
    print("| phase | structure | " + " | ".join(LEVELS) + " | no heart | all |")
    print("|---|---|" + "---|" * (len(LEVELS) + 2))
    for phase in ("ED", "ES"):
        for name in CLASS_NAMES:
            cells = [error[phase, name, lv] / n for lv in (*LEVELS, "no heart")]
            print(f"| {phase} | {name} | " + " | ".join(f"{v:+.2f}" for v in cells) + f" | {np.sum(cells):+.2f} |")


if __name__ == "__main__":
    main(*sys.argv[1:])
