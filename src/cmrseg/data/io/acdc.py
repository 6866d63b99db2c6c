"""The ACDC release layout and its side files.

* ``patientNNN/Info.cfg``: ``ED: 1``, ``ES: 12``, ``Group: DCM``, ``Height: 184.0``,
  ``NbFrame: 30``, ``Weight: 95.0``.
* ``patientNNN/patientNNN_frameMM.nii.gz`` (+ ``_gt.nii.gz``) and ``patientNNN_4d.nii.gz``.
* ``metadata.csv`` beside SSL4MIS h5 files: one row per patient (``patient, group, frames,
  ed_frame, es_frame, slices, height_cm, weight_kg, pixel_mm, slice_spacing_mm``).
* ``manifest.json`` beside h5 files: ``[{volume, patient, phase, ...}]``.
"""

from __future__ import annotations

import csv
import functools
import json
from pathlib import Path
from typing import Any

from cmrseg.atomic import write_text
from cmrseg.data.io.common import is_nifti, parse_frame_name, strip_suffix
from cmrseg.data.io.nifti import read_nifti, read_nifti_label
from cmrseg.data.volume import Study, Volume
from cmrseg.errors import InputError


def read_info_cfg(path: str | Path) -> dict[str, Any]:
    """Parse ACDC's ``Info.cfg`` into ``{ed_frame, es_frame, group, height_cm, weight_kg, frames}``."""
    path = Path(path)
    raw: dict[str, str] = {}
    try:
        for line in path.read_text().splitlines():
            if ":" in line:
                key, value = line.split(":", 1)
                raw[key.strip()] = value.strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(path, f"cannot read Info.cfg ({exc})") from None
    try:
        info: dict[str, Any] = {
            "ed_frame": int(raw["ED"]),
            "es_frame": int(raw["ES"]),
        }
    except (KeyError, ValueError):
        raise InputError(path, "Info.cfg lacks integer 'ED' and 'ES' entries") from None
    for key, name, cast in (("Group", "group", str), ("Height", "height_cm", float),
                            ("Weight", "weight_kg", float), ("NbFrame", "frames", int)):
        if key in raw:
            try:
                info[name] = cast(raw[key])
            except ValueError:
                raise InputError(path, f"Info.cfg entry {key}={raw[key]!r} is not a valid {cast.__name__}") from None
    return info


def write_info_cfg(path: str | Path, ed: int, es: int, group: str, height: float, weight: float, frames: int) -> None:
    write_text(path, f"ED: {ed}\nES: {es}\nGroup: {group}\nHeight: {height:.1f}\nNbFrame: {frames}\nWeight: {weight:.1f}\n")


@functools.lru_cache(maxsize=64)
def _read_metadata_csv(path: str, mtime: float) -> dict[str, dict[str, Any]]:
    rows: dict[str, dict[str, Any]] = {}
    with open(path, newline="") as fh:
        for row in csv.DictReader(fh):
            parsed: dict[str, Any] = dict(row)
            for key in ("frames", "ed_frame", "es_frame", "slices"):
                if row.get(key):
                    parsed[key] = int(row[key])
            for key in ("height_cm", "weight_kg", "pixel_mm", "slice_spacing_mm"):
                if row.get(key):
                    parsed[key] = float(row[key])
            rows[row["patient"]] = parsed
    return rows


def read_metadata_csv(path: str | Path) -> dict[str, dict[str, Any]]:
    """``metadata.csv`` -> {patient: row} with numbers parsed. Cached per file."""
    path = Path(path)
    try:
        return _read_metadata_csv(str(path), path.stat().st_mtime)
    except (OSError, KeyError, ValueError) as exc:
        raise InputError(path, f"cannot read metadata.csv ({type(exc).__name__}: {exc})") from None


@functools.lru_cache(maxsize=64)
def _read_manifest(path: str, mtime: float) -> dict[str, dict[str, Any]]:
    with open(path) as fh:
        return {item["volume"]: item for item in json.load(fh)}


def read_manifest(path: str | Path) -> dict[str, dict[str, Any]]:
    """``manifest.json`` -> {volume name: entry}. Cached per file."""
    path = Path(path)
    try:
        return _read_manifest(str(path), path.stat().st_mtime)
    except (OSError, KeyError, ValueError, TypeError) as exc:
        raise InputError(path, f"cannot read manifest.json ({type(exc).__name__}: {exc})") from None


