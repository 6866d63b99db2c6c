"""DICOM short-axis cine series, read with pydicom.

Slices are sorted along the slice normal (row cosine x column cosine) by the projection of
ImagePositionPatient, frames within each slice position by TriggerTime (InstanceNumber when
absent). The affine is built from ImagePositionPatient / ImageOrientationPatient /
PixelSpacing in DICOM's LPS and converted to RAS+ like NIfTI, so both formats share one
geometry convention.

Enhanced (multi-frame) MR files, as Philips and newer Siemens scanners can export them, are split
into one header per frame (:class:`FrameHeader`) with the same attributes, so both kinds of
series are placed and ordered by the same code.
"""

from __future__ import annotations

import contextlib
import logging
import re
import warnings
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cmrseg.data.io.common import fill_missing
from cmrseg.data.orientation import APEX_DIRECTION_RAS, reverse_affine, should_reverse
from cmrseg.data.validation import check_image, check_size, check_spacing
from cmrseg.data.volume import Geometry, Volume
from cmrseg.errors import InputError

_LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])
PLACEMENT = ("ImageOrientationPatient", "ImagePositionPatient", "PixelSpacing")  # what places an image
POSITION_TOLERANCE_MM = 0.1  # images whose positions along the normal differ less: one slice
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
    series, unreadable = scan_series([path])
    if not series:
        raise InputError(path, unreadable[0][1] if unreadable else "DICOM file without image data")
    uid = next(iter(series))
    siblings, _ = scan_series([f for f in sorted(path.parent.iterdir()) if f.is_file() and looks_like_dicom(f)])
    return series_files(siblings[uid])


def series_files(headers: list[tuple[Path, Any]]) -> list[Path]:
    """The files of a series' headers, each once (a multi-frame file has a header per frame)."""
    return list(dict.fromkeys(p for p, _ in headers))


def read_dicom(path: Path, slice_order: str = "auto", spacing: tuple[float, float, float] | None = None) -> list[Volume]:
    """A DICOM series folder, or one file standing for its series: one volume per frame."""
    if path.is_dir():
        return read_dicom_series(path, slice_order, spacing)
    return read_dicom_series(path.parent, slice_order, spacing, files=series_of_file(path))


def series_name(folder: Path, description: str | None) -> str:
    """A file-system-safe name for a series: its description, else the folder's name; never
    hidden (no leading dot) and never a path (``../../x`` -> ``x``)."""
    base = description or folder.name
    return re.sub(r"[^A-Za-z0-9._-]+", "_", base).strip("_").lstrip("._-") or "series"


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


#: (file, why it was left out): a DICOM file that is not read, reported with the series it was in
Unreadable = tuple[Path, str]


def scan_series(files: list[Path], pixels: bool = False) -> tuple[dict[str, list[tuple[Path, Any]]], list[Unreadable]]:
    """DICOM images grouped by SeriesInstanceUID: ``({uid: [(path, dataset), ...]}, unreadable)``
    (headers only unless ``pixels``), one entry per image: a multi-frame file gives one
    :class:`FrameHeader` per frame. Files without image data (reports, DICOMDIR) are passed
    over, and so is a second copy of an image already read (:func:`_instance_key`: a study
    exported twice into one folder). A file that cannot be parsed (empty, truncated), whose
    frames cannot be described, or that lacks what places it (:data:`PLACEMENT`) while the
    rest of its series has it, is left out and listed in ``unreadable`` with the reason: one bad
    file never stops its series or the batch (its place is a lost image's)."""
    import pydicom

    series: dict[str, list[tuple[Path, Any]]] = defaultdict(list)
    unreadable: list[Unreadable] = []
    seen: set[tuple] = set()
    with quiet_pydicom():
        for f in files:
            if not looks_like_dicom(f):
                continue
            try:
                ds = pydicom.dcmread(str(f), stop_before_pixels=not pixels)
                if "PixelData" not in ds and not hasattr(ds, "Rows"):
                    continue
                images = frame_headers(ds, f) if is_multiframe(ds) else [ds]
            except InputError as exc:
                unreadable.append((f, exc.problem))
                continue
            except Exception as exc:  # pydicom raises many types for empty, truncated or corrupt files
                unreadable.append((f, f"cannot read DICOM header ({type(exc).__name__}: {exc})"))
                continue
            copy = _instance_key(ds)
            if copy is not None:
                if copy in seen:
                    continue
                seen.add(copy)
            series[str(ds.get("SeriesInstanceUID", ""))].extend((f, image) for image in images)
    for uid, headers in series.items():
        placed = [(f, ds) for f, ds in headers if all(k in ds for k in PLACEMENT)]
        if placed and len(placed) < len(headers):  # a series none of whose images can be placed is classified as such
            unreadable += [(f, f"lacks {', '.join(k for k in PLACEMENT if k not in ds)}: cannot be placed")
                           for f, ds in headers if not all(k in ds for k in PLACEMENT)]
            series[uid] = placed
    return dict(series), unreadable


