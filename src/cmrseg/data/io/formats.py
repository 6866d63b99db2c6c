"""The format table: every image format the tools read and write, in one place.

Discovery (:mod:`cmrseg.data.io.discovery`), ``cmrseg segment`` (read, write masks) and
``cmrseg evaluate`` (read label maps) look formats up here and nowhere else, so adding a
format is one reader/writer module plus one :class:`Format` row in :data:`FORMATS`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from cmrseg.data.io.common import H5_SUFFIXES, NIFTI_SUFFIXES
from cmrseg.data.io.dicom import is_dicom_folder, looks_like_dicom, read_dicom
from cmrseg.data.io.h5 import read_h5_label_volumes, read_h5_volumes, write_h5_mask
from cmrseg.data.io.nifti import read_nifti, read_nifti_label_volumes, write_nifti_mask
from cmrseg.data.volume import Volume

Spacing = tuple[float, float, float] | None


@dataclass(frozen=True)
class Format:
    """One format: how to recognise, read and write it.

    ``read(path, slice_order, spacing)`` gives one :class:`Volume` per frame;
    ``write_mask(mask, like, path)`` writes a mask ``[S, H, W]`` (or ``[T, S, H, W]``) in
    ``like``'s geometry; ``read_label(path, slice_order)`` reads a label map alone, one :class:`Volume` per
    frame (None: not a label format); ``series``: files are grouped into series by their headers
    (DICOM), else one file is one study.
    """

    name: str  # Volume.fmt
    shown: str  # how messages name it
    suffixes: tuple[str, ...]  # lower-case file name endings; () when recognised by content
    read: Callable[[Path, str, Spacing], list[Volume]]
    write_mask: Callable[[np.ndarray, Volume, Path], Path]
    mask_suffix: str | None  # the mask file's ending; None: the input's own file name
    read_label: Callable[[Path, str], list[Volume]] | None = None
    series: bool = False
    content_check: Callable[[Path], bool] | None = None
    reads_folders: Callable[[Path], bool] | None = None

    def matches(self, path: Path) -> bool:
        if path.is_dir():
            return self.reads_folders is not None and self.reads_folders(path)
        if self.suffixes:
            return path.name.lower().endswith(self.suffixes)
        return path.is_file() and self.content_check is not None and self.content_check(path)

    def mask_name(self, like: Volume) -> str:
        return like.path.name if self.mask_suffix is None else like.name + self.mask_suffix


FORMATS: tuple[Format, ...] = (
    Format("nifti", ".nii, .nii.gz", NIFTI_SUFFIXES, read_nifti, write_nifti_mask, None, read_nifti_label_volumes),
    Format("h5", ".h5, .hdf5", H5_SUFFIXES, read_h5_volumes, write_h5_mask, None, read_h5_label_volumes),
    # DICOM in, NIfTI masks out (named after the series), in the series' geometry
    Format("dicom", "DICOM", (), read_dicom, write_nifti_mask, ".nii.gz", series=True, content_check=looks_like_dicom,
           reads_folders=is_dicom_folder),
)



def described(formats=None) -> str:
    """``.nii, .nii.gz, .h5, .hdf5, DICOM``: the formats as error messages name them."""
    return ", ".join(f.shown for f in (FORMATS if formats is None else formats))


def format_of(path: Path) -> Format | None:
    """The format of an image file (or DICOM series folder), None if none reads it. File
    endings are checked before content, so a ``.nii`` never pays for a DICOM header check."""
    by_suffix = [f for f in FORMATS if f.suffixes]
    for f in by_suffix + [f for f in FORMATS if not f.suffixes]:
        if f.matches(path):
            return f
    return None


def format_named(name: str) -> Format:
    return next(f for f in FORMATS if f.name == name)


def label_formats() -> list[Format]:
    return [f for f in FORMATS if f.read_label is not None]
