"""Optional mask clean-up after prediction.

* ``largest_component``: per slice and class keep the largest 8-connected component
  (``scipy.ndimage.label``), as nnU-Net's post-processing does in 3D; removed pixels become
  background.
* ``fill_holes``: per slice, whatever the LV cavity encloses becomes LV (ACDC counts the
  papillary muscles as cavity), and whatever LV cavity + myocardium enclose becomes MYO
  (``scipy.ndimage.binary_fill_holes``): in a short-axis slice LV + MYO is a filled disc, so
  an enclosed pixel of another label is always an error (the protocol's hole rate counts them).
* ``clean``: ``largest_component``, then ``fill_holes``.
* ``auto`` (the ``segment`` default): the method recorded in the model's ``model.json``
  (``"postprocess"``), chosen for that model on the validation split with nnU-Net's rule
  (keep a clean-up only if it does not lower the mean volume Dice); ``none`` when absent.

Run folders carry no such choice, so training's validation and ``cmrseg reproduce`` measure
the networks' raw output.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from cmrseg.inference.options import POSTPROCESS_METHODS

POSTPROCESS = POSTPROCESS_METHODS  # named with the options (cmrseg.inference.options)
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


def fill_holes(mask: np.ndarray) -> np.ndarray:
    """``[S, H, W]`` labels -> pixels enclosed by LV become LV, pixels enclosed by LV + MYO
    become MYO (the same enclosure test as :func:`cmrseg.measures.topology.has_hole`)."""
    out = mask.copy()
    for s in range(mask.shape[0]):
        sl = out[s]
        for region, label in (((3,), 3), ((2, 3), 2)):
            m = np.isin(sl, region)
            if m.any():
                sl[ndimage.binary_fill_holes(m) & ~m] = label
    return out


_METHODS = {"largest_component": largest_component, "fill_holes": fill_holes,
            "clean": lambda m: fill_holes(largest_component(m))}


def postprocess(mask: np.ndarray, method: str) -> np.ndarray:
    """Apply ``method`` to a ``[S, H, W]`` label stack. The work is done on the in-plane box
    around all foreground plus a one-pixel background margin (the same components and
    enclosures as on the whole slice, at a fraction of the cost)."""
    if method == "none":
        return mask
    if method not in _METHODS:
        raise ValueError(f"unknown post-processing {method!r}; choose from {POSTPROCESS}")
    rows, cols = np.flatnonzero(mask.any(axis=(0, 2))), np.flatnonzero(mask.any(axis=(0, 1)))
    if rows.size == 0:
        return mask.copy()
    r0, r1 = max(rows[0] - 1, 0), rows[-1] + 2
    c0, c1 = max(cols[0] - 1, 0), cols[-1] + 2
    out = mask.copy()
    out[:, r0:r1, c0:c1] = _METHODS[method](mask[:, r0:r1, c0:c1])
    return out
