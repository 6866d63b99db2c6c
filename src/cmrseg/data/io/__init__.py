"""Readers and writers: every format returns :class:`~cmrseg.data.volume.Volume` objects
(image + geometry) and masks are written back in exactly the input's geometry.

Formats (the table in :mod:`.formats`): NIfTI 3D stacks and 4D cines (:mod:`.nifti`), the
SSL4MIS h5 layout (:mod:`.h5`), DICOM short-axis cine series (:mod:`.dicom`); the ACDC
release layout and its side files (:mod:`.acdc`).
"""

from cmrseg.data.io.dicom import is_dicom_folder
from cmrseg.data.io.readers import load_labelled_dataset, read_volumes, write_mask

__all__ = ["read_volumes", "write_mask", "load_labelled_dataset", "is_dicom_folder"]
