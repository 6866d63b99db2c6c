"""Slice order: every stack in cmrseg runs base -> apex.

The rule (documented in the README, overridable with ``slice_order``):

* ``auto`` (default): if the affine is *oblique* (the slice direction is more than about
  8 degrees from every scanner axis, as real double-oblique short-axis planning is), the
  slices are ordered so that the slice index moves towards the cardiac apex, taken as the
  patient's left-anterior-inferior direction, RAS+ ``(-1, 1, -1)/sqrt(3)``. If the affine is
  axis-aligned (a dummy orientation, as in the ACDC release and the SSL4MIS h5 files) or
  the slice direction is nearly perpendicular to that axis, the file order is kept: by the
  ACDC convention the first slice is the most basal.
* ``keep``: file order.  ``reverse``: reversed file order.
"""

from __future__ import annotations

import numpy as np

APEX_DIRECTION_RAS = np.array([-1.0, 1.0, -1.0]) / np.sqrt(3.0)
_AXIS_ALIGNED_COS = 0.99  # |component| of the unit slice direction above this: axis-aligned
_MIN_APEX_COS = 0.2  # |cos| to the apex axis below this: the anatomy rule cannot decide

SLICE_ORDERS = ("auto", "keep", "reverse")


def should_reverse(affine: np.ndarray | None, slice_order: str = "auto") -> bool:
    """Whether the file's slice order must be reversed to run base -> apex."""
    if slice_order not in SLICE_ORDERS:
        raise ValueError(f"slice_order must be one of {SLICE_ORDERS}, got {slice_order!r}")
    if slice_order == "keep":
        return False
    if slice_order == "reverse":
        return True
    if affine is None:
        return False
    direction = np.asarray(affine, dtype=float)[:3, 2]
    norm = np.linalg.norm(direction)
    if norm == 0:
        return False
    direction = direction / norm
    if np.abs(direction).max() > _AXIS_ALIGNED_COS:
        return False
    cos = float(direction @ APEX_DIRECTION_RAS)
    return cos < -_MIN_APEX_COS


def reverse_affine(affine: np.ndarray, num_slices: int) -> np.ndarray:
    """The affine of the same voxels after reversing the slice (k) axis."""
    flip = np.eye(4)
    flip[2, 2] = -1.0
    flip[2, 3] = num_slices - 1
    return np.asarray(affine, dtype=float) @ flip


ANATOMY_RATIO = 1.25  # heart area of one end third over the other's above this: that end is basal


def anatomy_reversed(masks: list[np.ndarray]) -> bool | None:
    """Whether segmented stacks (``[S, H, W]``, in memory order, all frames of a study) run
    apex -> base by the anatomy: the LV and its myocardium are larger towards the base, so the
    end third with clearly more LV + MYO area is basal. ``None`` when the anatomy cannot
    decide (fewer than 3 heart slices, or the two ends within ``ANATOMY_RATIO``)."""
    area = sum(((m == 2) | (m == 3)).reshape(m.shape[0], -1).sum(1).astype(float) for m in masks)
    heart = np.flatnonzero(area > 0)
    if heart.size < 3:
        return None
    first, _, last = np.array_split(area[heart[0]:heart[-1] + 1], 3)
    a, b = float(first.sum()), float(last.sum())
    if b > ANATOMY_RATIO * a:
        return True
    if a > ANATOMY_RATIO * b:
        return False
    return None
