"""Slice levels (base / mid / apex) exactly as ``shared/docs/PROTOCOL.md`` defines them.

For a ground-truth stack (slice 0 = base): the heart slices (any label 1..3) are split in
order into three contiguous groups with ``numpy.array_split(heart, 3)``; slices above the
first heart slice join base, slices below the last join apex.
"""

from __future__ import annotations

import numpy as np

LEVELS = ("base", "mid", "apex")


def slice_levels(gt: np.ndarray) -> list[str | None]:
    """Level name per slice of ``gt`` ``[S, H, W]``; all ``None`` if the stack has no heart."""
    num_slices = gt.shape[0]
    heart = np.flatnonzero(gt.reshape(num_slices, -1).any(axis=1))
    if heart.size == 0:
        return [None] * num_slices
    levels: list[str | None] = [None] * num_slices
    for name, group in zip(LEVELS, np.array_split(heart, 3)):
        for s in group:
            levels[int(s)] = name
    for s in range(int(heart[0])):
        levels[s] = "base"
    for s in range(int(heart[-1]) + 1, num_slices):
        levels[s] = "apex"
    # slices between heart slices inherit nothing from array_split only if gaps exist:
    # give an unlabelled gap slice the level of the nearest labelled slice above it
    for s in range(num_slices):
        if levels[s] is None:
            levels[s] = levels[s - 1]
    return levels


def level_indices(gt: np.ndarray) -> dict[str, np.ndarray]:
    """{level: slice indices} for ``gt`` ``[S, H, W]``."""
    levels = slice_levels(gt)
    return {name: np.array([s for s, lv in enumerate(levels) if lv == name], dtype=int) for name in LEVELS}
