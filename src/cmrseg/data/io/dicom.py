"""DICOM short-axis cine series, read with pydicom.

Slices are sorted along the slice normal (row cosine x column cosine) by the projection of
ImagePositionPatient, frames within each slice position by TriggerTime (InstanceNumber when
absent). The affine is built from ImagePositionPatient / ImageOrientationPatient /
PixelSpacing in DICOM's LPS and converted to RAS+ like NIfTI, so both formats share one
geometry convention.
"""

from __future__ import annotations

import contextlib
import logging
import re
import warnings
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cmrseg.data.orientation import APEX_DIRECTION_RAS, reverse_affine, should_reverse
from cmrseg.data.validation import check_image, check_size, check_spacing
from cmrseg.data.volume import Geometry, Volume
from cmrseg.errors import InputError

_LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])
LONG_AXIS_COS = 0.3  # |cos| of the slice normal to the apex axis below this: slices along the long axis


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


def is_dicom_folder(path: Path) -> bool:
    return path.is_dir() and any(p.is_file() and looks_like_dicom(p) for p in path.iterdir())


def series_of_file(path: Path) -> list[Path]:
    """The files of ``path``'s folder that share its SeriesInstanceUID (``path`` included)."""
    uid = next(iter(scan_series([path])), None)
    if uid is None:
        raise InputError(path, "DICOM file without image data")
    siblings = scan_series([f for f in sorted(path.parent.iterdir()) if f.is_file() and looks_like_dicom(f)])
    return [p for p, _ in siblings[uid]]


def read_dicom(path: Path, slice_order: str = "auto", spacing: tuple[float, float, float] | None = None) -> list[Volume]:
    """A DICOM series folder, or one file standing for its series: one volume per frame."""
    if path.is_dir():
        return read_dicom_series(path, slice_order, spacing)
    return read_dicom_series(path.parent, slice_order, spacing, files=series_of_file(path))


def series_name(folder: Path, description: str | None) -> str:
    """A file-system-safe name for a series: its description, else the folder's name."""
    base = description or folder.name
    return re.sub(r"[^A-Za-z0-9._-]+", "_", base).strip("_") or "series"


@contextlib.contextmanager
def quiet_pydicom():
    """pydicom warns (and logs) about every slightly non-conformant value, such as "Invalid
    value for VR UI", once per file: a flood on a real study. Silence it while reading."""
    logger = logging.getLogger("pydicom")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        logger.setLevel(level)


def scan_series(files: list[Path], pixels: bool = False) -> dict[str, list[tuple[Path, Any]]]:
    """DICOM image files grouped by SeriesInstanceUID: ``{uid: [(path, dataset), ...]}``
    (headers only unless ``pixels``). Files without image data (reports, DICOMDIR) are skipped;
    a file that cannot be parsed raises :class:`InputError` naming it."""
    import pydicom

    series: dict[str, list[tuple[Path, Any]]] = defaultdict(list)
    with quiet_pydicom():
        for f in files:
            if not looks_like_dicom(f):
                continue
            try:
                ds = pydicom.dcmread(str(f), stop_before_pixels=not pixels)
            except Exception as exc:
                raise InputError(f, f"cannot read DICOM header ({type(exc).__name__}: {exc})") from None
            if "PixelData" not in ds and not hasattr(ds, "Rows"):
                continue
            series[str(ds.get("SeriesInstanceUID", ""))].append((f, ds))
    return dict(series)


