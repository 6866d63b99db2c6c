"""DICOM short-axis cine series, read with pydicom.

Slices are sorted along the slice normal (row cosine x column cosine) by the projection of
ImagePositionPatient, frames within each slice position by TriggerTime (InstanceNumber when
absent). The affine is built from ImagePositionPatient / ImageOrientationPatient /
PixelSpacing in DICOM's LPS and converted to RAS+ like NIfTI, so both formats share one
geometry convention.
"""

from __future__ import annotations

import re
from collections import defaultdict
from pathlib import Path

import numpy as np

from cmrseg.data.orientation import reverse_affine, should_reverse
from cmrseg.data.validation import check_image, check_size, check_spacing
from cmrseg.data.volume import Geometry, Volume
from cmrseg.errors import InputError

_LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


def _dicom_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))


def looks_like_dicom(path: Path) -> bool:
    """A file with the DICM preamble marker (or a .dcm name)."""
    if path.suffix.lower() == ".dcm":
        return True
    try:
        with open(path, "rb") as fh:
            fh.seek(128)
            return fh.read(4) == b"DICM"
    except OSError:
        return False


def series_name(folder: Path, description: str | None) -> str:
    """A file-system-safe name for a series: its description, else the folder's name."""
    base = description or folder.name
    return re.sub(r"[^A-Za-z0-9._-]+", "_", base).strip("_") or "series"


def read_dicom_series(
    folder: str | Path,
    slice_order: str = "auto",
    spacing_override: tuple[float, float, float] | None = None,
) -> list[Volume]:
    """Read one short-axis (cine) series from a folder: one :class:`Volume` per frame."""
    import pydicom

    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(folder, "DICOM series folder not found")
    headers = []
    for f in _dicom_files(folder):
        if not looks_like_dicom(f):
            continue
        try:
            ds = pydicom.dcmread(str(f), stop_before_pixels=True)
        except Exception as exc:
            raise InputError(f, f"cannot read DICOM header ({type(exc).__name__}: {exc})") from None
        if "PixelData" not in ds and not hasattr(ds, "Rows"):
            continue
        headers.append((f, ds))
    if not headers:
        raise InputError(folder, "no DICOM image files in folder")
    series = {str(ds.get("SeriesInstanceUID", "")) for _, ds in headers}
    if len(series) > 1:
        raise InputError(folder, f"folder holds {len(series)} DICOM series; give one series per folder")

    first = headers[0][1]
    for key in ("ImageOrientationPatient", "ImagePositionPatient", "PixelSpacing"):
        if key not in first:
            raise InputError(headers[0][0], f"DICOM lacks {key}: cannot place the slices")
    iop = np.array([float(v) for v in first.ImageOrientationPatient])
    row_cos, col_cos = iop[:3], iop[3:]
    normal = np.cross(row_cos, col_cos)
    by_position: dict[float, list] = defaultdict(list)
    for f, ds in headers:
        other = np.array([float(v) for v in ds.ImageOrientationPatient])
        if not np.allclose(other, iop, atol=1e-3):
            raise InputError(f, "slice orientation differs from the rest of the series")
        pos = float(np.dot([float(v) for v in ds.ImagePositionPatient], normal))
        by_position[round(pos, 2)].append((f, ds))
    positions = sorted(by_position)
    counts = {len(v) for v in by_position.values()}
    if len(counts) != 1:
        raise InputError(folder, f"slice positions have different numbers of frames {sorted(counts)}")
    num_frames = counts.pop()

    def frame_key(item):
        _, ds = item
        t = ds.get("TriggerTime")
        return (float(t) if t not in (None, "") else 0.0, int(ds.get("InstanceNumber", 0) or 0))

    ordered = [sorted(by_position[p], key=frame_key) for p in positions]  # [slice][frame]
    row_mm, col_mm = (float(v) for v in first.PixelSpacing)
    if len(positions) > 1:
        slice_mm = float(np.median(np.diff(positions)))
        grid = slice_grid(positions, slice_mm, folder)
    else:
        slice_mm = float(first.get("SpacingBetweenSlices", first.get("SliceThickness", 1.0)))
        grid = [0]
    if spacing_override is None:
        check_spacing((abs(slice_mm), row_mm, col_mm), headers[0][0], "DICOM header")
    origin = np.array([float(v) for v in ordered[0][0][1].ImagePositionPatient])
    lps = np.eye(4)
    lps[:3, 0] = row_cos * col_mm
    lps[:3, 1] = col_cos * row_mm
    lps[:3, 2] = normal * slice_mm
    lps[:3, 3] = origin
    affine = _LPS_TO_RAS @ lps

    num_slices = grid[-1] + 1
    check_size((num_frames, num_slices, int(first.Rows), int(first.Columns)), folder)
    pixels = np.empty((num_frames, num_slices, int(first.Rows), int(first.Columns)), dtype=np.float32)
    for k, frames in zip(grid, ordered):
        for t, (f, _) in enumerate(frames):
            try:
                ds = pydicom.dcmread(str(f))
                arr = ds.pixel_array.astype(np.float32)
            except Exception as exc:
                raise InputError(f, f"cannot decode DICOM pixels ({type(exc).__name__}: {exc})") from None
            if arr.shape != pixels.shape[2:]:
                raise InputError(f, f"image size {arr.shape} differs from the series' {pixels.shape[2:]}")
            slope = float(ds.get("RescaleSlope", 1.0) or 1.0)
            intercept = float(ds.get("RescaleIntercept", 0.0) or 0.0)
            pixels[t, k] = arr * slope + intercept
    missing = sorted(set(range(num_slices)) - set(grid))
    fill_missing_slices(pixels, grid)
    check_image(pixels, folder, allow_4d=True)

    if spacing_override is not None:
        spacing, source = spacing_override, "option"
    else:
        spacing, source = (abs(slice_mm), row_mm, col_mm), "header"
    reverse = should_reverse(affine, slice_order)
    geometry = Geometry(
        spacing=spacing,
        affine=reverse_affine(affine, num_slices) if reverse else affine,
        spacing_source=source,
        slices_reversed=reverse,
        header=None,
    )
    name = series_name(folder, str(first.get("SeriesDescription", "")) or None)
    volumes = []
    for t in range(num_frames):
        stack = pixels[t][::-1] if reverse else pixels[t]
        trig = ordered[0][t][1].get("TriggerTime")
        meta = {"frame_index": t, "num_frames": num_frames,
                "trigger_time_ms": float(trig) if trig not in (None, "") else None,
                "patient": str(first.get("PatientID", "")) or None,
                # in-memory (base -> apex) indices of slice positions absent from the series
                "missing_slices": [num_slices - 1 - k for k in missing][::-1] if reverse else missing}
        volumes.append(Volume(np.ascontiguousarray(stack), geometry, folder, name, "dicom", meta=meta))
    return volumes


