"""Turn the paths a user gives into studies (the unit of work of ``cmrseg segment``).

* an ACDC patient folder (with ``Info.cfg``): one study, its frame files (or its 4D cine);
* a 4D NIfTI file or a DICOM cine series folder: one study, every frame;
* files named ``<case>_frameNN`` (NIfTI or h5) beside each other: one study per case;
* any other 3D NIfTI or h5 file: a single-frame study;
* a folder of any of these: each of its entries as above. ``*_gt`` files are labels, not inputs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from cmrseg.data.io.acdc import is_acdc_patient_folder, read_info_cfg
from cmrseg.data.io.common import is_h5, is_nifti, parse_frame_name, strip_suffix
from cmrseg.data.io.readers import is_dicom_folder, read_acdc_patient, read_volumes
from cmrseg.data.volume import Study
from cmrseg.errors import InputError


@dataclass
class StudySource:
    """Where a study comes from: ``kind`` is ``acdc``, ``dicom``, ``frames`` or ``file``."""

    name: str
    kind: str
    paths: list[Path] = field(default_factory=list)


def _is_label(p: Path) -> bool:
    return strip_suffix(p).endswith("_gt")


def _collect(path: Path, out: list[StudySource], frame_groups: dict, depth: int = 0) -> None:
    if is_acdc_patient_folder(path):
        out.append(StudySource(path.name, "acdc", [path]))
    elif path.is_dir() and is_dicom_folder(path):
        out.append(StudySource(path.name, "dicom", [path]))
    elif path.is_dir():
        if depth > 2:
            return
        for child in sorted(path.iterdir()):
            if not child.name.startswith("."):
                _collect(child, out, frame_groups, depth + 1)
    elif (is_nifti(path) or is_h5(path)) and not _is_label(path):
        case, frame = parse_frame_name(strip_suffix(path))
        if frame is not None:
            frame_groups.setdefault((path.parent, case), []).append(path)
        else:
            out.append(StudySource(strip_suffix(path), "file", [path]))


def discover(inputs: list[str | Path]) -> list[StudySource]:
    """All studies under ``inputs`` sorted by name; a missing input raises :class:`InputError`."""
    out: list[StudySource] = []
    groups: dict[tuple[Path, str], list[Path]] = {}
    for raw in inputs:
        p = Path(raw)
        if not p.exists():
            raise InputError(p, "input not found")
        if p.is_file() and not (is_nifti(p) or is_h5(p)):
            raise InputError(p, "unknown format (expected .nii, .nii.gz, .h5, a DICOM folder or an ACDC patient folder)")
        _collect(p, out, groups)
    for (_, case), paths in groups.items():
        out.append(StudySource(case, "frames", sorted(paths, key=lambda q: parse_frame_name(strip_suffix(q))[1])))
    names: dict[str, int] = {}
    for s in out:  # keep output names unique when two folders hold the same case name
        n = names.get(s.name, 0)
        names[s.name] = n + 1
        if n:
            s.name = f"{s.name}_{n + 1}"
    return sorted(out, key=lambda s: s.name)


def load_study(src: StudySource, spacing=None, slice_order: str = "auto") -> Study:
    """Read every frame of a study (raises :class:`InputError` naming the bad file)."""
    if src.kind == "acdc":
        return read_acdc_patient(src.paths[0], with_labels=False, slice_order=slice_order)
    if src.kind in ("dicom", "file") and len(src.paths) == 1:
        frames = read_volumes(src.paths[0], spacing=spacing, slice_order=slice_order)
        kind = "cine" if len(frames) > 1 else "single"
        return Study(src.name, frames, src.paths[0], kind)
    # <case>_frameNN files: ED/ES from an Info.cfg or h5 side files when present
    frames = []
    for p in src.paths:
        (vol,) = read_volumes(p, spacing=spacing, slice_order=slice_order)
        vol.meta.setdefault("frame", parse_frame_name(vol.name)[1])
        frames.append(vol)
    shapes = {f.shape for f in frames}
    if len(shapes) > 1:
        raise InputError(src.paths[0].parent, f"frames of {src.name} differ in shape: {sorted(shapes)}")
    info = {}
    cfg = src.paths[0].parent / "Info.cfg"
    if cfg.is_file():
        info = read_info_cfg(cfg)
        for f in frames:
            f.meta["phase"] = {info["ed_frame"]: "ED", info["es_frame"]: "ES"}.get(f.meta["frame"])
    ed = next((i for i, f in enumerate(frames) if f.meta.get("phase") == "ED"), None)
    es = next((i for i, f in enumerate(frames) if f.meta.get("phase") == "ES"), None)
    return Study(src.name, frames, src.paths[0].parent, "frames", ed, es, info)
