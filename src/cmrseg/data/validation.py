"""Checks that turn bad input into one clear error naming the file and the problem."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from cmrseg.errors import CmrsegError, InputError

#: plausible voxel sizes (mm) of a cardiac short-axis stack; outside them a header is wrong
#: (0 or 1 mm placeholders, metres for millimetres), and volumes would be wrong in silence
PLAUSIBLE_INPLANE_MM = (0.1, 5.0)
PLAUSIBLE_SLICE_MM = (0.5, 30.0)
#: largest image one file may hold (voxels, all frames; 400 MB as float32): with the two reader
#: processes' studies in flight and the model, ``cmrseg segment`` stays under about 2 GB
MAX_VOXELS = 100_000_000
#: largest stack (one frame) on its own grid or resampled (probabilities of 4 classes in float32:
#: 16 bytes a voxel, 256 MB)
MAX_STACK_VOXELS = 16_000_000


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
    """Validate a label map against its image as a file: its shape, integer values 0..255;
    return it as uint8. Which values it may hold depends on its label convention (``--labels``),
    which the readers do not know: :func:`cmrseg.labels.to_project_labels` checks them."""
    if tuple(label.shape) != tuple(image_shape):
        raise InputError(path, f"label shape {tuple(label.shape)} does not match image shape {tuple(image_shape)}")
    if not np.issubdtype(label.dtype, np.number) or np.issubdtype(label.dtype, np.complexfloating):
        raise InputError(path, f"label has non-real dtype {label.dtype}")
    if np.issubdtype(label.dtype, np.floating):
        if not np.isfinite(label).all() or not np.all(label == np.round(label)):
            raise InputError(path, "label has non-integer values")
    bad = np.setdiff1d(np.unique(label), np.arange(256))
    if bad.size:
        shown = ", ".join(f"{v:g}" for v in bad[:5].tolist()) + (" ..." if bad.size > 5 else "")
        raise InputError(path, f"label values [{shown}] outside 0..255: not a label map")
    return label.astype(np.uint8)


def check_spacing(spacing, where: str | Path | None, source: str,
                  allow_unknown_slice: bool = False) -> tuple[float, float, float]:
    """Validate a (slice, row, column) voxel size in mm from ``source`` (``header``,
    ``metadata.csv``, ``option``): finite, positive and plausible, else one clear error that
    names the file (``where``) and the way out (``--spacing``). With ``allow_unknown_slice``
    (``--spacing SX SY`` without SZ) the slice spacing may be NaN: volumes are then not
    computed, and outputs say so."""
    vals = tuple(float(v) for v in spacing)
    sz, sy, sx = vals
    fix = "give the voxel size with --spacing SX SY SZ (mm)" if source != "option" else "check the values"
    for name, v, (lo, hi) in (("row", sy, PLAUSIBLE_INPLANE_MM), ("column", sx, PLAUSIBLE_INPLANE_MM),
                              ("slice", sz, PLAUSIBLE_SLICE_MM)):
        if name == "slice" and allow_unknown_slice and np.isnan(v):
            continue
        if not np.isfinite(v) or v <= 0:
            problem = f"{source} {name} spacing is {v:g} mm: the voxel size is unknown; {fix}"
        elif not lo <= v <= hi:
            problem = (f"{source} {name} spacing {v:g} mm is outside {lo:g}-{hi:g} mm, not a cardiac "
                       f"short-axis stack's; {fix}")
        else:
            continue
        raise InputError(where, problem) if where is not None else CmrsegError(problem)
    return vals


def check_size(shape: tuple[int, ...], path: str | Path) -> None:
    """Refuse an image whose voxels would not fit a bounded working set (``MAX_VOXELS``)."""
    n = int(np.prod([int(v) for v in shape], dtype=np.int64))
    if n > MAX_VOXELS:
        raise InputError(path, f"image of shape {tuple(int(v) for v in shape)} has {n:,} voxels, more than the "
                               f"{MAX_VOXELS:,} cmrseg reads at once; crop or split it")
