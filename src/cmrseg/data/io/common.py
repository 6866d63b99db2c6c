"""Small helpers shared by the format readers."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from cmrseg.data.validation import check_spacing
from cmrseg.errors import CmrsegError

_FRAME_RE = re.compile(r"^(?P<case>.+?)_frame(?P<frame>\d+)$")

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