def slice_grid(positions: list[float], step: float, folder: Path, tolerance: float = 0.1) -> list[int]:
    """Index of each sorted slice position on a regular grid of ``step`` mm. A gap of a whole
    number of steps is a missing slice position (its index is skipped, so the slices after it
    keep their place in the geometry); any other irregular spacing is refused."""
    grid = [0]
    for d in np.diff(positions):
        n = d / step
        if abs(n - round(n)) > tolerance or round(n) < 1:
            raise InputError(folder, f"irregular slice positions (steps {np.round(np.diff(positions), 2).tolist()} mm): "
                                     "not one short-axis stack")
        grid.append(grid[-1] + int(round(n)))
    if grid[-1] + 1 > 2 * len(positions):
        raise InputError(folder, f"{grid[-1] + 1 - len(positions)} of {grid[-1] + 1} slice positions are missing")
    return grid


def fill_missing_slices(pixels: np.ndarray, grid: list[int]) -> None:
    """Fill the slice positions absent from ``grid`` (``[T, S, H, W]``, in place) by linear
    interpolation between the nearest present slices, so the networks see a continuous stack;
    the segmenter blanks these slices' masks and flags them."""
    present = np.asarray(grid)
    for k in sorted(set(range(pixels.shape[1])) - set(grid)):
        lo, hi = present[present < k].max(), present[present > k].min()
        w = (k - lo) / (hi - lo)
        pixels[:, k] = (1 - w) * pixels[:, lo] + w * pixels[:, hi]


def write_dicom_series(
    frames: np.ndarray,
    affine_ras: np.ndarray,
    folder: str | Path,
    description: str = "SAX cine",
    trigger_step_ms: float = 40.0,
) -> Path:
    """Write ``frames`` ([T, S, H, W] or [S, H, W]) as an MR DICOM series whose geometry is
    ``affine_ras`` (voxel (i, j, k) -> RAS+ mm). For the phantom and the tests."""
    import pydicom
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, generate_uid

    frames = np.asarray(frames)
    if frames.ndim == 3:
        frames = frames[None]
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    lps = np.linalg.inv(_LPS_TO_RAS) @ np.asarray(affine_ras, dtype=float)
    col_mm = float(np.linalg.norm(lps[:3, 0]))
    row_mm = float(np.linalg.norm(lps[:3, 1]))
    row_cos = lps[:3, 0] / col_mm
    col_cos = lps[:3, 1] / row_mm
    lo, hi = float(frames.min()), float(frames.max())
    scale = 4095.0 / (hi - lo) if hi > lo else 1.0
    series_uid, study_uid = generate_uid(), generate_uid()
    num_frames, num_slices = frames.shape[:2]
    for k in range(num_slices):
        position = lps[:3, 3] + lps[:3, 2] * k
        for t in range(num_frames):
            meta = FileMetaDataset()
            meta.MediaStorageSOPClassUID = MRImageStorage
            meta.MediaStorageSOPInstanceUID = generate_uid()
            meta.TransferSyntaxUID = ExplicitVRLittleEndian
            path = folder / f"IM_{k:03d}_{t:03d}.dcm"
            ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
            ds.SOPClassUID = MRImageStorage
            ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
            ds.Modality = "MR"
            ds.PatientID = "PHANTOM"
            ds.StudyInstanceUID, ds.SeriesInstanceUID = study_uid, series_uid
            ds.SeriesDescription = description
            ds.InstanceNumber = k * num_frames + t + 1
            ds.TriggerTime = f"{t * trigger_step_ms:.1f}"
            ds.ImagePositionPatient = [f"{v:.6f}" for v in position]
            ds.ImageOrientationPatient = [f"{v:.8f}" for v in np.concatenate([row_cos, col_cos])]
            ds.PixelSpacing = [f"{row_mm:.6f}", f"{col_mm:.6f}"]
            ds.SliceThickness = f"{np.linalg.norm(lps[:3, 2]):.6f}"
            ds.Rows, ds.Columns = frames.shape[2], frames.shape[3]
            ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
            ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
            ds.RescaleSlope, ds.RescaleIntercept = f"{1.0 / scale:.10g}", f"{lo:.10g}"
            pix = np.round((frames[t, k] - lo) * scale).astype(np.uint16)
            ds.PixelData = pix.tobytes()
            pydicom.dcmwrite(str(path), ds, enforce_file_format=True)
    return folder
