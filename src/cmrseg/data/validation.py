"""Checks that turn bad input into one clear error naming the file and the problem."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from cmrseg.errors import InputError
from cmrseg.labels import NUM_CLASSES


def check_image(image: np.ndarray, path: str | Path, allow_4d: bool = False, inplane_axes: tuple[int, int] = (-2, -1)) -> None:
    """Raise :class:`InputError` unless ``image`` is a finite, non-constant 3D (or 4D) stack.

    ``inplane_axes``: the row/column axes as stored ((-2, -1) for ``[S, H, W]``, (0, 1) for
    NIfTI's ``[X, Y, Z(, T)]``)."""
    ndims = (3, 4) if allow_4d else (3,)
    if image.ndim not in ndims:
        want = "a 3D stack or a 4D cine" if allow_4d else "a 3D stack (slices, rows, columns)"
        raise InputError(path, f"expected {want}, got a {image.ndim}D image of shape {tuple(image.shape)}")
    if min(image.shape) < 1:
        raise InputError(path, f"image is empty, shape {tuple(image.shape)}")
    inplane = tuple(image.shape[a] for a in inplane_axes)
    if min(inplane) < 16:
        raise InputError(path, f"in-plane size {inplane} is too small for a short-axis slice")
    if not np.issubdtype(image.dtype, np.number) or np.issubdtype(image.dtype, np.complexfloating):
        raise InputError(path, f"image has non-real dtype {image.dtype}")
    if np.issubdtype(image.dtype, np.floating) and not np.isfinite(image).all():
        n = int((~np.isfinite(image)).sum())
        raise InputError(path, f"image contains {n} NaN or infinite values")
    lo, hi = image.min(), image.max()
    if lo == hi:
        raise InputError(path, f"image has constant intensity {float(lo):g}: nothing to segment")


def check_label(label: np.ndarray, image_shape: tuple[int, ...], path: str | Path) -> np.ndarray:
    """Validate a ground-truth mask against its image; return it as uint8."""
    if tuple(label.shape) != tuple(image_shape):
        raise InputError(path, f"label shape {tuple(label.shape)} does not match image shape {tuple(image_shape)}")
    if np.issubdtype(label.dtype, np.floating):
        if not np.isfinite(label).all() or not np.all(label == np.round(label)):
            raise InputError(path, "label has non-integer values")
    bad = np.setdiff1d(np.unique(label), np.arange(NUM_CLASSES))
    if bad.size:
        raise InputError(path, f"label values {bad.tolist()} outside 0..3 (0 bg, 1 RV, 2 MYO, 3 LV)")
    return label.astype(np.uint8)
