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
    from cmrseg.atomic import write_text

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