def classify_series(headers: list[tuple[Path, Any]]) -> str | None:
    """``None`` for a short-axis stack (a cine, or one phase of several slices); else why the
    series is not one (a localiser, a 2D or long-axis cine, ...), for the list of skipped series."""
    first = headers[0][1]
    if any(k not in first for k in ("ImageOrientationPatient", "ImagePositionPatient", "PixelSpacing")):
        return "no ImageOrientationPatient / ImagePositionPatient / PixelSpacing: cannot be placed"
    orientations = {tuple(np.round([float(v) for v in ds.ImageOrientationPatient], 2)) for _, ds in headers}
    if len(orientations) > 1:
        return f"{len(orientations)} slice orientations: a localiser or multi-plane series"
    iop = np.array([float(v) for v in first.ImageOrientationPatient])
    normal = np.cross(iop[:3], iop[3:])
    positions = {round(float(np.dot([float(v) for v in ds.ImagePositionPatient], normal)), 1) for _, ds in headers}
    frames = len(headers) / len(positions)
    if len(positions) == 1:
        kind = f"a 2D cine of {len(headers)} frames" if len(headers) > 1 else "a single image"
        return f"one slice position: {kind} (long-axis or single slice), not a short-axis stack"
    normal_ras = _LPS_TO_RAS[:3, :3] @ normal
    if abs(float(normal_ras @ APEX_DIRECTION_RAS)) < LONG_AXIS_COS:
        return "slices parallel to the heart's long axis: a long-axis stack, not short-axis"
    if frames < 1.5 and len(positions) < 3:
        return f"{len(headers)} images: too few for a short-axis stack"
    return None


def read_dicom_series(
    folder: str | Path,
    slice_order: str = "auto",
    spacing_override: tuple[float, float, float] | None = None,
    files: list[Path] | None = None,
) -> list[Volume]:
    """Read one short-axis (cine) series: one :class:`Volume` per frame. ``files``: the
    series' files (from discovery); default every DICOM file in ``folder``, which must then
    hold one series. A slice position or image the series lacks keeps its place: filled from
    its neighbours and listed in the frame's ``meta["missing_slices"]``."""
    folder = Path(folder)
    headers = _one_series(folder, files)
    layout = _SeriesLayout.of(headers, folder)
    if spacing_override is None:
        check_spacing(layout.spacing, headers[0][0], "DICOM header")
    num_slices = layout.grid[-1] + 1
    first = headers[0][1]
    shape = (layout.num_frames, num_slices, int(first.Rows), int(first.Columns))
    check_size(shape, folder)
    pixels, present = _read_pixels(layout, shape)
    check_image(pixels, folder, allow_4d=True)
    spacing, source = (spacing_override, "option") if spacing_override is not None else (layout.spacing, "header")
    reverse = should_reverse(layout.affine, slice_order)
    geometry = Geometry(spacing=spacing, affine=reverse_affine(layout.affine, num_slices) if reverse else layout.affine,
                        spacing_source=source, slices_reversed=reverse, header=None)
    name = series_name(folder, str(first.get("SeriesDescription", "")) or None)
    reference = next(frames for frames in layout.ordered if len(frames) == layout.num_frames)
    times = [_trigger(ds) for _, ds in reference]
    interval = float(np.median(np.diff(times))) if len(times) > 1 and None not in times else None
    volumes = []
    for t in range(layout.num_frames):
        missing = [int(k) for k in np.flatnonzero(~present[t])]
        meta = {"frame_index": t, "num_frames": layout.num_frames, "trigger_time_ms": times[t],
                "frame_interval_ms": interval, "patient": str(first.get("PatientID", "")) or None,
                # in-memory (base -> apex) indices of slices with no image in the series at this frame
                "missing_slices": sorted(num_slices - 1 - k for k in missing) if reverse else missing}
        stack = pixels[t][::-1] if reverse else pixels[t]
        volumes.append(Volume(np.ascontiguousarray(stack), geometry, folder, name, "dicom", meta=meta))
    return volumes


def _one_series(folder: Path, files: list[Path] | None) -> list[tuple[Path, Any]]:
    """(file, header with pixels) of the one series in ``files`` (default: ``folder``'s)."""
    if files is None:
        if not folder.is_dir():
            raise InputError(folder, "DICOM series folder not found")
        files = _dicom_files(folder)
    series = scan_series(files, pixels=True)
    if not series:
        raise InputError(folder, "no DICOM image files in folder")
    if len(series) > 1:
        raise InputError(folder, f"folder holds {len(series)} DICOM series; give one series per folder "
                                 "(cmrseg segment picks the short-axis ones from a folder of several)")
    headers = next(iter(series.values()))
    for key in ("ImageOrientationPatient", "ImagePositionPatient", "PixelSpacing"):
        if key not in headers[0][1]:
            raise InputError(headers[0][0], f"DICOM lacks {key}: cannot place the slices")
    return headers


