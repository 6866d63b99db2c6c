"""Optional mask clean-up after prediction (off by default: the paper's claim is that the
classifier-guided model needs none, and the evaluation measures the model as it is).

``largest_component``: per slice and class keep the largest 8-connected component
(``scipy.ndimage.label``), as nnU-Net's post-processing does in 3D.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

POSTPROCESS = ("none", "largest_component")
_EIGHT = np.ones((3, 3), dtype=bool)


def largest_component(mask: np.ndarray) -> np.ndarray:
    """``[S, H, W]`` labels -> the same with every (slice, class) reduced to its largest
    component; removed pixels become background."""
    out = mask.copy()
    for s in range(mask.shape[0]):
        for c in (1, 2, 3):
            m = mask[s] == c
            if not m.any():
                continue
            lab, n = ndimage.label(m, structure=_EIGHT)
            if n > 1:
                sizes = np.bincount(lab.ravel())[1:]
                out[s][m & (lab != 1 + int(np.argmax(sizes)))] = 0
    return out


def postprocess(mask: np.ndarray, method: str) -> np.ndarray:
    if method == "none":
        return mask
    if method == "largest_component":
        return largest_component(mask)
    raise ValueError(f"unknown post-processing {method!r}; choose from {POSTPROCESS}")