def _instance_key(ds) -> tuple | None:
    """What two files of one image share: its SOPInstanceUID, number, position and trigger time
    (the UID alone is not enough, as some anonymisers reuse it); None without a UID."""
    uid = str(ds.get("SOPInstanceUID", "") or "")
    if not uid:
        return None
    return (uid, str(ds.get("InstanceNumber", "")), str(ds.get("ImagePositionPatient", "")),
            str(ds.get("TriggerTime", "")))


#: SOP classes whose images are the frames of one file, each described by functional groups
#: (DICOM PS3.3 A.36 Enhanced MR, A.36.4 Enhanced MR Color, A.71 Legacy Converted Enhanced MR, and
#: their CT and PET counterparts); a classic MR Image (1.2.840.10008.5.1.4.1.1.4) is one image
MULTIFRAME_SOP_CLASSES = {
    "1.2.840.10008.5.1.4.1.1.4.1": "Enhanced MR Image",
    "1.2.840.10008.5.1.4.1.1.4.3": "Enhanced MR Color Image",
    "1.2.840.10008.5.1.4.1.1.4.4": "Legacy Converted Enhanced MR Image",
    "1.2.840.10008.5.1.4.1.1.2.1": "Enhanced CT Image",
    "1.2.840.10008.5.1.4.1.1.2.2": "Legacy Converted Enhanced CT Image",
    "1.2.840.10008.5.1.4.1.1.128.1": "Legacy Converted Enhanced PET Image",
    "1.2.840.10008.5.1.4.1.1.130": "Enhanced PET Image",
}


def is_multiframe(ds) -> bool:
    """A file whose images are frames placed by functional groups, by what the standard says:
    its SOP Class is a multi-frame (enhanced) one, or it declares several frames
    (NumberOfFrames > 1). A classic single-frame image that also carries a
    PerFrameFunctionalGroupsSequence (archives and anonymisers add one) is the classic image
    it is: its placement is at its top level."""
    if str(ds.get("SOPClassUID", "")) in MULTIFRAME_SOP_CLASSES:
        return True
    try:
        return int(ds.get("NumberOfFrames", 1) or 1) > 1
    except (TypeError, ValueError):
        return False


# Where an enhanced MR file keeps, per frame or shared by all frames, what a classic MR image
# has at its top level: keyword -> (functional group sequence, keyword inside it).
_FUNCTIONAL_GROUPS = {
    "ImagePositionPatient": ("PlanePositionSequence", "ImagePositionPatient"),
    "ImageOrientationPatient": ("PlaneOrientationSequence", "ImageOrientationPatient"),
    "PixelSpacing": ("PixelMeasuresSequence", "PixelSpacing"),
    "SliceThickness": ("PixelMeasuresSequence", "SliceThickness"),
    "SpacingBetweenSlices": ("PixelMeasuresSequence", "SpacingBetweenSlices"),
    "TriggerTime": ("CardiacSynchronizationSequence", "NominalCardiacTriggerDelayTime"),
    "RescaleSlope": ("PixelValueTransformationSequence", "RescaleSlope"),
    "RescaleIntercept": ("PixelValueTransformationSequence", "RescaleIntercept"),
    "EchoTime": ("MREchoSequence", "EffectiveEchoTime"),
    "InversionTime": ("MRModifierSequence", "InversionTimes"),
}


