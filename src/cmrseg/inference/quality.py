"""Quality control of a segmented study: flags that say where a human should look.

Per slice: a class missing on a mid-ventricular slice, a slice without heart between heart
slices (a gap), the classifier and the mask disagreeing (presence above 0.5 but an empty
mask), fragments (more than one 8-connected component) and holes. Per study: measures
outside loose adult physiological ranges (below), or no spacing (no volumes at all).
The ranges flag results for review; they are not diagnostic limits.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from cmrseg.evaluation.topology import slice_topology
from cmrseg.labels import CLASS_NAMES

#: measure -> (low, high): outside is flagged for review
PLAUSIBLE = {"LVEF (%)": (10.0, 85.0), "RVEF (%)": (10.0, 85.0), "LVM (g)": (30.0, 350.0),
             "LVEDV (mL)": (40.0, 450.0), "RVEDV (mL)": (40.0, 450.0)}
MIN_PIXELS = 5  # a "present" class with fewer mask pixels disagrees with its classifier


def slice_flags(mask: np.ndarray, class_probs: np.ndarray | None = None, frame: str = "") -> list[dict[str, Any]]:
    """Flags of one ``[S, H, W]`` mask (slices base -> apex)."""
    flags: list[dict[str, Any]] = []
    s_count = mask.shape[0]
    present = np.stack([(mask == c).reshape(s_count, -1).sum(1) for c in (1, 2, 3)], axis=1)  # [S, 3]
    heart = np.flatnonzero(present.sum(1) > 0)
    if heart.size == 0:
        return [{"frame": frame, "slice": None, "flag": "no_heart", "detail": "nothing segmented"}]
    mid = np.array_split(heart, 3)[1]
    for s in mid:
        for k, name in enumerate(CLASS_NAMES):
            if present[s, k] == 0:
                flags.append({"frame": frame, "slice": int(s), "flag": "class_missing_mid", "detail": name})
    for s in range(int(heart[0]) + 1, int(heart[-1])):
        if present[s].sum() == 0:
            flags.append({"frame": frame, "slice": int(s), "flag": "slice_gap", "detail": "no heart between heart slices"})
    if class_probs is not None:
        for s in range(s_count):
            for k, name in enumerate(CLASS_NAMES):
                if class_probs[s, k] > 0.5 and present[s, k] < MIN_PIXELS:
                    flags.append({"frame": frame, "slice": s, "flag": "classifier_mask_disagree",
                                  "detail": f"{name}: p={class_probs[s, k]:.2f}, {int(present[s, k])} px"})
    for s in heart:
        comps, hole = slice_topology(mask[s])
        for k, name in enumerate(CLASS_NAMES):
            if comps[k] > 1:
                flags.append({"frame": frame, "slice": int(s), "flag": "fragments", "detail": f"{name}: {comps[k]} pieces"})
        if hole:
            flags.append({"frame": frame, "slice": int(s), "flag": "hole", "detail": "LV or LV+MYO encloses background"})
    return flags


def measure_flags(measures: dict[str, float], spacing_known: bool) -> list[dict[str, Any]]:
    """Study-level flags from the clinical measures."""
    if not spacing_known:
        return [{"frame": "", "slice": None, "flag": "no_spacing", "detail": "volumes not computed"}]
    out = []
    for key, (lo, hi) in PLAUSIBLE.items():
        v = measures.get(key)
        if v is not None and np.isfinite(v) and not lo <= v <= hi:
            out.append({"frame": "", "slice": None, "flag": "implausible_measure",
                        "detail": f"{key} = {v:.1f} outside {lo:g}-{hi:g}"})
    return out
