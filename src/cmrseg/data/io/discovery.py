"""Turn the paths a user gives into studies (the unit of work of ``cmrseg segment``).

* an ACDC patient folder (with ``Info.cfg``): one study, its frame files (or its 4D cine);
* DICOM files, in folders at any depth: grouped by series (``SeriesInstanceUID``); each
  short-axis series (a cine, or one phase of several slices) is a study, every other series
  (localisers, long-axis and other 2D cines, mapping and late-enhancement series) is
  listed as skipped with the reason
  (:func:`~cmrseg.data.io.dicom.classify_series`); a single ``.dcm`` file stands for its series;
  2D cines of one study, sequence and slice orientation at five or more positions across the
  long axis, in any folders, are one short-axis stack (stored one slice per series);
* a 4D NIfTI file: one study, every frame;
* files named ``<case>_frameNN`` (NIfTI or h5) beside each other: one study per case;
  ``<case>_ED`` and ``<case>_ES`` (any case, ``_`` or ``-``): one study with its ED and ES;
* any other 3D NIfTI or h5 file: a single-frame study;
* a folder of any of these, at any depth (hidden entries skipped). ``*_gt`` files are labels.
"""

from __future__ import annotations

import os
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

from cmrseg.data.io.acdc import ed_es, is_acdc_patient_folder, phase_of_frame, read_acdc_patient, read_info_cfg
from cmrseg.data.io.common import is_label_file, mark_blank_slices, parse_frame_name, parse_phase_name, strip_suffix
from cmrseg.data.io.dicom import (
    MIN_SLICE_SERIES,
    classify_series,
    common_description,
    read_dicom_series,
    scan_series,
    series_files,
    series_name,
    series_of_file,
    slice_cine_key,
    stack_slice_series,
)
from cmrseg.data.io.formats import described, format_of
from cmrseg.data.io.readers import read_volumes
from cmrseg.data.volume import Study
from cmrseg.errors import InputError

MAX_DEPTH = 12


@dataclass
class StudySource:
    """Where a study comes from: ``kind`` is ``acdc``, ``dicom`` (one series), ``dicom_slices``
    (a stack stored one slice position per series), ``frames`` or ``file``;
    ``phases``: ``ED``/``ES`` of each path when its name says so; ``own_folder``: its outputs
    go to ``OUT/<name>/`` because another study's inputs have its name (:func:`unique_names`)."""

    name: str
    kind: str
    paths: list[Path] = field(default_factory=list)
    phases: list[str | None] = field(default_factory=list)
    own_folder: bool = False

    def home(self) -> Path:
        """The folder holding the study's input (the patient folder, series folder or file)."""
        if self.kind in ("dicom", "dicom_slices"):
            return Path(os.path.commonpath([p.parent for p in self.paths])).parent
        return self.paths[0].parent


@dataclass
class Skipped:
    """An input that is not a short-axis study, and why."""

    path: Path
    reason: str


class TreeWalk:
    """The one walk of a folder tree every command makes (``cmrseg segment``'s discovery,
    ``cmrseg evaluate``'s label files): each real file and folder once whatever links point at it
    (a link back up the tree is not followed round), hidden entries skipped, folders deeper than
    ``MAX_DEPTH`` listed in ``skipped`` instead of entered."""

    def __init__(self):
        self.seen: set[Path] = set()
        self.skipped: list[Skipped] = []

    def first_visit(self, path: Path) -> bool:
        """Whether ``path`` (by its real path, links resolved) is met for the first time."""
        try:
            real = path.resolve()
        except (OSError, RuntimeError):  # a link loop that cannot be resolved
            self.skipped.append(Skipped(path, "a symbolic link that cannot be resolved (a loop?)"))
            return False
        if real in self.seen:
            return False
        self.seen.add(real)
        return True

    def paths(self, root: Path, whole: Callable[[Path], bool] = lambda p: False, depth: int = 0) -> Iterator[Path]:
        """The files under ``root`` (``root`` itself when a file), sorted; a folder for which
        ``whole`` is true (an ACDC patient folder, for discovery) is yielded itself, not entered."""
        if not self.first_visit(root):
            return
        if root.is_dir() and not whole(root):
            if depth > MAX_DEPTH:
                self.skipped.append(Skipped(root, f"deeper than {MAX_DEPTH} folders"))
                return
            for child in sorted(root.iterdir()):
                if not child.name.startswith("."):
                    yield from self.paths(child, whole, depth + 1)
        else:
            yield root