class FrameHeader:
    """One frame of an enhanced (multi-frame) DICOM file, read like a classic image's header:
    ``get``, ``in`` and attribute access find a keyword of :data:`_FUNCTIONAL_GROUPS` in the
    frame's own functional groups, then in the shared ones, then at the file's top level;
    other keywords (series, patient, Rows, Columns) come from the file. ``InstanceNumber`` is
    the frame's number in the file (1-based), ``pixel_array`` decodes this frame only.

    Written here because the libraries that read enhanced files do something else: pydicom
    gives the functional groups as nested sequences, and nibabel's ``MultiframeWrapper``
    orders frames by their DimensionIndexValues, whose dimensions are the vendor's choice; as
    frame headers they go through the classic path's ordering by position and trigger time."""

    def __init__(self, ds, index: int):
        self._ds = ds
        self._index = index
        self._groups = [ds.PerFrameFunctionalGroupsSequence[index]]
        shared = ds.get("SharedFunctionalGroupsSequence")
        if shared:
            self._groups.append(shared[0])

    def _lookup(self, keyword: str):
        if keyword == "InstanceNumber":
            return self._index + 1
        if keyword in _FUNCTIONAL_GROUPS:
            sequence, inner = _FUNCTIONAL_GROUPS[keyword]
            for group in self._groups:
                items = group.get(sequence)
                if items and inner in items[0]:
                    return items[0].get(inner)
        return self._ds.get(keyword)

    def get(self, keyword: str, default=None):
        value = self._lookup(keyword)
        return default if value is None else value

    def __contains__(self, keyword: str) -> bool:
        return self._lookup(keyword) is not None

    def __getattr__(self, keyword: str):
        if keyword.startswith("_"):
            raise AttributeError(keyword)
        value = self._lookup(keyword)
        if value is None:
            raise AttributeError(f"frame {self._index + 1} has no {keyword}")
        return value

    @property
    def pixel_array(self) -> np.ndarray:
        from pydicom.pixels import pixel_array

        return pixel_array(self._ds, index=self._index)


def frame_headers(ds, path: Path) -> list[FrameHeader]:
    """One :class:`FrameHeader` per frame of an enhanced (multi-frame) file; a file whose frames
    are not each described by its functional groups raises :class:`InputError` naming it."""
    count = int(ds.get("NumberOfFrames", 0) or 0)
    described = len(ds.get("PerFrameFunctionalGroupsSequence") or [])
    if count < 1 or described != count:
        raise InputError(path, f"multi-frame DICOM with {count} frames but {described} per-frame descriptions")
    return [FrameHeader(ds, i) for i in range(count)]


def _normal(ds) -> np.ndarray:
    """An image's slice normal (LPS): row cosine x column cosine."""
    iop = np.array([float(v) for v in ds.ImageOrientationPatient])
    return np.cross(iop[:3], iop[3:])


def slice_positions(values: list[float], tolerance: float = POSITION_TOLERANCE_MM) -> list[float]:
    """The slice position of each image, from its position along the slice normal (mm): values
    within ``tolerance`` of the next are one position (the images of one slice may differ by
    float noise, which rounding would split where it crosses a rounding boundary), named by
    the smallest. Written here: grouping sorted numbers by their gaps is a few lines, and
    scipy's hierarchical clustering would hide the same rule."""
    rep, last, out = 0.0, None, [0.0] * len(values)
    for i in np.argsort(values, kind="stable"):
        if last is None or values[i] - last > tolerance:
            rep = values[i]
        out[i], last = rep, values[i]
    return out


def _positions(headers: list[tuple[Path, Any]]) -> list[float]:
    """Each image's slice position (:func:`slice_positions`) along the first image's normal."""
    normal = _normal(headers[0][1])
    return slice_positions([float(np.dot([float(v) for v in ds.ImagePositionPatient], normal)) for _, ds in headers])


def classify_series(headers: list[tuple[Path, Any]]) -> str | None:
    """``None`` for a short-axis stack (a cine, or one phase of several slices); else why the
    series is not one (a localiser, a 2D or long-axis cine, a mapping or late-enhancement
    series, ...), for the list of skipped series."""
    first = headers[0][1]
    if any(k not in first for k in PLACEMENT):
        return "no ImageOrientationPatient / ImagePositionPatient / PixelSpacing: cannot be placed"
    orientations = {tuple(np.round([float(v) for v in ds.ImageOrientationPatient], 2)) for _, ds in headers}
    if len(orientations) > 1:
        return f"{len(orientations)} slice orientations: a localiser or multi-plane series"
    positions = _positions(headers)
    frames = len(headers) / len(set(positions))
    if len(set(positions)) == 1:
        kind = f"a 2D cine of {len(headers)} frames" if len(headers) > 1 else "a single image"
        return f"one slice position: {kind} (long-axis or single slice), not a short-axis stack"
    normal_ras = _LPS_TO_RAS[:3, :3] @ _normal(first)
    if abs(float(normal_ras @ APEX_DIRECTION_RAS)) < LONG_AXIS_COS:
        return "slices parallel to the heart's long axis: a long-axis stack, not short-axis"
    if frames < 1.5 and len(set(positions)) < 3:
        return f"{len(headers)} images: too few for a short-axis stack"
    return _not_a_cine(headers, positions, frames)