@dataclass
class _SeriesLayout:
    """Where a series' images go: ``ordered[slice][image]`` (images of one slice position,
    in time order), ``slots[slice][image]`` -> frame, ``grid[slice]`` -> slice index (gaps
    kept), the RAS affine and the (slice, row, column) spacing in mm."""

    ordered: list[list[tuple[Path, Any]]]
    slots: list[list[int]]
    grid: list[int]
    num_frames: int
    affine: np.ndarray
    spacing: tuple[float, float, float]

    @classmethod
    def of(cls, headers: list[tuple[Path, Any]], folder: Path) -> "_SeriesLayout":
        first = headers[0][1]
        iop = np.array([float(v) for v in first.ImageOrientationPatient])
        row_cos, col_cos = iop[:3], iop[3:]
        normal = np.cross(row_cos, col_cos)
        by_position: dict[float, list] = defaultdict(list)
        for f, ds in headers:
            if not np.allclose([float(v) for v in ds.ImageOrientationPatient], iop, atol=1e-3):
                raise InputError(f, "slice orientation differs from the rest of the series")
            by_position[round(float(np.dot([float(v) for v in ds.ImagePositionPatient], normal)), 2)].append((f, ds))
        positions = sorted(by_position)
        num_frames = max(len(v) for v in by_position.values())
        ordered = [sorted(by_position[p], key=_frame_key) for p in positions]
        row_mm, col_mm = (float(v) for v in first.PixelSpacing)
        if len(positions) > 1:
            slice_mm = float(np.median(np.diff(positions)))
            grid = slice_grid(positions, slice_mm, folder)
        else:
            slice_mm = float(first.get("SpacingBetweenSlices", first.get("SliceThickness", 1.0)))
            grid = [0]
        lps = np.eye(4)
        lps[:3, 0], lps[:3, 1], lps[:3, 2] = row_cos * col_mm, col_cos * row_mm, normal * slice_mm
        lps[:3, 3] = [float(v) for v in ordered[0][0][1].ImagePositionPatient]
        return cls(ordered, frame_slots(ordered, num_frames, folder), grid, num_frames, _LPS_TO_RAS @ lps,
                   (abs(slice_mm), row_mm, col_mm))


def _frame_key(item) -> tuple[float, int]:
    _, ds = item
    t = ds.get("TriggerTime")
    return (float(t) if t not in (None, "") else 0.0, int(ds.get("InstanceNumber", 0) or 0))