class _Walk(TreeWalk):
    def __init__(self):
        super().__init__()
        self.sources: list[StudySource] = []
        self.frame_groups: dict[tuple[Path, str], list[Path]] = {}
        self.dicom_files: dict[Path, list[Path]] = {}  # folder -> its DICOM files

    def visit(self, root: Path) -> None:
        for path in self.paths(root, is_acdc_patient_folder):
            self.add(path)

    def add(self, path: Path) -> None:
        """One path of the walk: an ACDC patient folder, an image file or a DICOM file."""
        if path.is_dir():
            self.sources.append(StudySource(path.name, "acdc", [path]))
        elif (fmt := format_of(path)) is not None and not fmt.series:
            if is_label_file(path):
                return
            name = strip_suffix(path)
            case, frame = parse_frame_name(name)
            phase_case, phase = parse_phase_name(name)
            if frame is not None:
                self.frame_groups.setdefault((path.parent, case), []).append(path)
            elif phase is not None:
                self.frame_groups.setdefault((path.parent, phase_case), []).append(path)
            else:
                self.sources.append(StudySource(name, "file", [path]))
        elif fmt is not None:  # a file of a series: grouped by header once the walk is done
            self.dicom_files.setdefault(path.parent, []).append(path)

    def dicom_series(self) -> None:
        slice_cines: dict[tuple, list[tuple[Path, list]]] = defaultdict(list)  # key -> [(label, headers)]
        for folder, files in sorted(self.dicom_files.items()):
            series, unreadable = scan_series(files)
            self.skipped += [Skipped(f, why) for f, why in unreadable]
            for uid, headers in sorted(series.items(), key=lambda kv: str(kv[1][0][0])):
                desc = str(headers[0][1].get("SeriesDescription", "")) or None
                label = folder if len(series) == 1 else Path(f"{folder}: series {desc or uid}")
                reason = classify_series(headers)
                if reason is not None and (key := slice_cine_key(headers)) is not None:
                    slice_cines[key].append((label, headers))  # maybe one slice of a stack
                elif reason is not None:
                    self.skipped.append(Skipped(label, reason))
                else:
                    name = folder.name if len(series) == 1 else f"{folder.name}_{series_name(folder, desc)}"
                    self.sources.append(StudySource(name, "dicom", sorted(series_files(headers))))
        for members in slice_cines.values():
            self.slice_stack(members)

    def slice_stack(self, members: list[tuple[Path, list]]) -> None:
        """2D cines that share a :func:`~cmrseg.data.io.dicom.slice_cine_key` (study, sequence,
        slice orientation, matrix): a short-axis stack stored one slice position per series when
        they are at least ``MIN_SLICE_SERIES`` positions across the heart's long axis; else each
        is skipped for its own reason."""
        kept, left = stack_slice_series([headers for _, headers in members])
        stack = [image for headers in kept for image in headers]
        if len(kept) < MIN_SLICE_SERIES or classify_series(stack) is not None:
            self.skipped += [Skipped(label, classify_series(headers)) for label, headers in members]
            return
        label_of = {id(headers): label for label, headers in members}
        self.skipped += [Skipped(label_of[id(headers)], why) for headers, why in left]
        files = sorted(series_files(stack))
        folder = Path(os.path.commonpath([f.parent for f in files]))
        desc = common_description(stack)
        name = f"{folder.name}_{series_name(folder, desc)}" if desc else folder.name
        self.sources.append(StudySource(name, "dicom_slices", files))

    def frame_studies(self) -> None:
        for (_, case), paths in self.frame_groups.items():
            phases = [_phase_of(p) for p in paths]
            if any(phases) and not all(phases):
                raise InputError(paths[0].parent, f"{case}: mixes _ED/_ES files with _frameNN files")
            order = sorted(range(len(paths)), key=lambda i: (phases[i] or "", _frame_of(paths[i])))
            self.sources.append(StudySource(case, "frames", [paths[i] for i in order], [phases[i] for i in order]))


def _phase_of(p: Path) -> str | None:
    return parse_phase_name(strip_suffix(p))[1]


def _frame_of(p: Path) -> int:
    return parse_frame_name(strip_suffix(p))[1] or 0