def _not_a_cine(headers: list[tuple[Path, Any]], positions: list[float], frames: float) -> str | None:
    """Why a short-axis series is another sequence's rather than a cine's, or ``None``: the
    images of each slice position differ in inversion or echo time at one trigger time (T1 or
    T2/T2* mapping), or there is one image per position with an inversion time (late
    enhancement). Only such evidence counts: an ungated real-time cine has no trigger times (or
    all 0), and a series that carries none of these times is taken for what it looks like, a
    cine or one phase."""
    if frames >= 1.5:
        by_position: dict[float, list] = defaultdict(list)
        for (_, ds), position in zip(headers, positions):
            by_position[position].append(ds)
        kinds = [_mapping_kind(images) for images in by_position.values() if len(images) > 1]
        if kinds and all(kinds):
            return (f"{round(frames)} images per slice position at one trigger time, differing in "
                    f"{kinds[0]} time: a mapping series, not a cine")
        return None
    inversion = _ms(headers[0][1], "InversionTime")
    if inversion:
        return f"one image per slice position, inversion time {inversion:g} ms: late enhancement, not a cine"
    return None


def _ms(ds, keyword: str) -> float | None:
    """A time in ms (the first of several, as an enhanced file's InversionTimes holds)."""
    value = ds.get(keyword)
    if isinstance(value, Sequence) and not isinstance(value, (str, bytes)):
        value = value[0] if len(value) else None
    return float(value) if value not in (None, "") else None


def _mapping_kind(images: list) -> str | None:
    """``inversion`` or ``echo`` when the images of one slice position share a trigger time and
    differ in that time (a mapping acquisition), else ``None``."""
    triggers = [t for t in (_trigger(ds) for ds in images) if t is not None]
    if triggers and max(triggers) - min(triggers) >= 1.0:
        return None
    for kind, keyword in (("inversion", "InversionTime"), ("echo", "EchoTime")):
        times = {_ms(ds, keyword) for ds in images} - {None}
        if len(times) > 1:
            return kind
    return None


# Series of one slice position each that make a short-axis stack: a cine covers the ventricles
# in 8-14 slices, while a T1 or T2 mapping set (base, mid, apex: 3 series of a few images each)
# must not be taken for one.
MIN_SLICE_SERIES = 5


def slice_cine_key(headers: list[tuple[Path, Any]]) -> tuple | None:
    """What the series of a stack stored one slice position per series share (a short-axis cine
    acquired one breath-hold per slice, as many clinical protocols and UK Biobank store it):
    study, frame of reference, slice orientation, matrix, pixel size, and, so that another
    sequence's 2D series of the same plane (a T1 map's, say) is not taken for a slice of the
    cine, the sequence name, or where a scanner leaves it empty the number of frames (which a
    prospectively triggered cine may vary from slice to slice). ``None`` unless ``headers``
    are a 2D cine (one slice position, several frames) that can be placed."""
    first = headers[0][1]
    if len(headers) < 2 or any(k not in first for k in PLACEMENT):
        return None
    if len(set(_positions(headers))) > 1:
        return None
    return (str(first.get("StudyInstanceUID", "")), str(first.get("FrameOfReferenceUID", "")),
            tuple(np.round([float(v) for v in first.ImageOrientationPatient], 2)), int(first.Rows), int(first.Columns),
            tuple(round(float(v), 3) for v in first.PixelSpacing),
            str(first.get("SequenceName", "")).strip() or f"{len(headers)} frames")


def stack_slice_series(series: list[list[tuple[Path, Any]]]) -> tuple[list[list], list[tuple[list, str]]]:
    """Series of one slice position each that share :func:`slice_cine_key` -> (the series that
    make the stack, one per position, in slice order; [(a series left out, why)]). A position
    acquired twice keeps the series with the highest SeriesNumber (a repeat usually replaces a
    failed breath-hold).

    Written here because the DICOM readers at hand (pydicom, SimpleITK's series reader) read one
    series at a time; ukbb_cardiac's conversion stacks UK Biobank's ``CINE_segmented_SAX_b*``
    series the same way, by their names."""
    def number(headers) -> int:
        return int(headers[0][1].get("SeriesNumber", 0) or 0)

    by_position: dict[float, list] = defaultdict(list)
    for headers, position in zip(series, _positions([headers[0] for headers in series])):
        by_position[position].append(headers)
    kept, left = [], []
    for position in sorted(by_position):
        repeats = sorted(by_position[position], key=number)
        kept.append(repeats[-1])
        left += [(h, f"slice position {position:.1f} mm acquired again in series {number(repeats[-1])}, which is used")
                 for h in repeats[:-1]]
    return kept, left