def _read_pixels(layout: _SeriesLayout, shape: tuple[int, int, int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Rescaled pixels ``[T, S, H, W]`` (missing images filled) and which were present."""
    pixels = np.zeros(shape, dtype=np.float32)
    present = np.zeros(shape[:2], dtype=bool)
    for k, frames, frame_of in zip(layout.grid, layout.ordered, layout.slots):
        for (f, ds), t in zip(frames, frame_of):
            present[t, k] = True
            try:
                with quiet_pydicom():
                    arr = ds.pixel_array.astype(np.float32)
            except Exception as exc:
                raise InputError(f, f"cannot decode DICOM pixels ({type(exc).__name__}: {exc})") from None
            if arr.shape != pixels.shape[2:]:
                raise InputError(f, f"image size {arr.shape} differs from the series' {pixels.shape[2:]}")
            slope = float(ds.get("RescaleSlope", 1.0) or 1.0)
            intercept = float(ds.get("RescaleIntercept", 0.0) or 0.0)
            pixels[t, k] = arr * slope + intercept
    fill_missing(pixels, present)
    return pixels, present


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


def frame_slots(ordered: list[list], num_frames: int, folder: Path) -> list[list[int]]:
    """The frame index of every image of every slice position. A position with all frames
    takes them in order; one with fewer (an image lost) is matched to a full position's
    trigger times, nearest first; without trigger times it cannot be placed and is refused."""
    reference = next(frames for frames in ordered if len(frames) == num_frames)
    ref_times = [_trigger(ds) for _, ds in reference]
    slots = []
    for frames in ordered:
        if len(frames) == num_frames:
            slots.append(list(range(num_frames)))
            continue
        times = [_trigger(ds) for _, ds in frames]
        if any(t is None for t in times + ref_times):
            raise InputError(folder, f"a slice position has {len(frames)} of {num_frames} frames and no trigger "
                                     "times to place them")
        frame_of = [int(np.argmin([abs(t - r) for r in ref_times])) for t in times]
        if len(set(frame_of)) != len(frame_of):
            raise InputError(folder, f"a slice position has {len(frames)} of {num_frames} frames whose trigger "
                                     "times do not match the others'")
        slots.append(frame_of)
    return slots


def _trigger(ds) -> float | None:
    t = ds.get("TriggerTime")
    return float(t) if t not in (None, "") else None


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


def write_dicom_series(
    frames: np.ndarray,
    affine_ras: np.ndarray,
    folder: str | Path,
    description: str = "SAX cine",
    trigger_step_ms: float = 40.0,
) -> Path:
    """Write ``frames`` ([T, S, H, W] or [S, H, W]) as an MR DICOM series whose geometry is
    ``affine_ras`` (voxel (i, j, k) -> RAS+ mm). For the phantom and the tests."""
    from pydicom.uid import generate_uid

    frames = np.asarray(frames)
    if frames.ndim == 3:
        frames = frames[None]
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    lps = np.linalg.inv(_LPS_TO_RAS) @ np.asarray(affine_ras, dtype=float)
    col_mm = float(np.linalg.norm(lps[:3, 0]))
    row_mm = float(np.linalg.norm(lps[:3, 1]))
    lo, hi = float(frames.min()), float(frames.max())
    scale = 4095.0 / (hi - lo) if hi > lo else 1.0
    series = {"PatientID": "PHANTOM", "StudyInstanceUID": generate_uid(), "SeriesInstanceUID": generate_uid(),
              "SeriesDescription": description,
              "ImageOrientationPatient": [f"{v:.8f}" for v in np.concatenate([lps[:3, 0] / col_mm, lps[:3, 1] / row_mm])],
              "PixelSpacing": [f"{row_mm:.6f}", f"{col_mm:.6f}"], "SliceThickness": f"{np.linalg.norm(lps[:3, 2]):.6f}",
              "RescaleSlope": f"{1.0 / scale:.10g}", "RescaleIntercept": f"{lo:.10g}"}
    num_frames, num_slices = frames.shape[:2]
    for k in range(num_slices):
        position = lps[:3, 3] + lps[:3, 2] * k
        for t in range(num_frames):
            _write_mr_image(folder / f"IM_{k:03d}_{t:03d}.dcm", np.round((frames[t, k] - lo) * scale).astype(np.uint16),
                            {**series, "InstanceNumber": k * num_frames + t + 1,
                             "TriggerTime": f"{t * trigger_step_ms:.1f}",
                             "ImagePositionPatient": [f"{v:.6f}" for v in position]})
    return folder


def _write_mr_image(path: Path, pixels: np.ndarray, attributes: dict[str, Any]) -> None:
    """One 12-bit MR image file with ``attributes`` (its position, series, rescale)."""
    import pydicom
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = MRImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID = MRImageStorage
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "MR"
    for key, value in attributes.items():
        setattr(ds, key, value)
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.PixelData = pixels.tobytes()
    pydicom.dcmwrite(str(path), ds, enforce_file_format=True)