def discover(inputs: list[str | Path]) -> tuple[list[StudySource], list[Skipped]]:
    """(studies sorted by name, skipped inputs with the reason)."""
    walk = _Walk()
    for raw in inputs:
        p = Path(raw)
        if not p.exists():
            raise InputError(p, "input not found")
        fmt = format_of(p) if p.is_file() else None
        if p.is_file() and fmt is None:
            raise InputError(p, f"unknown format (expected {described()}, or folders of these)")
        if fmt is not None and fmt.series:  # a single file stands for its series
            walk.dicom_files.setdefault(p.parent, []).extend(f for f in series_of_file(p) if walk.first_visit(f))
            continue
        walk.visit(p)
    walk.dicom_series()
    walk.frame_studies()
    unique_names(walk.sources)
    return sorted(walk.sources, key=lambda s: s.name), walk.skipped


def unique_names(sources: list[StudySource]) -> None:
    """Studies whose names collide (every subject's ``sa.nii.gz`` in UK Biobank's layout, two
    exams' ``sax`` series) are named after the folder holding them too (``1001_sa``,
    ``1002_sa``), then, where that still collides, numbered (``_2``, ``_3`` ...); each of them
    writes into ``OUT/<name>/``. Decided from every study found, the same in every shard and
    every resumed run, so no study's mask can take another's place."""
    counts = Counter(s.name for s in sources)
    for s in sources:
        if counts[s.name] > 1:
            home = s.home().name
            s.name, s.own_folder = f"{home}_{s.name}" if home else s.name, True
    seen: dict[str, int] = defaultdict(int)
    for s in sources:
        seen[s.name] += 1
        if seen[s.name] > 1:
            s.name, s.own_folder = f"{s.name}_{seen[s.name]}", True


def load_study(src: StudySource, spacing=None, slice_order: str = "auto") -> Study:
    """Read every frame of a study (raises :class:`InputError` naming the bad file)."""
    if src.kind == "acdc":
        return _check_stack(read_acdc_patient(src.paths[0], with_labels=False, slice_order=slice_order,
                                              spacing=spacing))
    if src.kind in ("dicom", "dicom_slices"):
        folder = Path(os.path.commonpath([p.parent for p in src.paths]))
        frames = read_dicom_series(folder, slice_order, spacing, files=src.paths,
                                   slice_series=src.kind == "dicom_slices")
        return _check_stack(Study(src.name, frames, folder, "cine" if len(frames) > 1 else "single"))
    if src.kind == "file":
        frames = read_volumes(src.paths[0], spacing=spacing, slice_order=slice_order)
        return _check_stack(Study(src.name, frames, src.paths[0], "cine" if len(frames) > 1 else "single"))
    # <case>_frameNN or <case>_ED / _ES files: ED/ES from the names, an Info.cfg or h5 side files
    frames = []
    for p, phase in zip(src.paths, src.phases or [None] * len(src.paths)):
        (vol,) = read_volumes(p, spacing=spacing, slice_order=slice_order)
        vol.meta.setdefault("frame", parse_frame_name(vol.name)[1])
        if phase:
            vol.meta["phase"] = phase
        frames.append(vol)
    shapes = {f.shape for f in frames}
    if len(shapes) > 1:
        raise InputError(src.paths[0].parent, f"frames of {src.name} differ in shape: {sorted(shapes)}")
    info: dict = {"ed_es_from": "file names (_ED / _ES)"} if any(src.phases) else {}
    cfg = src.paths[0].parent / "Info.cfg"
    if cfg.is_file() and not any(src.phases):
        info = {**read_info_cfg(cfg), "ed_es_from": "Info.cfg"}
        for f in frames:
            f.meta["phase"] = phase_of_frame(f.meta["frame"], info)
    return _check_stack(Study(src.name, frames, src.paths[0].parent, "frames", *ed_es(frames), info))


def _check_stack(study: Study) -> Study:
    """Refuse what is not a short-axis stack: one slice per frame is a 2D image (a long-axis
    or single-slice cine), whose volumes would mean nothing."""
    if study.frames and study.frames[0].num_slices < 2:
        raise InputError(study.frames[0].path, f"one slice per frame ({len(study.frames)} frames): a 2D or long-axis "
                                               "image, not a short-axis stack (one slice of a stack stored a series "
                                               "per slice? give the DICOM folder of all its series)")
    mark_blank_slices(study.frames)
    return study