def common_description(headers: list[tuple[Path, Any]]) -> str | None:
    """The series descriptions' common beginning, without trailing numbers or separators
    (``sa_cine 1``, ``sa_cine 2`` -> ``sa_cine``); ``None`` when they share none."""
    names = sorted({str(ds.get("SeriesDescription", "")) for _, ds in headers})
    prefix = names[0]
    for name in names[1:]:
        while not name.startswith(prefix):
            prefix = prefix[:-1]
    return prefix.rstrip("0123456789 _-.#") or None


def read_dicom_series(
    folder: str | Path,
    slice_order: str = "auto",
    spacing_override: tuple[float, float, float] | None = None,
    files: list[Path] | None = None,
    slice_series: bool = False,
) -> list[Volume]:
    """Read one short-axis (cine) series: one :class:`Volume` per frame. ``files``: the
    series' files (from discovery); default every DICOM file in ``folder``, which must then
    hold one series. ``slice_series``: ``files`` are a stack stored one slice position per
    series (:func:`stack_slice_series` chose them), read as one series. A slice position or
    image the series lacks keeps its place: filled from its neighbours and listed in the
    frame's ``meta["missing_slices"]``."""
    folder = Path(folder)
    headers, unreadable = _one_series(folder, files, slice_series)
    layout = _SeriesLayout.of(headers, folder)
    if spacing_override is None:
        check_spacing(layout.spacing, headers[0][0], "DICOM header")
    num_slices = layout.grid[-1] + 1
    first = headers[0][1]
    shape = (layout.num_frames, num_slices, int(first.Rows), int(first.Columns))
    check_size(shape, folder)
    pixels, present = _read_pixels(layout, shape, unreadable)
    check_image(pixels, folder, allow_4d=True)
    spacing, source = (spacing_override, "option") if spacing_override is not None else (layout.spacing, "header")
    reverse = should_reverse(layout.affine, slice_order)
    notes = tuple(f"{f.name} left out: {why}" for f, why in unreadable)
    geometry = Geometry(spacing=spacing, affine=reverse_affine(layout.affine, num_slices) if reverse else layout.affine,
                        spacing_source=source, slices_reversed=reverse, header=None, notes=notes)
    name = series_name(folder, common_description(headers) if slice_series else
                       str(first.get("SeriesDescription", "")) or None)
    reference = next(frames for frames in layout.ordered if len(frames) == layout.num_frames)
    times = [_trigger(ds) for _, ds in reference]
    image_files = _image_files(layout, num_slices)
    body = body_facts(first)  # height, weight, heart rate: BSA-indexed measures and cardiac output
    interval = float(np.median(np.diff(times))) if len(times) > 1 and None not in times else None
    volumes = []
    for t in range(layout.num_frames):
        missing = [int(k) for k in np.flatnonzero(~present[t])]
        meta = {"frame_index": t, "num_frames": layout.num_frames, "trigger_time_ms": times[t],
                "frame_interval_ms": interval, "patient": str(first.get("PatientID", "")) or None, **body,
                # in-memory (base -> apex) indices of slices with no image in the series at this frame
                "missing_slices": sorted(num_slices - 1 - k for k in missing) if reverse else missing,
                # the file of each slice k (file order) of this frame, for a DICOM SEG of the masks
                "dicom_files": image_files[t] if image_files is not None else None}
        stack = pixels[t][::-1] if reverse else pixels[t]
        volumes.append(Volume(np.ascontiguousarray(stack), geometry, folder, name, "dicom", meta=meta))
    return volumes


def body_facts(ds) -> dict[str, float]:
    """The subject's height (cm), weight (kg) and heart rate (bpm) where the header gives them:
    PatientSize (m), PatientWeight (kg), HeartRate, else 60000 / NominalInterval (the R-R
    interval, ms). Zero or unreadable values are left out; clinical measures judge plausibility."""
    out = {}
    for key, tag, scale in (("height_cm", "PatientSize", 100.0), ("weight_kg", "PatientWeight", 1.0),
                            ("heart_rate_bpm", "HeartRate", 1.0)):
        try:
            v = float(ds.get(tag) or 0.0) * scale
        except (TypeError, ValueError):
            continue
        if v > 0:
            out[key] = v
    try:
        rr = float(ds.get("NominalInterval") or 0.0)
    except (TypeError, ValueError):
        rr = 0.0
    if "heart_rate_bpm" not in out and rr > 0:
        out["heart_rate_bpm"] = 60000.0 / rr
    return out


