"""One entry point for every format: :func:`read_volumes`, :func:`write_mask`,
:func:`read_acdc_patient` and :func:`load_labelled_dataset`."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from cmrseg.data.io.acdc import is_acdc_patient_folder, phase_of_frame, read_info_cfg
from cmrseg.data.io.common import is_h5, is_nifti, parse_frame_name, strip_suffix
from cmrseg.data.io.dicom import looks_like_dicom, read_dicom_series
from cmrseg.data.io.h5 import read_h5, write_h5_mask
from cmrseg.data.io.nifti import read_nifti, read_nifti_label, write_nifti_mask
from cmrseg.data.volume import Study, Volume
from cmrseg.errors import InputError


def is_dicom_folder(path: Path) -> bool:
    return path.is_dir() and any(p.is_file() and looks_like_dicom(p) for p in path.iterdir())


def read_volumes(
    path: str | Path,
    spacing: tuple[float, float, float] | None = None,
    slice_order: str = "auto",
) -> list[Volume]:
    """Read any supported image: a list with one volume per time frame.

    Args:
        path: NIfTI file (3D or 4D), h5 file, or DICOM series folder.
        spacing: (slice, row, column) mm overriding the file's (or supplying the h5's).
        slice_order: ``auto`` | ``keep`` | ``reverse`` (see :mod:`cmrseg.data.orientation`).
    """
    path = Path(path)
    if not path.exists():
        raise InputError(path, "file not found")
    if path.is_dir():
        if is_dicom_folder(path):
            return read_dicom_series(path, slice_order, spacing)
        raise InputError(path, "folder holds no DICOM series (for a batch, pass it to 'cmrseg segment')")
    if is_nifti(path):
        return read_nifti(path, slice_order, spacing)
    if is_h5(path):
        volume = read_h5(path, spacing, with_label=False)
        if slice_order == "reverse":
            volume.image = np.ascontiguousarray(volume.image[::-1])
            volume.geometry.slices_reversed = True
        return [volume]
    if looks_like_dicom(path):  # one file stands for its series: the files of its folder with its SeriesInstanceUID
        from cmrseg.data.io.dicom import scan_series

        uid = next(iter(scan_series([path])), None)
        if uid is None:
            raise InputError(path, "DICOM file without image data")
        siblings = scan_series([f for f in sorted(path.parent.iterdir()) if f.is_file() and looks_like_dicom(f)])
        return read_dicom_series(path.parent, slice_order, spacing, files=[p for p, _ in siblings[uid]])
    raise InputError(path, "unknown format (expected .nii, .nii.gz, .h5 or a DICOM folder)")


def mask_output_path(like: Volume, out_dir: str | Path) -> Path:
    """Where :func:`write_mask` puts ``like``'s mask: the input's own file name and format
    (DICOM -> NIfTI named after the series)."""
    out_dir = Path(out_dir)
    if like.fmt == "nifti":
        return out_dir / like.path.name
    if like.fmt == "h5":
        return out_dir / like.path.name
    return out_dir / f"{like.name}.nii.gz"


def write_mask(masks: np.ndarray | Sequence[np.ndarray], like: Volume, out_dir: str | Path) -> Path:
    """Write masks in ``like``'s format and geometry (atomic); returns the path.

    ``masks``: ``[S, H, W]`` for one volume, or one mask per frame for a 4D NIfTI or DICOM
    cine (stacked into ``[T, S, H, W]``).
    """
    arr = np.asarray(masks, dtype=np.uint8)
    if arr.ndim == 4 and arr.shape[0] == 1:
        arr = arr[0]
    path = mask_output_path(like, out_dir)
    if like.fmt == "h5":
        if arr.ndim != 3:
            raise ValueError("an h5 volume has one frame")
        if like.geometry.slices_reversed:
            arr = arr[::-1]
        return write_h5_mask(arr, like, path)
    # NIfTI inputs keep their header; DICOM inputs get a header made from the affine.
    return write_nifti_mask(arr, like, path)


def read_acdc_patient(folder: str | Path, with_labels: bool = True, slice_order: str = "auto") -> Study:
    """An ACDC release patient folder as one study: its frame files (with ``_gt`` masks when
    present), or its 4D cine when no frame files exist, with ED/ES from ``Info.cfg``."""
    folder = Path(folder)
    if not is_acdc_patient_folder(folder):
        raise InputError(folder, "not an ACDC patient folder (no Info.cfg)")
    info = read_info_cfg(folder / "Info.cfg")
    frame_files = sorted(p for p in folder.iterdir() if is_nifti(p) and parse_frame_name(strip_suffix(p))[1] is not None)
    volumes: list[Volume] = []
    for p in frame_files:
        case, frame = parse_frame_name(strip_suffix(p))
        (vol,) = read_nifti(p, slice_order)
        vol.meta.update(info)
        vol.meta.update(patient=case, frame=frame, phase=phase_of_frame(frame, info))
        gt = p.with_name(strip_suffix(p) + "_gt.nii.gz")
        if with_labels and gt.is_file():
            vol.label = read_nifti_label(gt, vol)
        volumes.append(vol)
    if volumes:
        ed = next((i for i, v in enumerate(volumes) if v.meta.get("phase") == "ED"), None)
        es = next((i for i, v in enumerate(volumes) if v.meta.get("phase") == "ES"), None)
        return Study(folder.name, volumes, folder, "frames", ed, es, info)
    cines = sorted(folder.glob("*_4d.nii*"))
    if not cines:
        raise InputError(folder, "ACDC patient folder has neither frame files nor a _4d cine")
    volumes = read_nifti(cines[0], slice_order)
    for i, v in enumerate(volumes):
        v.meta.update(info)
        v.meta.update(patient=folder.name, frame=i + 1, phase=phase_of_frame(i + 1, info))
    ed = info["ed_frame"] - 1 if 0 < info["ed_frame"] <= len(volumes) else None
    es = info["es_frame"] - 1 if 0 < info["es_frame"] <= len(volumes) else None
    return Study(folder.name, volumes, cines[0], "cine", ed, es, info)


def load_labelled_dataset(root: str | Path, slice_order: str = "auto") -> list[Volume]:
    """Every labelled volume under ``root``, sorted by name.

    ``root`` may be a folder of SSL4MIS h5 files (with ``label``), a folder of ACDC release
    patient folders, or a folder of NIfTI images each with a ``<name>_gt.nii.gz`` beside it.
    """
    root = Path(root)
    if not root.is_dir():
        raise InputError(root, "dataset folder not found")
    volumes: list[Volume] = []
    h5_files = sorted(p for p in root.iterdir() if is_h5(p))
    patients = sorted(p for p in root.iterdir() if is_acdc_patient_folder(p))
    if h5_files:
        for p in h5_files:
            vol = read_h5(p)
            if vol.label is None:
                raise InputError(p, "no dataset 'label': a training/evaluation set needs labels")
            volumes.append(vol)
    elif patients:
        for folder in patients:
            study = read_acdc_patient(folder, slice_order=slice_order)
            volumes.extend(v for v in study.frames if v.label is not None)
    else:
        for gt in sorted(p for p in root.iterdir() if is_nifti(p) and strip_suffix(p).endswith("_gt")):
            image = gt.with_name(gt.name.replace("_gt.nii", ".nii"))
            if not image.is_file():
                raise InputError(gt, f"label without its image {image.name}")
            (vol,) = read_nifti(image, slice_order)
            vol.label = read_nifti_label(gt, vol)
            case, frame = parse_frame_name(vol.name)
            vol.meta.update(patient=case, frame=frame)
            volumes.append(vol)
    if not volumes:
        raise InputError(root, "no labelled volumes found (h5 files, ACDC patient folders or *_gt.nii.gz)")
    return volumes


def read_label_volume(path: str | Path, slice_order: str = "auto") -> Volume:
    """A label map alone (prediction or truth), as a :class:`Volume` whose ``label`` holds
    the mask (base -> apex) and whose ``image`` is empty. h5: dataset ``label``, spacing and
    case facts from ``metadata.csv``/``manifest.json`` beside it. NIfTI: header spacing,
    case facts from an ACDC ``Info.cfg`` beside it."""
    from cmrseg.data.io.h5 import h5_side_info, read_h5_label
    from cmrseg.data.io.nifti import _load, nifti_spacing
    from cmrseg.data.orientation import reverse_affine, should_reverse
    from cmrseg.data.validation import check_label
    from cmrseg.data.volume import Geometry

    path = Path(path)
    name = strip_suffix(path)
    if name.endswith("_gt"):
        name = name[:-3]
    if is_h5(path):
        label = read_h5_label(path)
        meta, spacing, source = h5_side_info(path.with_name(name + ".h5"))
        geometry = Geometry(spacing=spacing, spacing_source=source)
    elif is_nifti(path):
        img, data = _load(path)
        if data.ndim != 3:
            raise InputError(path, f"expected a 3D label, got shape {tuple(data.shape)}")
        label = check_label(data.transpose(2, 1, 0), data.shape[::-1], path)
        affine = np.asarray(img.affine, dtype=float)
        spacing, _ = nifti_spacing(path, img)
        reverse = should_reverse(affine, slice_order)
        if reverse:
            label = label[::-1]
        geometry = Geometry(spacing=spacing,
                            affine=reverse_affine(affine, label.shape[0]) if reverse else affine,
                            spacing_source="header", slices_reversed=reverse, header=img.header.copy())
        case, frame = parse_frame_name(name)
        meta = {"patient": case, "frame": frame}
        if (path.parent / "Info.cfg").is_file():
            info = read_info_cfg(path.parent / "Info.cfg")
            meta.update(info)
            meta["phase"] = phase_of_frame(frame, info)
    else:
        raise InputError(path, "unknown label format (expected .h5 or .nii/.nii.gz)")
    empty = np.zeros((label.shape[0], 0, 0), dtype=np.float32)
    return Volume(empty, geometry, path, name, "h5" if is_h5(path) else "nifti",
                  label=np.ascontiguousarray(label), meta=meta)
