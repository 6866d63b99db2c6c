"""The paper's "holes or fragments", as ``shared/docs/PROTOCOL.md`` defines them.

* fragment rate: share of predicted (slice, class) pairs whose mask has more than one
  8-connected component (``scipy.ndimage.label``);
* hole rate: share of slices with LV cavity or MYO predicted where the LV cavity, or LV
  cavity + MYO, encloses background (``scipy.ndimage.binary_fill_holes``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from cmrseg.labels import LV, MYO

_EIGHT = np.ones((3, 3), dtype=bool)


@dataclass
class TopologyCounts:
    fragmented_pairs: int = 0
    predicted_pairs: int = 0
    slices_with_holes: int = 0
    slices_with_lv_or_myo: int = 0

    def __add__(self, other: "TopologyCounts") -> "TopologyCounts":
        return TopologyCounts(*(a + b for a, b in zip(self.astuple(), other.astuple())))

    def astuple(self) -> tuple[int, int, int, int]:
        return (self.fragmented_pairs, self.predicted_pairs, self.slices_with_holes, self.slices_with_lv_or_myo)

    @property
    def fragment_rate(self) -> float:
        return self.fragmented_pairs / self.predicted_pairs if self.predicted_pairs else 0.0

    @property
    def hole_rate(self) -> float:
        return self.slices_with_holes / self.slices_with_lv_or_myo if self.slices_with_lv_or_myo else 0.0


def num_components(mask2d: np.ndarray) -> int:
    """8-connected components of a 2D boolean mask."""
    return int(ndimage.label(mask2d, structure=_EIGHT)[1])


def has_hole(mask2d: np.ndarray) -> bool:
    """Whether a 2D boolean mask encloses background."""
    return bool((ndimage.binary_fill_holes(mask2d) & ~mask2d).any())


def slice_topology(pred2d: np.ndarray) -> tuple[list[int], bool]:
    """(component count per class RV, MYO, LV; whether the slice has a hole)."""
    comps = [num_components(pred2d == c) for c in (1, 2, 3)]
    lv = pred2d == LV
    hole = False
    if lv.any() or (pred2d == MYO).any():
        hole = has_hole(lv) or has_hole(lv | (pred2d == MYO))
    return comps, hole


def topology_counts(pred: np.ndarray) -> TopologyCounts:
    """Counts over a ``[S, H, W]`` predicted stack."""
    t = TopologyCounts()
    for s in range(pred.shape[0]):
        comps, hole = slice_topology(pred[s])
        t.predicted_pairs += sum(c > 0 for c in comps)
        t.fragmented_pairs += sum(c > 1 for c in comps)
        if (pred[s] == LV).any() or (pred[s] == MYO).any():
            t.slices_with_lv_or_myo += 1
            t.slices_with_holes += int(hole)
    return t