def _image_files(layout: "_SeriesLayout", num_slices: int) -> list[list[str | None]] | None:
    """``[frame][slice k]``: the file of every image of a series of single-frame images (None
    where an image is missing); None for an Enhanced MR file (its images are frames of one)."""
    if any(isinstance(ds, FrameHeader) for frames in layout.ordered for _, ds in frames):
        return None
    files: list[list[str | None]] = [[None] * num_slices for _ in range(layout.num_frames)]
    for k, frames, frame_of in zip(layout.grid, layout.ordered, layout.slots):
        for (f, _), t in zip(frames, frame_of):
            files[t][k] = str(f)
    return files


#: what every image of one series must share: one subject, one examination, one frame of reference
IDENTITY = ("PatientID", "StudyInstanceUID", "FrameOfReferenceUID")


def _one_series(folder: Path, files: list[Path] | None,
                slice_series: bool = False) -> tuple[list[tuple[Path, Any]], list[Unreadable]]:
    """(file, header with pixels) of the one series in ``files`` (default: ``folder``'s), or
    of all of them with ``slice_series``, and the files left out (:func:`scan_series`). Images
    of two subjects, examinations or frames of reference under one series are refused."""
    if files is None:
        if not folder.is_dir():
            raise InputError(folder, "DICOM series folder not found")
        files = _dicom_files(folder)
    series, unreadable = scan_series(files, pixels=True)
    if not series:
        why = f" ({unreadable[0][0].name}: {unreadable[0][1]})" if unreadable else ""
        raise InputError(folder, f"no readable DICOM image files{why}")
    if len(series) > 1 and not slice_series:
        raise InputError(folder, f"folder holds {len(series)} DICOM series; give one series per folder "
                                 "(cmrseg segment picks the short-axis ones from a folder of several)")
    headers = [image for images in series.values() for image in images]
    for key in PLACEMENT:
        if key not in headers[0][1]:
            raise InputError(headers[0][0], f"DICOM lacks {key}: cannot place the slices")
    for key in IDENTITY:
        values = sorted({str(ds.get(key, "") or "") for _, ds in headers})
        if len(values) > 1:
            raise InputError(folder, f"one series holds images of {len(values)} different {key}s "
                                     f"({', '.join(v or '(empty)' for v in values[:3])}): images of different "
                                     "subjects or examinations; put each in its own folder")
    return headers, unreadable


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
        for (f, ds), position in zip(headers, _positions(headers)):
            if not np.allclose([float(v) for v in ds.ImageOrientationPatient], iop, atol=1e-3):
                raise InputError(f, "slice orientation differs from the rest of the series")
            by_position[position].append((f, ds))
        positions = sorted(by_position)
        for p in positions:
            _check_one_acquisition(by_position[p], p, folder)
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


def _check_one_acquisition(images: list[tuple[Path, Any]], position: float, folder: Path) -> None:
    """Refuse a slice position with two different images at one trigger time: the slice was
    acquired twice within the series, and which acquisition to measure is the user's call
    (across series the reader keeps the later one, :func:`stack_slice_series`). A position
    whose images all share one trigger time (a scanner that leaves it 0) is ordered by
    InstanceNumber instead, as before."""
    times = [_trigger(ds) for _, ds in images]
    if None in times or np.ptp(times) < 0.05:
        return
    repeated = sorted({round(t, 1) for t in times if sum(abs(t - u) < 0.05 for u in times) > 1})
    if repeated:
        raise InputError(folder, f"slice position {position:.1f} mm has {len(images)} images with repeated trigger "
                                 f"times ({', '.join(f'{t:g}' for t in repeated[:3])} ms): the slice was acquired twice "
                                 "in one series; keep one acquisition's files in the folder")


def _frame_key(item) -> tuple[float, int]:
    _, ds = item
    t = ds.get("TriggerTime")
    return (float(t) if t not in (None, "") else 0.0, int(ds.get("InstanceNumber", 0) or 0))


def _read_pixels(layout: _SeriesLayout, shape: tuple[int, int, int, int],
                 unreadable: list[Unreadable]) -> tuple[np.ndarray, np.ndarray]:
    """Pixels ``[T, S, H, W]`` through each image's modality LUT (:func:`image_values`; missing
    images filled) and which were present. An image whose pixels cannot be decoded is a lost
    image (listed in ``unreadable``); its place is filled like any other."""
    pixels = np.zeros(shape, dtype=np.float32)
    present = np.zeros(shape[:2], dtype=bool)
    for k, frames, frame_of in zip(layout.grid, layout.ordered, layout.slots):
        for (f, ds), t in zip(frames, frame_of):
            try:
                arr = image_values(ds, f)
            except InputError as exc:
                unreadable.append((f, exc.problem))
                continue
            if arr.shape != pixels.shape[2:]:
                raise InputError(f, f"image size {arr.shape} differs from the series' {pixels.shape[2:]}")
            pixels[t, k] = arr
            present[t, k] = True
    if not present.any():
        raise InputError(unreadable[0][0], f"no image of the series could be decoded ({unreadable[0][1]})")
    fill_missing(pixels, present)
    return pixels, present


