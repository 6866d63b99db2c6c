"""The one label map of the project (ACDC's convention) and helpers around it.

Every output file and summary states this map.
"""

from __future__ import annotations

BACKGROUND, RV, MYO, LV = 0, 1, 2, 3
#: label value -> name, in label order.
LABEL_MAP: dict[int, str] = {BACKGROUND: "background", RV: "RV", MYO: "MYO", LV: "LV"}
#: foreground class names in label order (RV=1, MYO=2, LV=3).
CLASS_NAMES: tuple[str, ...] = ("RV", "MYO", "LV")
NUM_CLASSES = 4  # including background

def label_map_json() -> dict[str, str]:
    """The label map as written into every summary (JSON keys must be strings)."""
    return {str(k): v for k, v in LABEL_MAP.items()}
