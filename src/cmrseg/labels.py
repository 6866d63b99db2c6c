"""The one label map of the project (ACDC's convention) and helpers around it.

Every output file and summary states this map. Other conventions (for example
ukbb_cardiac's LV=1, MYO=2, RV=3) are converted at the edge with :func:`convert_labels`.
"""

from __future__ import annotations

import numpy as np

BACKGROUND, RV, MYO, LV = 0, 1, 2, 3
#: label value -> name, in label order.
LABEL_MAP: dict[int, str] = {BACKGROUND: "background", RV: "RV", MYO: "MYO", LV: "LV"}
#: foreground class names in label order (RV=1, MYO=2, LV=3).
CLASS_NAMES: tuple[str, ...] = ("RV", "MYO", "LV")
NUM_CLASSES = 4  # including background

#: Known foreign conventions: name -> {foreign value: cmrseg value}.
CONVENTIONS: dict[str, dict[int, int]] = {
    "acdc": {0: 0, 1: 1, 2: 2, 3: 3},
    "ukbb": {0: 0, 1: LV, 2: MYO, 3: RV},
}


def label_map_json() -> dict[str, str]:
    """The label map as written into every summary (JSON keys must be strings)."""
    return {str(k): v for k, v in LABEL_MAP.items()}


def convert_labels(mask: np.ndarray, convention: str) -> np.ndarray:
    """Map a mask from a named convention (see :data:`CONVENTIONS`) to cmrseg's."""
    try:
        table = CONVENTIONS[convention]
    except KeyError as exc:
        raise ValueError(f"unknown label convention {convention!r}; known: {sorted(CONVENTIONS)}") from exc
    lut = np.zeros(max(table) + 1, dtype=np.uint8)
    for src, dst in table.items():
        lut[src] = dst
    if mask.max(initial=0) >= lut.size:
        raise ValueError(f"mask has value {int(mask.max())} outside the {convention} convention")
    return lut[mask]