def image_values(ds, path: Path) -> np.ndarray:
    """One image's values (float32 ``[H, W]``): the stored pixels through the modality LUT
    (Rescale Slope / Intercept, or a Modality LUT Sequence; pydicom's ``apply_modality_lut``),
    negated for MONOCHROME1 (where the smallest value is shown white) so that bright is bright
    as in MONOCHROME2. The VOI LUT (window centre and width) is for display only and is not
    applied: it would clip the values the networks normalise by their own percentiles."""
    from pydicom.pixels import apply_modality_lut

    try:
        with quiet_pydicom():
            stored = ds.pixel_array
            values = apply_modality_lut(stored, ds)
    except Exception as exc:  # the decoders raise many types for corrupt or unsupported pixel data
        raise InputError(path, f"cannot decode DICOM pixels ({type(exc).__name__}: {exc})") from None
    if values.ndim != 2:
        raise InputError(path, f"image of shape {values.shape} (colour or several frames): not one MR image")
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).strip().upper()
    if photometric not in ("MONOCHROME1", "MONOCHROME2"):
        raise InputError(path, f"photometric interpretation {photometric}: not a greyscale MR image")
    values = np.asarray(values, dtype=np.float32)
    return -values if photometric == "MONOCHROME1" else values


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


DICOM_LAYOUTS = ("classic", "enhanced", "series_per_slice")


def write_dicom_series(
    frames: np.ndarray,
    affine_ras: np.ndarray,
    folder: str | Path,
    description: str = "SAX cine",
    trigger_step_ms: float = 40.0,
    layout: str = "classic",
) -> Path:
    """Write ``frames`` ([T, S, H, W] or [S, H, W]) as an MR DICOM series whose geometry is
    ``affine_ras`` (voxel (i, j, k) -> RAS+ mm). ``layout``: ``classic``, one MR image file
    per image; ``enhanced``, one Enhanced MR file holding every image as a frame, time-major
    (all slices of the first time point, then the next: not the classic files' order);
    ``series_per_slice``, classic files with each slice position its own series (as a stack
    acquired one breath-hold per slice is stored), numbered 1, 2, ... from the first slice.
    For the phantom and the tests."""
    if layout not in DICOM_LAYOUTS:
        raise ValueError(f"layout must be one of {DICOM_LAYOUTS}, got {layout!r}")
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
    orientation = np.concatenate([lps[:3, 0] / col_mm, lps[:3, 1] / row_mm])
    geometry = {"ImageOrientationPatient": [f"{v:.8f}" for v in orientation],
                "PixelSpacing": [f"{row_mm:.6f}", f"{col_mm:.6f}"],
                "SliceThickness": f"{np.linalg.norm(lps[:3, 2]):.6f}"}
    rescale = {"RescaleSlope": f"{1.0 / scale:.10g}", "RescaleIntercept": f"{lo:.10g}"}
    series = {"PatientID": "PHANTOM", "PatientName": "Phantom", "PatientBirthDate": "", "PatientSex": "O",
              "StudyInstanceUID": generate_uid(), "StudyDate": "20261128", "StudyTime": "120000", "StudyID": "1",
              "AccessionNumber": "", "ReferringPhysicianName": "", "SeriesInstanceUID": generate_uid(),
              "FrameOfReferenceUID": generate_uid(), "SeriesDescription": description}
    images = _images(np.round((frames - lo) * scale).astype(np.uint16), lps, trigger_step_ms,
                     description if layout == "series_per_slice" else None)
    if layout == "enhanced":
        _write_enhanced_mr(folder / "IM_ENHANCED.dcm", images, series, geometry, rescale)
        return folder
    for name, pixels, own in images:
        _write_mr_image(folder / name, pixels, {**series, **geometry, **rescale, **own})
    return folder


def _images(stored: np.ndarray, lps: np.ndarray, trigger_step_ms: float, slice_series: str | None) -> list:
    """[(file name, pixels, the image's own attributes)] of stored pixels ``[T, S, H, W]``,
    time-major; with ``slice_series`` (a description) each slice position is its own series."""
    from pydicom.uid import generate_uid

    num_frames, num_slices = stored.shape[:2]
    slice_uids = [generate_uid() for _ in range(num_slices)]
    images = []
    for t in range(num_frames):
        for k in range(num_slices):
            own = {"InstanceNumber": k * num_frames + t + 1, "TriggerTime": f"{t * trigger_step_ms:.1f}",
                   "ImagePositionPatient": [f"{v:.6f}" for v in lps[:3, 3] + lps[:3, 2] * k]}
            if slice_series is not None:
                own |= {"SeriesInstanceUID": slice_uids[k], "SeriesNumber": k + 1,
                        "SeriesDescription": f"{slice_series} {k + 1}"}
            images.append((f"IM_{k:03d}_{t:03d}.dcm", stored[t, k], own))
    return images


