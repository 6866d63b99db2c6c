"""The myocardium at end-systole against end-diastole, in the experts' labels and in a model's
masks: does the model's end-systolic myocardial deficit follow the labels of the split?

    PYTHONPATH=src python experiments/myocardium_by_phase.py ../shared/data/acdc/train \
        [../shared/data/acdc/val ...] [--pred PRED_DIR]

The myocardium is tissue: its volume hardly changes over a heartbeat, yet expert contours give
more of it at ES than at ED (through-plane motion brings basal myocardium into the stack, and the
contracted wall is drawn thicker). For every patient of a labelled split (any layout
``cmrseg evaluate`` reads, ED and ES from its side files) the ratio ES / ED of the labelled MYO
voxels, summarised per split. With ``--pred`` (a ``cmrseg segment`` folder of the last split's
files), per patient the ratio in the masks and the signed MYO volume error at ED and at ES (mL,
prediction - truth), and the correlation over patients of the ES error with the truth's ratio:
a model that draws the training labels' usual ratio misses ES myocardium exactly where the
experts drew an unusually large one. docs/RESULTS.md ("Where the clinical bias came from")
reports it.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from cmrseg.data.io import load_labelled_dataset
from cmrseg.data.io.acdc import ed_es_pairs
from cmrseg.data.io.readers import read_label_volume
from cmrseg.labels import MYO


def myo_voxels(label: np.ndarray) -> int:
    """Voxels labelled MYO."""
    return int((label == MYO).sum())


def es_ed_ratio(ed: int, es: int) -> float:
    """ES over ED MYO voxels (the phases share a grid: voxels suffice); NaN without ED MYO."""
    return es / ed if ed else float("nan")


def split_rows(folder: Path, pred: Path | None = None) -> list[dict]:
    """One row per patient with both phases: ``patient``, ``group``, ``ratio`` (truth) and, with
    ``pred``, ``pred_ratio`` and the signed MYO errors ``ed_error_ml`` / ``es_error_ml``."""
    rows = []
    for patient, (ed, es) in ed_es_pairs(load_labelled_dataset(folder)).items():
        truth = [myo_voxels(v.label) for v in (ed, es)]
        row = {"patient": patient, "group": ed.meta.get("group", "?"), "ratio": es_ed_ratio(*truth)}
        if pred is not None:
            masks = [myo_voxels(read_label_volume(pred / v.path.name).label) for v in (ed, es)]
            row["pred_ratio"] = es_ed_ratio(*masks)
            for key, v, m, t in zip(("ed_error_ml", "es_error_ml"), (ed, es), masks, truth):
                row[key] = (m - t) * (v.geometry.voxel_volume_ml or float("nan"))
        rows.append(row)
    return rows


def summary(rows: list[dict]) -> str:
    """One line: the truth's ES / ED ratio over the split's patients."""
    r = np.array([row["ratio"] for row in rows])
    return (f"{len(r)} patients, ES / ED MYO voxels in the labels: mean {r.mean():.3f} (SD {r.std():.3f}), "
            f"median {np.median(r):.3f}, range {r.min():.3f}-{r.max():.3f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("splits", type=Path, nargs="+")
    ap.add_argument("--pred", type=Path, help="cmrseg segment folder of the last split")
    args = ap.parse_args()
    for folder in args.splits:
        pred = args.pred if folder == args.splits[-1] else None
        rows = split_rows(folder, pred)
        print(f"{folder}: {summary(rows)}")
        if pred is None:
            continue
        print("| patient | group | ES / ED truth | ES / ED mask | MYO error ED (mL) | MYO error ES (mL) |")
        print("|---|---|---|---|---|---|")
        for r in rows:
            print(f"| {r['patient']} | {r['group']} | {r['ratio']:.3f} | {r['pred_ratio']:.3f} | "
                  f"{r['ed_error_ml']:+.1f} | {r['es_error_ml']:+.1f} |")
        a = {k: np.array([r[k] for r in rows]) for k in ("ratio", "pred_ratio", "ed_error_ml", "es_error_ml")}
        print(f"{pred}: mask ratio mean {a['pred_ratio'].mean():.3f}; MYO error ED {a['ed_error_ml'].mean():+.2f}, "
              f"ES {a['es_error_ml'].mean():+.2f} mL; correlation of the ES error with the truth's ratio "
              f"{np.corrcoef(a['ratio'], a['es_error_ml'])[0, 1]:+.2f}, of the mask's ratio with the truth's "
              f"{np.corrcoef(a['ratio'], a['pred_ratio'])[0, 1]:+.2f}")


if __name__ == "__main__":
    main()
