"""Masks of a DICOM cine as a DICOM Segmentation object (``cmrseg segment --dicom-seg``).

A DICOM SEG is how a PACS, OHIF or 3D Slicer shows a segmentation on the images it was made
from: one binary segment per structure (RV, MYO, LV, with SNOMED CT codes and cmrseg named as
the algorithm), each frame referencing its image. A cine gets one SEG object for its ED and one
for its ES frame (the frames its measures come from), two instances of one SEG series.
Written with highdicom (the maintained library for DICOM SEG; nothing here encodes DICOM by
hand), from one series of single-frame MR images, the layout most scanners export; an
Enhanced MR file (one file of frames) is not a source it writes for yet, and highdicom takes
the sources of one SEG from one series, so a stack stored one series per slice gets none.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np

from cmrseg.atomic import atomic_path
from cmrseg.data.volume import Volume
from cmrseg.errors import InputError
from cmrseg.labels import CLASS_NAMES

#: patient and study attributes a SEG copies from its sources; anonymised exports may lack
#: some, which the copies read here get empty (DICOM type 2: present, may be empty)
_TYPE2 = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyDate", "StudyTime",
          "ReferringPhysicianName", "AccessionNumber", "StudyID")
SEG_SERIES_NUMBER = 9901  # the SEG's series number (high, away from the scanner's own)


def _segment_descriptions(algorithm: str, version: str) -> list:
    import highdicom as hd
    from pydicom.sr.codedict import codes

    algo = hd.AlgorithmIdentificationSequence(name=algorithm, version=version,
                                              family=codes.cid7162.ArtificialIntelligence)
    types = {"RV": codes.SCT.RightVentricle, "MYO": codes.SCT.LeftVentricleMyocardium, "LV": codes.SCT.LeftVentricle}
    return [hd.seg.SegmentDescription(segment_number=i + 1, segment_label=name,
                                      segmented_property_category=codes.SCT.AnatomicalStructure,
                                      segmented_property_type=types[name],
                                      algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
                                      algorithm_identification=algo)
            for i, name in enumerate(CLASS_NAMES)]


def _source(path: str):
    import pydicom

    ds = pydicom.dcmread(path, stop_before_pixels=True)
    for keyword in _TYPE2:
        if keyword not in ds:
            setattr(ds, keyword, "")
    return ds


def new_series_uid() -> str:
    """A UID for the SEG series (the ED and ES objects of one study share it)."""
    import highdicom as hd

    return str(hd.UID())


def write_dicom_seg(mask: np.ndarray, frame: Volume, path: str | Path, algorithm: str, version: str,
                    series_uid: str, instance: int = 1, phase: str = "") -> Path:
    """Write ``mask`` (``[S, H, W]`` of the cine frame ``frame``, base -> apex as cmrseg holds
    it; labels 1 RV, 2 MYO, 3 LV) as a DICOM SEG at ``path``, atomically, referencing the
    frame's images. ``algorithm`` and ``version`` name the model; ``series_uid``, ``instance``
    and ``phase`` (``ED``, ``ES``) place it in the SEG series. One frame a SEG: a SEG's frames
    are ordered by position, so one holding every time point of a cine is not written here.
    A series the SEG cannot reference (an Enhanced MR file, images without a frame of reference)
    is one :class:`InputError` naming it."""
    import highdicom as hd

    files = frame.meta.get("dicom_files")
    if files is None:
        raise InputError(frame.path, "DICOM SEG is written for series of single-frame images only, "
                                     "not for an Enhanced MR file")
    in_file_order = mask[::-1] if frame.geometry.slices_reversed else mask
    sources = [_source(f) for f in files if f is not None]
    planes = [in_file_order[k] for k, f in enumerate(files) if f is not None]
    pixels = np.stack([np.stack([p == c for c in range(1, len(CLASS_NAMES) + 1)], axis=-1) for p in planes])
    try:
        with warnings.catch_warnings():  # a source's patient name of one component (anonymised data) is not ours to fix
            warnings.filterwarnings("ignore", message=".*person name.*", category=UserWarning)
            seg = hd.seg.Segmentation(
                source_images=sources, pixel_array=pixels, segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
                segment_descriptions=_segment_descriptions(algorithm, version), series_instance_uid=series_uid,
                series_number=SEG_SERIES_NUMBER, sop_instance_uid=hd.UID(), instance_number=instance,
                manufacturer="cmrseg", manufacturer_model_name=algorithm, software_versions=version,
                device_serial_number="none", series_description=f"cmrseg {' '.join(CLASS_NAMES)}",
                content_label=f"CMRSEG{phase}", content_description=f"cmrseg {phase}".strip())
    except (ValueError, AttributeError, TypeError) as exc:  # highdicom's checks of the sources
        raise InputError(frame.path, f"cannot make a DICOM SEG of this series ({exc})") from None
    with atomic_path(path) as tmp:
        seg.save_as(tmp)
    return Path(path)