def _new_file(path: Path, sop_class: str):
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "MR"
    return ds


def _set_pixels(ds, pixels: np.ndarray) -> None:
    """12-bit unsigned monochrome pixels ``[H, W]`` or frames ``[N, H, W]``."""
    ds.Rows, ds.Columns = pixels.shape[-2:]
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.PixelData = np.ascontiguousarray(pixels).tobytes()


def _write_mr_image(path: Path, pixels: np.ndarray, attributes: dict[str, Any]) -> None:
    """One 12-bit MR image file with ``attributes`` (its position, series, rescale)."""
    import pydicom
    from pydicom.uid import MRImageStorage

    ds = _new_file(path, MRImageStorage)
    for key, value in attributes.items():
        setattr(ds, key, value)
    _set_pixels(ds, pixels)
    pydicom.dcmwrite(str(path), ds, enforce_file_format=True)


def _write_enhanced_mr(path: Path, images: list, series: dict[str, Any], geometry: dict[str, Any],
                       rescale: dict[str, Any]) -> None:
    """One Enhanced MR file: ``images`` [(name, pixels, attributes)] as frames; orientation,
    pixel size and rescale in the shared functional groups, position and trigger time per frame."""
    import pydicom
    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence
    from pydicom.uid import EnhancedMRImageStorage

    def item(**attributes) -> Sequence:
        ds = Dataset()
        for key, value in attributes.items():
            setattr(ds, key, value)
        return Sequence([ds])

    ds = _new_file(path, EnhancedMRImageStorage)
    for key, value in series.items():
        setattr(ds, key, value)
    shared = Dataset()
    shared.PlaneOrientationSequence = item(ImageOrientationPatient=geometry["ImageOrientationPatient"])
    shared.PixelMeasuresSequence = item(PixelSpacing=geometry["PixelSpacing"],
                                        SliceThickness=geometry["SliceThickness"])
    shared.PixelValueTransformationSequence = item(**rescale, RescaleType="US")
    ds.SharedFunctionalGroupsSequence = Sequence([shared])
    _dimensions(ds, item)
    stack_of: dict[str, int] = {}  # each position's number in the stack, in order of appearance
    per_frame = []
    for _, _, own in images:
        position = stack_of.setdefault(str(own["ImagePositionPatient"]), len(stack_of) + 1)
        time_index = sum(str(o["ImagePositionPatient"]) == str(own["ImagePositionPatient"]) for _, _, o in
                         images[:len(per_frame)]) + 1
        frame = Dataset()
        frame.FrameContentSequence = item(StackID="1", InStackPositionNumber=position, TemporalPositionIndex=time_index,
                                          DimensionIndexValues=[position, time_index])
        frame.PlanePositionSequence = item(ImagePositionPatient=own["ImagePositionPatient"])
        frame.CardiacSynchronizationSequence = item(NominalCardiacTriggerDelayTime=float(own["TriggerTime"]))
        per_frame.append(frame)
    ds.PerFrameFunctionalGroupsSequence = Sequence(per_frame)
    ds.InstanceNumber = 1
    ds.NumberOfFrames = len(images)
    _set_pixels(ds, np.stack([pixels for _, pixels, _ in images]))
    pydicom.dcmwrite(str(path), ds, enforce_file_format=True)


def _dimensions(ds, item) -> None:
    """The Multi-frame Dimension module an Enhanced MR file must carry (DICOM PS3.3 C.7.6.17):
    frames indexed by their position in the stack and their temporal position, both kept in
    each frame's FrameContentSequence, as scanners write them and converters (dcm2niix) sort by."""
    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence
    from pydicom.tag import Tag
    from pydicom.uid import generate_uid

    uid = generate_uid()
    ds.DimensionOrganizationSequence = item(DimensionOrganizationUID=uid)
    dims = []
    for keyword in ("InStackPositionNumber", "TemporalPositionIndex"):
        dim = Dataset()
        dim.DimensionOrganizationUID = uid
        dim.DimensionIndexPointer = Tag(keyword)
        dim.FunctionalGroupPointer = Tag("FrameContentSequence")
        dims.append(dim)
    ds.DimensionIndexSequence = Sequence(dims)
