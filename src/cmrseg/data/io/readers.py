"""One entry point for every format, through the format table (:mod:`.formats`):
:func:`read_volumes`, :func:`write_mask`, :func:`mask_output_path`, :func:`read_label_volumes`,
and :func:`load_labelled_dataset` for training and evaluation sets."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from cmrseg.data.io.acdc import acdc_label_path, case_facts, is_acdc_patient_folder, read_acdc_patient
from cmrseg.data.io.common import is_h5, is_nifti, parse_frame_name, strip_suffix
from cmrseg.data.io.formats import described, format_named, format_of, label_formats
from cmrseg.data.io.h5 import read_h5
from cmrseg.data.io.nifti import read_nifti, read_nifti_labels
from cmrseg.data.volume import Volume
from cmrseg.errors import InputError
from cmrseg.labels import check_convention, cine_phases, label_table, to_project_labels


def read_volumes(
    path: str | Path,
    spacing: tuple[float, float, float] | None = None,
    slice_order: str = "auto",
) -> list[Volume]:
    """Read any supported image: a list with one volume per time frame.

    Args:
        path: an image file of any format in the table, or a DICOM series folder.
        spacing: (slice, row, column) mm overriding the file's (or supplying the h5's).
        slice_order: ``auto`` | ``keep`` | ``reverse`` (see :mod:`cmrseg.data.orientation`).
    """
    path = Path(path)
    if not path.exists():
        raise InputError(path, "file not found")
    fmt = format_of(path)
    if fmt is None and path.is_dir():
        raise InputError(path, "folder holds no DICOM series (for a batch, pass it to 'cmrseg segment')")
    if fmt is None:
        raise InputError(path, f"unknown format (expected {described()})")
    return fmt.read(path, slice_order, spacing)


def mask_output_path(like: Volume, out_dir: str | Path) -> Path:
    """Where :func:`write_mask` puts ``like``'s mask: the input's own file name and format
    (DICOM -> NIfTI named after the series)."""
    return Path(out_dir) / format_named(like.fmt).mask_name(like)


def write_mask(masks: np.ndarray | Sequence[np.ndarray], like: Volume, out_dir: str | Path) -> Path:
    """Write masks in ``like``'s format and geometry (atomic); returns the path.

    ``masks``: ``[S, H, W]`` for one volume, or one mask per frame for a 4D NIfTI or DICOM
    cine (stacked into ``[T, S, H, W]``).
    """
    arr = np.asarray(masks, dtype=np.uint8)
    if arr.ndim == 4 and arr.shape[0] == 1:
        arr = arr[0]
    return format_named(like.fmt).write_mask(arr, like, mask_output_path(like, out_dir))


def load_labelled_dataset(root: str | Path, slice_order: str = "auto", labels: str | None = None) -> list[Volume]:
    """Every labelled volume under ``root``, sorted by name.

    ``root`` may be a folder of SSL4MIS h5 files (with ``label``), a folder of ACDC release
    patient folders, or a folder of NIfTI images each with a ``<name>_gt.nii.gz`` beside it
    (3D stacks, or 4D cines whose label cine labels some frames, as the M&Ms data do: one
    volume per labelled frame, ED and ES told by the LV's size, :func:`cmrseg.labels.cine_phases`).
    ``labels``: the data's label values (``--labels``, e.g. ``LV=1,MYO=2,RV=3``), turned into
    this project's; a set whose RV and LV look swapped is refused (:func:`cmrseg.labels.check_convention`).
    """
    root = Path(root)
    if not root.is_dir():
        raise InputError(root, "dataset folder not found")
    labelled: list[tuple[Volume, Path]] = []  # each volume with the file its label came from
    h5_files = sorted(p for p in root.iterdir() if is_h5(p))
    patients = sorted(p for p in root.iterdir() if is_acdc_patient_folder(p))
    if h5_files:
        for p in h5_files:
            vol = read_h5(p)
            if vol.label is None:
                raise InputError(p, "no dataset 'label': a training/evaluation set needs labels")
            labelled.append((vol, p))
    elif patients:
        for folder in patients:
            study = read_acdc_patient(folder, slice_order=slice_order)
            labelled.extend((v, acdc_label_path(v.path)) for v in study.frames if v.label is not None)
    else:
        for gt in sorted(p for p in root.iterdir() if is_nifti(p) and strip_suffix(p).endswith("_gt")):
            labelled.extend((vol, gt) for vol in _nifti_labelled_frames(gt, slice_order))
    if not labelled:
        raise InputError(root, "no labelled volumes found (h5 files, ACDC patient folders or *_gt.nii.gz)")
    if labels is not None:
        label_table(labels, root)  # a malformed --labels is refused once, naming the dataset
    for vol, label_file in labelled:
        vol.label = to_project_labels(vol.label, label_file, labels)
    volumes = [vol for vol, _ in labelled]
    check_convention([vol.label for vol in volumes], root, labels)
    _label_cine_phases(volumes)
    return volumes


def _nifti_labelled_frames(gt: Path, slice_order: str) -> list[Volume]:
    """The frames of the image beside ``gt`` (``<name>_gt.nii.gz``) that ``gt`` labels: a 3D
    stack, or each labelled frame of a 4D cine (the M&Ms layout: frames not labelled are all
    zero), named ``<name>_frameNN`` (1-based) so that every frame has its own name."""
    image = gt.with_name(gt.name.replace("_gt.nii", ".nii"))
    if not image.is_file():
        raise InputError(gt, f"label without its image {image.name}")
    frames = read_nifti(image, slice_order)
    out = []
    for t, (vol, label) in enumerate(zip(frames, read_nifti_labels(gt, frames))):
        if len(frames) > 1:
            if not label.any():
                continue
            vol.name = f"{vol.name}_frame{t + 1:02d}"
        vol.label = label
        case, frame = parse_frame_name(vol.name)
        vol.meta.update(patient=case, frame=frame)
        out.append(vol)
    return out


def _label_cine_phases(volumes: list[Volume]) -> None:
    """ED / ES of the labelled frames of 4D label cines, which carry no side file naming them
    (:func:`cmrseg.labels.cine_phases`); other volumes keep what their format gave."""
    cines: dict[Path, list[Volume]] = {}
    for vol in volumes:
        if vol.meta.get("num_frames", 1) > 1 and "phase" not in vol.meta:
            cines.setdefault(vol.path, []).append(vol)
    for frames in cines.values():
        for vol, phase in zip(frames, cine_phases([v.label for v in frames])):
            if phase:
                vol.meta["phase"] = phase


def read_label_volumes(path: str | Path, slice_order: str = "auto") -> list[Volume]:
    """A label map alone (prediction or truth), as :class:`Volume` s whose ``label`` holds
    the mask (base -> apex) and whose ``image`` is empty, named without ``_gt``: one for a
    3D map, one per frame of a 4D label cine (``meta["frame_index"]``); case facts from the
    format's side files or an ACDC ``Info.cfg`` beside it."""
    path = Path(path)
    fmt = format_of(path)
    if fmt is None or fmt.read_label is None:
        raise InputError(path, f"unknown label format (expected {described(label_formats())})")
    volumes = fmt.read_label(path, slice_order)
    for vol in volumes:
        if vol.name.endswith("_gt"):
            vol.name = vol.name[:-3]
        if "patient" not in vol.meta:
            vol.meta = {**case_facts(path.parent, vol.name), **vol.meta}
    return volumes


def read_label_volume(path: str | Path, slice_order: str = "auto") -> Volume:
    """:func:`read_label_volumes` of a map of one frame (a 4D label cine is refused)."""
    volumes = read_label_volumes(path, slice_order)
    if len(volumes) != 1:
        raise InputError(path, f"a label cine of {len(volumes)} frames where one label map was expected")
    return volumes[0]
