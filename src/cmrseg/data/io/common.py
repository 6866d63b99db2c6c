"""Small helpers shared by the format readers."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from cmrseg.data.validation import check_spacing
from cmrseg.data.volume import Volume
from cmrseg.errors import CmrsegError, InputError

_FRAME_RE = re.compile(r"^(?P<case>.+?)_frame(?P<frame>\d+)$")
_PHASE_RE = re.compile(r"^(?P<case>.+?)[_-](?P<phase>ED|ES)$", re.IGNORECASE)

NIFTI_SUFFIXES = (".nii.gz", ".nii")
H5_SUFFIXES = (".h5", ".hdf5")


def strip_suffix(path: Path) -> str:
    """File name without its image suffix (``.nii.gz``, ``.nii``, ``.h5``, ``.hdf5``)."""
    name = path.name
    for suffix in NIFTI_SUFFIXES + H5_SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return path.stem


def parse_frame_name(name: str) -> tuple[str, int | None]:
    """``patient001_frame12`` -> (``patient001``, 12); other names -> (name, None)."""
    m = _FRAME_RE.match(name)
    if m is None:
        return name, None
    return m.group("case"), int(m.group("frame"))


def parse_phase_name(name: str) -> tuple[str, str | None]:
    """``001_SA_ED`` -> (``001_SA``, ``ED``); ``case-es`` -> (``case``, ``ES``); other names ->
    (name, None): one phase's own file, as the M&Ms data ship ED and ES volumes."""
    m = _PHASE_RE.match(name)
    return (m.group("case"), m.group("phase").upper()) if m else (name, None)


def is_label_file(path: Path) -> bool:
    """A truth file stored beside its image: ``<name>_gt`` (``patient001_frame01_gt.nii.gz``)."""
    return strip_suffix(path).endswith("_gt")


def is_nifti(path: Path) -> bool:
    return path.name.lower().endswith(NIFTI_SUFFIXES)


def is_h5(path: Path) -> bool:
    return path.name.lower().endswith(H5_SUFFIXES)


def spacing_from_option(option: tuple[float, ...] | None) -> tuple[float, float, float] | None:
    """``--spacing SX SY [SZ]`` (column, row, slice; mm) -> (slice, row, column).

    Without SZ the slice spacing is NaN: in-plane work can proceed, volumes cannot.
    """
    if option is None:
        return None
    vals = [float(v) for v in option]
    if len(vals) not in (2, 3) or any(not np.isfinite(v) or v <= 0 for v in vals):
        raise CmrsegError(f"--spacing must be 2 or 3 positive numbers in mm (SX SY [SZ]), got "
                          f"{' '.join(f'{v:g}' for v in vals)}")
    sz = vals[2] if len(vals) == 3 else float("nan")
    return check_spacing((sz, vals[1], vals[0]), None, "option", allow_unknown_slice=True)  # type: ignore[return-value]


def fill_missing(pixels: np.ndarray, present: np.ndarray) -> None:
    """Fill every (frame, slice) without an image (``present`` ``[T, S]`` False; ``pixels``
    ``[T, S, H, W]``, in place) by linear interpolation between the nearest slices that have
    one at that frame (the nearest one at an end), so the networks see a continuous stack; the
    segmenter blanks these slices' masks, flags them and interpolates their areas."""
    for t in range(pixels.shape[0]):
        have = np.flatnonzero(present[t])
        for k in np.flatnonzero(~present[t]):
            below, above = have[have < k], have[have > k]
            if below.size and above.size:
                lo, hi = below.max(), above.min()
                w = (k - lo) / (hi - lo)
                pixels[t, k] = (1 - w) * pixels[t, lo] + w * pixels[t, hi]
            else:
                pixels[t, k] = pixels[t, (below.max() if below.size else above.min())]


def mark_blank_slices(volumes: list[Volume]) -> None:
    """A slice whose image is one value throughout (all zero: a slice a scanner or an export left
    blank) holds no image: it is added to its frame's ``meta["missing_slices"]`` and filled from
    its neighbours (:func:`fill_missing`), as a lost DICOM slice is, so its mask is left empty and
    the volumes interpolate its areas instead of counting a slice without heart. The slices are
    named (as the written mask's k) in the geometry's notes. A frame with no image is refused."""
    blanks: dict[int, list[int]] = {}
    for t, vol in enumerate(volumes):
        flat = vol.image.reshape(vol.num_slices, -1)
        blank = [int(k) for k in np.flatnonzero(flat.min(1) == flat.max(1))]
        if len(blank) == vol.num_slices:
            raise InputError(vol.path, f"frame {t + 1} is blank (every slice one value): no image to segment")
        if blank:
            present = np.ones((1, vol.num_slices), dtype=bool)
            present[0, blank] = False
            fill_missing(vol.image[None], present)
            vol.meta["missing_slices"] = sorted(set(vol.meta.get("missing_slices") or ()) | set(blank))
            blanks[t] = [vol.num_slices - 1 - k if vol.geometry.slices_reversed else k for k in blank]
    if not blanks:
        return
    every = len(blanks) == len(volumes) and len({tuple(b) for b in blanks.values()}) == 1
    where = "" if every or len(volumes) == 1 else f" in {len(blanks)} of {len(volumes)} frames"
    ks = sorted({k for b in blanks.values() for k in b})
    geometry = volumes[next(iter(blanks))].geometry
    geometry.notes = geometry.notes + (f"blank slice{'s' * (len(ks) > 1)} k={', '.join(map(str, ks))}{where}: "
                                       "treated as lost (mask empty, volumes interpolated)",)