def is_acdc_patient_folder(path: Path) -> bool:
    return path.is_dir() and (path / "Info.cfg").is_file()


def phase_of_frame(frame: int | None, info: dict[str, Any]) -> str | None:
    """'ED' / 'ES' / None for a 1-based cine frame number, given ed_frame/es_frame."""
    if frame is None:
        return None
    if frame == info.get("ed_frame"):
        return "ED"
    if frame == info.get("es_frame"):
        return "ES"
    return None


def ed_es(volumes: list[Volume]) -> tuple[int | None, int | None]:
    """Indices of the frames whose ``meta["phase"]`` is ED and ES (None where absent)."""
    ed = next((i for i, v in enumerate(volumes) if v.meta.get("phase") == "ED"), None)
    es = next((i for i, v in enumerate(volumes) if v.meta.get("phase") == "ES"), None)
    return ed, es


def ed_es_pairs(volumes: list[Volume]) -> dict[str, tuple[Volume, Volume]]:
    """``{patient: (ED volume, ES volume)}`` for every ``meta["patient"]`` with both phases."""
    by_patient: dict[str, list[Volume]] = {}
    for v in volumes:
        by_patient.setdefault(v.meta.get("patient") or "", []).append(v)
    pairs = {}
    for patient, frames in sorted(by_patient.items()):
        ed, es = ed_es(frames)
        if patient and ed is not None and es is not None:
            pairs[patient] = (frames[ed], frames[es])
    return pairs


def case_facts(folder: Path, name: str) -> dict[str, Any]:
    """``patient`` and ``frame`` from a ``<case>_frameNN`` name, with the ACDC ``Info.cfg``
    beside it (group, height, weight, ED/ES frames, this frame's phase) where there is one."""
    case, frame = parse_frame_name(name)
    meta: dict[str, Any] = {"patient": case, "frame": frame}
    if (folder / "Info.cfg").is_file():
        info = read_info_cfg(folder / "Info.cfg")
        meta.update(info)
        meta["phase"] = phase_of_frame(frame, info)
    return meta


def acdc_label_path(frame_file: Path) -> Path:
    """The expert mask beside an ACDC frame file: ``patientNNN_frameMM_gt.nii.gz``."""
    return frame_file.with_name(strip_suffix(frame_file) + "_gt.nii.gz")


def read_acdc_patient(folder: str | Path, with_labels: bool = True, slice_order: str = "auto",
                      spacing: tuple[float, float, float] | None = None) -> Study:
    """An ACDC release patient folder as one study: its frame files (with ``_gt`` masks when
    present), or its 4D cine when no frame files exist, with ED/ES from ``Info.cfg``.
    ``spacing``: (slice, row, column) mm replacing the headers' (``--spacing``)."""
    folder = Path(folder)
    if not is_acdc_patient_folder(folder):
        raise InputError(folder, "not an ACDC patient folder (no Info.cfg)")
    info = read_info_cfg(folder / "Info.cfg")
    frame_files = sorted(p for p in folder.iterdir() if is_nifti(p) and parse_frame_name(strip_suffix(p))[1] is not None)
    volumes: list[Volume] = []
    for p in frame_files:
        case, frame = parse_frame_name(strip_suffix(p))
        (vol,) = read_nifti(p, slice_order, spacing)
        vol.meta.update(info)
        vol.meta.update(patient=case, frame=frame, phase=phase_of_frame(frame, info))
        gt = acdc_label_path(p)
        if with_labels and gt.is_file():
            vol.label = read_nifti_label(gt, vol)
        volumes.append(vol)
    if volumes:
        return Study(folder.name, volumes, folder, "frames", *ed_es(volumes), {**info, "ed_es_from": "Info.cfg"})
    cines = sorted(folder.glob("*_4d.nii*"))
    if not cines:
        raise InputError(folder, "ACDC patient folder has neither frame files nor a _4d cine")
    volumes = read_nifti(cines[0], slice_order, spacing)
    for i, v in enumerate(volumes):
        v.meta.update(info)
        v.meta.update(patient=folder.name, frame=i + 1, phase=phase_of_frame(i + 1, info))
    return Study(folder.name, volumes, cines[0], "cine", *ed_es(volumes), {**info, "ed_es_from": "Info.cfg"})
