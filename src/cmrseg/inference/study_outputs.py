"""The files ``cmrseg segment`` writes for one study: its masks in the input's format and geometry,
the optional extras (class probabilities, DICOM SEG) and its pictures (montage, volume curve).

A :class:`StudyWriter` knows where they go and which files of the output folder it may replace
(those an earlier run wrote); it remembers what it wrote, so a study that fails while writing
leaves nothing behind (:meth:`StudyWriter.undo`).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from cmrseg import __version__
from cmrseg.atomic import atomic_path, write_json
from cmrseg.data.io.common import strip_suffix
from cmrseg.data.io.dicom_seg import new_series_uid, write_dicom_seg
from cmrseg.data.io.readers import mask_output_path, write_mask
from cmrseg.data.volume import Study
from cmrseg.errors import InputError
from cmrseg.inference.output_folder import check_target, journal_entries
from cmrseg.inference.report import bullseye, montage, volume_curve


def frames_by_file(study: Study) -> list[list[int]]:
    """The frames (indices into ``study.frames``) of each input file, in file order: one mask
    file is written per input file."""
    by_file: dict[Path, list[int]] = {}
    for t, v in enumerate(study.frames):
        by_file.setdefault(v.path, []).append(t)
    return list(by_file.values())


@dataclass
class StudyWriter:
    """One study's outputs: masks into ``mask_dir`` (the output folder, or ``OUT/<study>/`` for a
    study whose name another shares), pictures into ``out/figures``; ``owned``: files an earlier
    run wrote (the only ones replaced); ``taken``: mask files this run already wrote."""

    out: Path
    mask_dir: Path
    owned: set[Path]
    taken: set[Path]
    written: list[Path] = field(default_factory=list)
    journal: Path | None = None  # output_folder.journal_file: each target listed before it is written
    targets: list[str] = field(default_factory=list)

    def _target(self, path: Path) -> Path:
        check_target(path, self.owned)
        if self.journal is not None:
            if not self.targets:  # what a run killed earlier listed stays listed
                self.targets = journal_entries(self.out, self.journal.stem)
            self.targets.append(str(path.relative_to(self.out)))
            write_json(self.journal, {"writing": self.targets})
        return path

    def undo(self) -> None:
        """Remove every file this writer wrote (a study that failed while writing). Its journal
        stays until the study's record, which keeps what earlier runs left (``kept``), is written."""
        for p in self.written:
            p.unlink(missing_ok=True)

    def done(self) -> None:
        """The study's record is written: its journal goes (and their folder, once empty)."""
        if self.journal is not None:
            self.journal.unlink(missing_ok=True)
            with contextlib.suppress(OSError):  # another study (another shard) is still being written
                self.journal.parent.rmdir()

    def masks(self, study: Study, masks: list[np.ndarray]) -> list[Path]:
        """The masks in the input's format and geometry (a 4D input gets one 4D mask), one file
        per :func:`frames_by_file` entry."""
        outputs = []
        for idx in frames_by_file(study):
            like = study.frames[idx[0]]
            target = mask_output_path(like, self.mask_dir)
            if target in self.taken:  # another study of this run wrote that name (discovery names most apart)
                target = mask_output_path(like, self.mask_dir / study.name)
            self._target(target)
            self.written.append(write_mask([masks[t] for t in idx] if len(idx) > 1 else masks[idx[0]], like,
                                           target.parent))
            self.taken.add(self.written[-1])
            outputs.append(self.written[-1])
        return outputs

    def probabilities(self, study: Study, preds: list, mask_files: list[Path]) -> list[Path]:
        """Beside each mask file ``<mask>_probabilities.npz`` (compressed NumPy, as nnU-Net's
        ``--save_probabilities``): ``probabilities`` float16 ``[frames, 4, slices, rows, columns]``
        (background, RV, MYO, LV; after flips, gate and ensemble averaging, before the clean-up)
        with ``probabilities[t, c, k, j, i]`` at the mask file's voxel ``(i, j, k)`` of frame t
        (NIfTI; an h5 mask's ``label[k, j, i]``), and ``frames``, the frame labels."""
        paths = []
        for mask_file, idx in zip(mask_files, frames_by_file(study)):
            probs = np.stack([preds[t].probabilities for t in idx]).transpose(0, 2, 1, 3, 4)  # [T, 4, S, H, W]
            if study.frames[idx[0]].geometry.slices_reversed:  # in memory base -> apex; the file's own order
                probs = probs[:, :, ::-1]
            target = self._target(mask_file.with_name(strip_suffix(mask_file) + "_probabilities.npz"))
            with atomic_path(target) as tmp:
                with open(tmp, "wb") as fh:
                    np.savez_compressed(fh, probabilities=np.ascontiguousarray(probs),
                                        frames=np.array([study.frame_label(t) for t in idx]))
            self.written.append(target)
            paths.append(target)
        return paths

    def dicom_segs(self, study: Study, masks: list[np.ndarray], mask_file: Path, ed_es: tuple[int, int],
                   algorithm: str) -> tuple[list[Path], str]:
        """A DICOM study's ED and ES masks as DICOM SEG files beside its mask
        (``<mask>_seg_ED.dcm``, ``<mask>_seg_ES.dcm``; one frame: ``<mask>_seg.dcm``). A series
        that cannot carry a SEG keeps its other outputs: no SEG file, and a note that says why."""
        phases = [("ED", ed_es[0]), ("ES", ed_es[1])] if len(masks) > 1 and ed_es[0] != ed_es[1] else [("", ed_es[0])]
        series_uid = new_series_uid()
        paths: list[Path] = []
        try:
            for i, (phase, t) in enumerate(phases):
                seg = self._target(mask_file.with_name(strip_suffix(mask_file) + (f"_seg_{phase}.dcm" if phase
                                                                                  else "_seg.dcm")))
                paths.append(write_dicom_seg(masks[t], study.frames[t], seg, algorithm, __version__, series_uid, i + 1,
                                             phase))
                self.written.append(paths[-1])
        except InputError as exc:
            for path in paths:
                path.unlink(missing_ok=True)
                self.written.remove(path)
            return [], f"no DICOM SEG: {exc.problem}"
        return paths, ""

    def figures(self, study: Study, masks: list[np.ndarray], meas: dict[str, Any],
                flags: list[dict[str, Any]]) -> dict[str, Path | None]:
        """``montage``: the ED/ES montage (the slices ``flags`` name framed); ``curve``: for a
        cine, the volume curve; ``bullseye``: the AHA bull's-eye plots of the wall, where it was
        measured."""
        paths = self._montage_and_curve(study, masks, meas, flags)
        aha = meas.get("aha")
        if not aha or not any(row["present"] for row in aha["segments"].values()):
            return {**paths, "bullseye": None}
        path = self._target(self.out / "figures" / f"{study.name}_bullseye.png")
        seg = aha["segments"]
        panels = [("ED wall thickness", {n: r["ED (mm)"] for n, r in seg.items()}, "mm", "viridis", (0.0, 20.0))]
        if any(r["ES (mm)"] is not None for r in seg.values()):
            panels += [("ES wall thickness", {n: r["ES (mm)"] for n, r in seg.items()}, "mm", "viridis", (0.0, 20.0)),
                       ("systolic thickening", {n: r.get("thickening (%)") for n, r in seg.items()}, "%", "RdYlGn",
                        (-20.0, 100.0))]
        self.written.append(bullseye(panels, path, title=f"{study.name}: AHA segments"))
        return {**paths, "bullseye": path}

    def _montage_and_curve(self, study: Study, masks: list[np.ndarray], meas: dict[str, Any],
                           flags: list[dict[str, Any]]) -> dict[str, Path | None]:
        ed, es, volumes = meas["ed"], meas["es"], meas["volumes"]
        shown = ([(f"ED ({study.frame_label(ed)})", ed), (f"ES ({study.frame_label(es)})", es)] if ed != es
                 else [(study.frame_label(ed), ed)])
        fig_dir = self.out / "figures"
        paths = [self._target(fig_dir / f"{study.name}_montage.png"), self._target(fig_dir / f"{study.name}_volumes.png")]
        n = study.frames[0].num_slices
        self.written.append(montage([(label, study.frames[t].image, masks[t]) for label, t in shown], paths[0],
                                    title=study.name, slice_numbers=[study.file_k(s) for s in range(n)],
                                    flagged=montage_flags(study, [t for _, t in shown], flags)))
        if len(masks) <= 2:
            return {"montage": paths[0], "curve": None}
        trig = [f.meta.get("trigger_time_ms") for f in study.frames]
        x, xlabel = (trig, "trigger time (ms)") if all(v is not None for v in trig) else \
            (list(range(1, len(masks) + 1)), "frame")
        if volumes is not None:
            curves, unit = {"LV": [v["LV"] for v in volumes], "RV": [v["RV"] for v in volumes]}, "mL"
        else:
            curves, unit = {"LV": meas["lv_voxels"], "RV": [int((m == 1).sum()) for m in masks]}, "voxels"
        self.written.append(volume_curve(curves, x, xlabel, ed, es, unit, paths[1], study.name))
        return {"montage": paths[0], "curve": paths[1]}


def montage_flags(study: Study, shown: list[int], flags: list[dict[str, Any]]) -> set[tuple[int, int]]:
    """(row, column) of the montage cells that ``flags`` name: a slice (in-memory index) of the
    row's frame (``shown``: the frame of each row), or of every frame (a flag without a frame,
    e.g. a slice position missing from the whole series)."""
    return {(row, f["slice"]) for row, t in enumerate(shown) for f in flags
            if f.get("slice") is not None and f.get("frame") in (study.frame_label(t), "")}
