"""The paper's result layout: Table 1 (the compared models) and Table 2 (ablations) as
Markdown and CSV, rows named as in the paper, and the Fig. 4 example slices (the basal and
apical validation slices where the models disagree most)."""

from __future__ import annotations

import csv
import io

import numpy as np

from cmrseg.measures.levels import LEVELS, slice_levels
from cmrseg.measures.metrics import dice_per_class

TABLE1 = ["seg_ss", "seg_as", "det_seg", "seg_as+ref_as_mt"]
TABLE2 = ["seg_ss", "seg_ss+ref_ss", "seg_ss+ref_ss_mt", "seg_as", "seg_as_mt", "seg_as+ref_as", "seg_as+ref_as_mt"]
REF_INPUT_ABLATION = "seg_as+ref_as_mt@final"  # the proposed model, Ref stage trained on final Seg outputs only

LABELS_T1 = {"seg_ss": "SS SK-UNet", "seg_as": "AS After-UNet", "det_seg": "Two-stage: Det + Seg",
             "seg_as+ref_as_mt": "Proposed"}
LABELS_T2 = {"seg_ss": "Seg (SS)", "seg_ss+ref_ss": "Seg (SS) + Ref (SS w/o MT)",
             "seg_ss+ref_ss_mt": "Seg (SS) + Ref (SS w/ MT)", "seg_as": "Seg (AS)", "seg_as_mt": "Seg (AS + MT)",
             "seg_as+ref_as": "Seg (AS) + Ref (AS w/o MT)", "seg_as+ref_as_mt": "Seg (AS) + Ref (AS w/ MT)",
             REF_INPUT_ABLATION: "Seg (AS) + Ref (AS w/ MT), Ref trained on final Seg outputs only"}
ORDER = TABLE1 + [m for m in TABLE2 + [REF_INPUT_ABLATION] if m not in TABLE1]


def label(run: str) -> str:
    """A run's row name: Table 1's where it has one, else Table 2's, else the run name."""
    return LABELS_T1.get(run) or LABELS_T2.get(run, run)


def table1_rows(summaries: dict) -> list[tuple[str, dict]]:
    return [(LABELS_T1[m], summaries[m]) for m in TABLE1 if m in summaries]


def table2_rows(summaries: dict) -> list[tuple[str, dict]]:
    """Table 2's rows, or none when no run beyond Table 1's finished."""
    if not any(m in summaries for m in TABLE2 if m not in TABLE1):
        return []
    return [(LABELS_T2[m], summaries[m]) for m in TABLE2 + [REF_INPUT_ABLATION] if m in summaries]


def table_csv(rows: list[tuple[str, dict]]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["model", "level", "RV", "MYO", "LV", "avg"])
    for name, s in rows:
        for lv in (*LEVELS, "volume"):
            r = s["levels"][lv]
            w.writerow([name, lv] + [f"{r[c]:.4f}" for c in ("RV", "MYO", "LV", "avg")])
    return buf.getvalue()


def fig4_examples(val_volumes, masks: dict[str, list[np.ndarray]], n_base: int = 2, n_apex: int = 1) -> list[dict]:
    """Fig. 4 rows: the basal and apical slices where the models disagree most (largest
    spread of the slice's mean Dice across models), one slice per volume."""
    cands = {"base": [], "apex": []}
    for i, vol in enumerate(val_volumes):
        for s, lv in enumerate(slice_levels(vol.label)):
            if lv not in cands or not vol.label[s].any():
                continue
            scores = [np.nanmean(np.nan_to_num(dice_per_class(m[i][s], vol.label[s]), nan=1.0)) for m in masks.values()]
            cands[lv].append((float(np.ptp(scores)) if len(scores) > 1 else 0.0, i, s))
    rows = []
    for lv, n in (("base", n_base), ("apex", n_apex)):
        used = set()
        for spread, i, s in sorted(cands[lv], reverse=True):
            if i in used or len(used) >= n:
                continue
            used.add(i)
            vol = val_volumes[i]
            rows.append({"image": vol.image[s], "masks": {k: v[i][s] for k, v in masks.items()},
                         "label": f"{lv}: {vol.name} slice {s}", "gt": vol.label[s]})
    return rows
