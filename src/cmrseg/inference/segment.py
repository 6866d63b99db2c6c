"""``cmrseg segment``: studies in; masks, clinical measures, quality flags and pictures out.

For every study (see :mod:`.discovery`): segment every frame with one model (loaded once
per batch), write each input's mask under its own file name in its own format and geometry,
pick ED and ES (``Info.cfg`` / side files, else the largest and smallest LV volume), compute
the clinical measures when the voxel size is known, run quality control, and draw a
montage (and a volume curve for cines). Per-study results are JSON files in ``OUT/cases/``;
``measures.csv``, ``volumes.csv``, ``summary.json`` and ``report.html`` are rebuilt from
them after every batch, so shards (``--shard i/n``) writing into one folder add up and
finished studies are skipped on a rerun.

A study that fails (unreadable file, bad geometry, ...) is reported and the batch goes on;
nothing is left half-written for it.
"""

from __future__ import annotations

import csv
import io
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from cmrseg import __version__
from cmrseg.atomic import atomic_path, write_json, write_text
from cmrseg.data.io.common import strip_suffix
from cmrseg.data.io.dicom_seg import new_series_uid, write_dicom_seg
from cmrseg.data.io.readers import mask_output_path, write_mask
from cmrseg.data.orientation import anatomy_reversed, reverse_affine
from cmrseg.data.volume import Study
from cmrseg.errors import CmrsegError, InputError
from cmrseg.evaluation.clinical import (BODY_COLUMNS, FRAME_MEASURE_COLUMNS, MEASURE_COLUMNS, STRUCTURE_COLUMNS,
                                        body_measures, cardiac_measures, frame_measures, structure_volumes_ml)
from cmrseg.inference.discovery import StudySource, discover_all, load_study
from cmrseg.inference.output_folder import (case_records, check_location, check_reports_ours, check_target,
                                            ensure_writable, owned_files, shard_records, writer_lock)
from cmrseg.inference.ensemble import EnsemblePredictor, load_predictor
from cmrseg.inference.predictor import Predictor, set_tta, tta_name
from cmrseg.inference.quality import (mid_slice_count, slice_flags, study_flags, study_uncertainty_flags,
                                      uncertainty_flags, uncertainty_share, verdict)
from cmrseg.inference.report import montage, volume_curve, write_html
from cmrseg.labels import label_map_json


class _StudyReader(torch.utils.data.Dataset):
    """Reads studies in DataLoader worker processes; errors travel back as text."""

    def __init__(self, sources: list[StudySource], spacing, slice_order: str):
        self.sources, self.spacing, self.slice_order = sources, spacing, slice_order

    def __len__(self):
        return len(self.sources)

    def __getitem__(self, i):
        try:
            return i, load_study(self.sources[i], self.spacing, self.slice_order), None
        except CmrsegError as exc:
            return i, None, str(exc)
        except Exception as exc:  # any other reader failure is this study's, not the batch's
            return i, None, f"{self.sources[i].paths[0]}: {type(exc).__name__}: {exc}"


class _DieWithParent:
    """DataLoader ``worker_init_fn``: on Linux the kernel kills a reader process when the
    segmenting process dies, by any signal, SIGKILL included (``prctl(PR_SET_PDEATHSIG)``), so no
    reader outlives it holding memory and the caller's terminal. No maintained library wraps
    prctl for this; it is one libc call through ctypes."""

    def __init__(self):
        self.parent = os.getpid()

    def __call__(self, _worker_id: int) -> None:
        if not sys.platform.startswith("linux"):
            return
        import ctypes
        import signal

        try:
            ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGKILL))  # 1 = PR_SET_PDEATHSIG
        except (OSError, AttributeError):
            return
        if os.getppid() != self.parent:  # the parent died before prctl took effect
            os._exit(1)


def parse_shard(text: str | None) -> tuple[int, int]:
    """``"i/n"`` (1-based i) -> (i-1, n)."""
    if not text:
        return 0, 1
    try:
        i, n = (int(v) for v in text.split("/"))
    except ValueError:
        raise CmrsegError(f"--shard must be i/n, got {text!r}") from None
    if not 1 <= i <= n:
        raise CmrsegError(f"--shard {text}: need 1 <= i <= n")
    return i - 1, n


def _frame_label(study: Study, t: int) -> str:
    f = study.frames[t].meta.get("frame")
    return f"frame {f}" if f is not None else f"frame {t + 1}"


def _frame_number(study: Study, t: int) -> int | str:
    """Frame t as the measures name it: its cine frame number, or for a volume that is one
    phase's own file (``<case>_ED``) that file's name."""
    v = study.frames[t]
    if v.meta.get("frame") is not None:
        return v.meta["frame"]
    return v.name if study.info.get("ed_es_from", "").startswith("file names") else t + 1


def _pick_ed_es(study: Study, lv_voxels: list[int]) -> tuple[int, int, str]:
    if study.ed is not None and study.es is not None:
        return study.ed, study.es, study.info.get("ed_es_from", "header (Info.cfg / side files)")
    if len(lv_voxels) == 1:
        return 0, 0, "single frame"
    return int(np.argmax(lv_voxels)), int(np.argmin(lv_voxels)), "largest / smallest LV volume"


def _in_file_order(flag: dict[str, Any], study: Study) -> dict[str, Any]:
    """A flag's slice as the voxel index k of the written mask (the input's slice order)."""
    geom = study.frames[0].geometry
    if flag.get("slice") is not None and geom.slices_reversed:
        flag = {**flag, "slice": study.frames[0].num_slices - 1 - int(flag["slice"])}
    return flag


def study_measures(study: Study, masks: list[np.ndarray]) -> dict[str, Any]:
    """ED/ES choice, per-frame volumes and the clinical measures of one segmented study.

    Returns ``ed``, ``es`` (frame indices), ``ed_es_source``, ``volumes`` (per frame, mL, or
    ``None`` without spacing), ``measures`` (``LVEDV (mL)`` ... for several frames; the
    frame's volumes for a single frame), ``lv_voxels``, ``voxel_ml`` and ``note``.
    """
    voxel_ml = study.frames[0].geometry.voxel_volume_ml
    lv_voxels = [int((m == 3).sum()) for m in masks]
    ed, es, source = _pick_ed_es(study, lv_voxels)
    volumes = ([structure_volumes_ml(m, voxel_ml, v.meta.get("missing_slices") or ()) for m, v in zip(masks, study.frames)]
               if voxel_ml else None)
    measures: dict[str, float] = {}
    note = ""
    if volumes is None:
        note = ("no voxel spacing: volumes, EF and mass not computed "
                "(give --spacing SX SY SZ in mm, or use a format that stores it)")
    elif len(masks) == 1:
        measures = frame_measures(volumes[0])
    else:
        measures = cardiac_measures(volumes[ed], volumes[es])
    measures.update(body_measures(measures, {**study.info, **study.frames[0].meta}))
    read_notes = dict.fromkeys(n for v in study.frames for n in v.geometry.notes)  # what the readers decided
    note = "; ".join(n for n in (note, *read_notes) if n)
    return {"ed": ed, "es": es, "ed_es_source": source, "volumes": volumes, "measures": measures,
            "lv_voxels": lv_voxels, "voxel_ml": voxel_ml, "note": note}


def _reverse_in_memory(study: Study, preds: list) -> None:
    """Turn a study and its predictions end for end in memory (the files keep their order:
    writers undo ``slices_reversed``)."""
    n = study.frames[0].num_slices
    for geom in {id(v.geometry): v.geometry for v in study.frames}.values():
        if geom.affine is not None:
            geom.affine = reverse_affine(geom.affine, n)
        geom.slices_reversed = not geom.slices_reversed
    for v in study.frames:
        v.image = np.ascontiguousarray(v.image[::-1])
        if v.meta.get("missing_slices"):
            v.meta["missing_slices"] = sorted(n - 1 - k for k in v.meta["missing_slices"])
    for p in preds:
        p.mask = np.ascontiguousarray(p.mask[::-1])
        if p.class_probs is not None:
            p.class_probs = np.ascontiguousarray(p.class_probs[::-1])
        if p.expected_errors is not None:
            p.expected_errors = np.ascontiguousarray(p.expected_errors[::-1])
        if p.probabilities is not None:
            p.probabilities = np.ascontiguousarray(p.probabilities[::-1])


def _orient(study: Study, preds: list, slice_order: str) -> str:
    """Base -> apex in memory: with ``auto``, the anatomy decides where it can (the LV is
    larger towards the base), else the geometry's rule stands. Returns what decided."""
    if slice_order != "auto":
        return f"--slice-order {slice_order}"
    flip = anatomy_reversed([p.mask for p in preds])
    if flip is None:
        return "geometry (the anatomy could not decide)"
    if flip:
        _reverse_in_memory(study, preds)
    return "anatomy (LV and myocardium larger at the base)"


def process_study(study: Study, predictor: Predictor | EnsemblePredictor, out: Path, taken: set[Path],
                  owned: set[Path] | None = None, slice_order: str = "auto",
                  extras: tuple[str, ...] = (), mask_dir: Path | None = None) -> dict[str, Any]:
    """Segment, measure, check and draw one study; returns its JSON record. ``mask_dir``: where
    its masks go (default ``out``; ``OUT/<name>`` for a study whose name another shares). ``extras``
    (:data:`EXTRA_OUTPUTS`): ``dicom_seg``, a DICOM study's masks also as a DICOM SEG
    (:mod:`cmrseg.data.io.dicom_seg`); ``probabilities``, each mask file's class probabilities
    (:func:`_write_probabilities`).

    Everything is computed before the first file is written, and a failure while writing
    removes what this study wrote, so a failed study leaves nothing behind. A file already in
    ``out`` is replaced only when it is in ``owned`` (written by an earlier run).
    """
    owned = owned if owned is not None else set()
    t0 = time.perf_counter()
    preds = [predictor.predict_volume(v, keep_probabilities="probabilities" in extras) for v in study.frames]
    order_from = _orient(study, preds, slice_order)
    _blank_missing_slices(study, preds)
    masks = [p.mask for p in preds]
    meas = study_measures(study, masks)
    ed, es = meas["ed"], meas["es"]
    flags, mid, uncertainty = _quality_flags(study, preds, meas)
    qc = verdict(flags, mid)
    written: list[Path] = []
    try:
        outputs = _write_outputs(study, preds, meas, mask_dir or out, taken, owned, written, _seg_algorithm(predictor),
                                 extras)
        montage_path, curve_path = _write_figures(study, masks, meas, out / "figures", owned, written, flags)
    except BaseException:
        for p in written:
            p.unlink(missing_ok=True)
        raise
    geom = study.frames[0].geometry
    return {
        "study": study.name, "status": "ok", "source": str(study.source), "kind": study.kind,
        "frames": len(masks), "ed_frame": _frame_number(study, ed), "es_frame": _frame_number(study, es),
        "ed_es_source": meas["ed_es_source"],
        "spacing_mm": list(geom.spacing) if geom.spacing is not None else None,
        "spacing_source": geom.spacing_source, "measures": meas["measures"], "note": meas["note"],
        "base_slice_k": study.frames[0].num_slices - 1 if geom.slices_reversed else 0, "base_apex_from": order_from,
        "frame_volumes_ml": meas["volumes"], "lv_voxels": meas["lv_voxels"], "qc": qc, "uncertainty": uncertainty,
        "flags": [_in_file_order(f, study) for f in flags],
        "outputs": [str(p.relative_to(out)) for p in outputs],
        "output_frames": _output_frames(study, outputs, out), "qc_frames": sorted(mid), "extras": list(extras),
        "montage": str(montage_path.relative_to(out)),
        "curve": str(curve_path.relative_to(out)) if curve_path else None,
        "model_seconds": float(sum(p.seconds for p in preds)), "seconds": time.perf_counter() - t0,
    }


#: optional outputs of ``cmrseg segment`` beyond masks, measures and pictures (``--dicom-seg``,
#: ``--save-probabilities``)
EXTRA_OUTPUTS = ("dicom_seg", "probabilities")


def _write_outputs(study: Study, preds: list, meas: dict[str, Any], mask_dir: Path, taken: set[Path],
                   owned: set[Path], written: list[Path], algorithm: str, extras: tuple[str, ...]) -> list[Path]:
    """The mask files in ``mask_dir``, then the ``extras`` asked for beside them (a DICOM SEG's
    note joins ``meas["note"]``); returns their paths, the masks first (:func:`_frames_by_file` order)."""
    masks = [p.mask for p in preds]
    outputs = _write_masks(study, masks, mask_dir, taken, owned, written)
    if "probabilities" in extras:
        outputs += _write_probabilities(study, preds, list(outputs), owned, written)
    if "dicom_seg" in extras and study.frames[0].fmt == "dicom":
        segs, seg_note = _write_dicom_segs(study, masks, outputs[0], (meas["ed"], meas["es"]), algorithm, owned,
                                           written)
        outputs += segs
        meas["note"] = "; ".join(n for n in (meas["note"], seg_note) if n)
    return outputs


def _write_probabilities(study: Study, preds: list, mask_files: list[Path], owned: set[Path],
                         written: list[Path]) -> list[Path]:
    """Beside each mask file ``<mask>_probabilities.npz`` (compressed NumPy, as nnU-Net's
    ``--save_probabilities``): ``probabilities`` float16 ``[frames, 4, slices, rows, columns]``
    (background, RV, MYO, LV; after flips, gate and ensemble averaging, before the clean-up)
    with ``probabilities[t, c, k, j, i]`` at the mask file's voxel ``(i, j, k)`` of frame t
    (NIfTI; an h5 mask's ``label[k, j, i]``), and ``frames``, the frame labels."""
    paths = []
    for mask_file, idx in zip(mask_files, _frames_by_file(study)):
        probs = np.stack([preds[t].probabilities for t in idx]).transpose(0, 2, 1, 3, 4)  # [T, 4, S, H, W]
        if study.frames[idx[0]].geometry.slices_reversed:  # in memory base -> apex; the file's own order
            probs = probs[:, :, ::-1]
        target = mask_file.with_name(strip_suffix(mask_file) + "_probabilities.npz")
        check_target(target, owned)
        with atomic_path(target) as tmp:
            with open(tmp, "wb") as fh:
                np.savez_compressed(fh, probabilities=np.ascontiguousarray(probs),
                                    frames=np.array([_frame_label(study, t) for t in idx]))
        written.append(target)
        paths.append(target)
    return paths


def _blank_missing_slices(study: Study, preds: list) -> None:
    """No image there in the input: nothing is labelled there, and nothing expected wrong."""
    for v, p in zip(study.frames, preds):
        gaps = v.meta.get("missing_slices") or []
        p.mask[gaps] = 0
        if p.expected_errors is not None:
            p.expected_errors[gaps] = 0.0
        if p.probabilities is not None:
            p.probabilities[gaps] = np.array([1.0, 0.0, 0.0, 0.0], dtype=p.probabilities.dtype)[:, None, None]


def _output_frames(study: Study, outputs: list[Path], out: Path) -> dict[str, list[str]]:
    """Each mask file (relative to ``out``) -> the labels of the frames it holds, in file order
    (``cmrseg evaluate`` matches QC flags to the truth by them:
    :mod:`cmrseg.evaluation.quality_check`)."""
    return {str(p.relative_to(out)): [_frame_label(study, t) for t in idx]
            for p, idx in zip(outputs, _frames_by_file(study))}


def _quality_flags(study: Study, preds: list, meas: dict[str, Any]) -> tuple[list[dict], dict[str, int], float | None]:
    """QC flags of a segmented study (slices of ED and ES, the measures, the input's gaps),
    the mid-ventricular slice count per checked frame, and the share of the checked frames'
    masks the model expects to be wrong (``None`` when the predictor gives no expected errors)."""
    ed, es, voxel_ml, n = meas["ed"], meas["es"], meas["voxel_ml"], len(preds)
    flags, mid, checked = [], {}, []
    spacing = study.frames[0].geometry.inplane_spacing
    pixel_mm = float(np.sqrt(spacing[0] * spacing[1])) if spacing is not None else None
    for t, pred in enumerate(preds):
        if t in (ed, es) or n <= 2:
            flags += slice_flags(pred.mask, pred.class_probs, _frame_label(study, t), pixel_mm)
            mid[_frame_label(study, t)] = mid_slice_count(pred.mask)
            if pred.expected_errors is not None:
                flags += uncertainty_flags(pred.expected_errors, pred.mask, _frame_label(study, t))
                checked.append(pred)
    share = (uncertainty_share(sum(float(p.expected_errors.sum()) for p in checked),
                               sum(int((p.mask > 0).sum()) for p in checked)) if checked else None)
    flags += study_uncertainty_flags(share) if share is not None else []
    if n > 1 or voxel_ml is None:
        flags += study_flags(meas["measures"], voxel_ml is not None, n, ed, es)
    gaps = [v.meta.get("missing_slices") or [] for v in study.frames]
    if gaps[0] and all(g == gaps[0] for g in gaps):
        flags += [{"frame": "", "slice": k, "flag": "missing_slice", "detail": "no image at this slice position in "
                   "the input: mask left empty, volumes interpolate it"} for k in gaps[0]]
    else:
        flags += [{"frame": _frame_label(study, t), "slice": k, "flag": "missing_image",
                   "detail": "no image for this slice and frame in the input: mask left empty, volumes interpolate it"}
                  for t, g in enumerate(gaps) for k in g]
    return flags, mid, share


def _seg_algorithm(predictor: Predictor | EnsemblePredictor) -> str:
    """The model's name as a DICOM SEG gives its algorithm (at most 64 characters): its shipped
    or folder name, or ``ensemble of N``."""
    paths = str(predictor.meta.get("path") or predictor.name).split("; ")
    return (Path(paths[0]).name if len(paths) == 1 else f"ensemble of {len(paths)}")[:64]


def _write_dicom_segs(study: Study, masks: list[np.ndarray], mask_file: Path, ed_es: tuple[int, int], algorithm: str,
                      owned: set[Path], written: list[Path]) -> tuple[list[Path], str]:
    """A DICOM study's ED and ES masks as DICOM SEG files beside its mask
    (``<mask>_seg_ED.dcm``, ``<mask>_seg_ES.dcm``; one frame: ``<mask>_seg.dcm``). A series
    that cannot carry a SEG keeps its other outputs: no SEG file, and a note that says why."""
    phases = [("ED", ed_es[0]), ("ES", ed_es[1])] if len(masks) > 1 and ed_es[0] != ed_es[1] else [("", ed_es[0])]
    series_uid = new_series_uid()
    paths: list[Path] = []
    try:
        for i, (phase, t) in enumerate(phases):
            seg = mask_file.with_name(strip_suffix(mask_file) + (f"_seg_{phase}.dcm" if phase else "_seg.dcm"))
            check_target(seg, owned)
            paths.append(write_dicom_seg(masks[t], study.frames[t], seg, algorithm, __version__, series_uid, i + 1,
                                         phase))
            written.append(paths[-1])
    except InputError as exc:
        for path in paths:
            path.unlink(missing_ok=True)
            written.remove(path)
        return [], f"no DICOM SEG: {exc.problem}"
    return paths, ""


def _frames_by_file(study: Study) -> list[list[int]]:
    """The frames (indices into ``study.frames``) of each input file, in file order: one mask
    file is written per input file."""
    by_file: dict[Path, list[int]] = {}
    for t, v in enumerate(study.frames):
        by_file.setdefault(v.path, []).append(t)
    return list(by_file.values())


def _write_masks(study: Study, masks: list[np.ndarray], out: Path, taken: set[Path], owned: set[Path],
                 written: list[Path]) -> list[Path]:
    """The masks in the input's format and geometry (a 4D input gets one 4D mask), one file
    per :func:`_frames_by_file` entry."""
    outputs = []
    for idx in _frames_by_file(study):
        like = study.frames[idx[0]]
        target = mask_output_path(like, out)
        if target in taken:  # another study of this run wrote that name (discovery names most apart)
            target = mask_output_path(like, out / study.name)
        check_target(target, owned)
        written.append(write_mask([masks[t] for t in idx] if len(idx) > 1 else masks[idx[0]], like, target.parent))
        taken.add(written[-1])
        outputs.append(written[-1])
    return outputs


def montage_flags(study: Study, shown: list[int], flags: list[dict[str, Any]]) -> set[tuple[int, int]]:
    """(row, column) of the montage cells that ``flags`` name: a slice (in-memory index) of the
    row's frame (``shown``: the frame of each row), or of every frame (a flag without a frame,
    e.g. a slice position missing from the whole series)."""
    return {(row, f["slice"]) for row, t in enumerate(shown) for f in flags
            if f.get("slice") is not None and f.get("frame") in (_frame_label(study, t), "")}


def _write_figures(study: Study, masks: list[np.ndarray], meas: dict[str, Any], fig_dir: Path, owned: set[Path],
                   written: list[Path], flags: list[dict[str, Any]] | None = None) -> tuple[Path, Path | None]:
    """The ED/ES montage (the slices ``flags`` name framed) and (for a cine) the volume curve;
    returns their paths."""
    ed, es, volumes = meas["ed"], meas["es"], meas["volumes"]
    shown = [(f"ED ({_frame_label(study, ed)})", ed), (f"ES ({_frame_label(study, es)})", es)] if ed != es \
        else [(_frame_label(study, ed), ed)]
    flagged = montage_flags(study, [t for _, t in shown], flags or [])
    for fig in (fig_dir / f"{study.name}_montage.png", fig_dir / f"{study.name}_volumes.png"):
        check_target(fig, owned)
    n = study.frames[0].num_slices
    numbers = [n - 1 - s for s in range(n)] if study.frames[0].geometry.slices_reversed else list(range(n))
    written.append(montage([(label, study.frames[t].image, masks[t]) for label, t in shown],
                           fig_dir / f"{study.name}_montage.png", title=study.name, slice_numbers=numbers,
                           flagged=flagged))
    if len(masks) <= 2:
        return written[-1], None
    trig = [f.meta.get("trigger_time_ms") for f in study.frames]
    x, xlabel = (trig, "trigger time (ms)") if all(v is not None for v in trig) else \
        (list(range(1, len(masks) + 1)), "frame")
    if volumes is not None:
        curves, unit = {"LV": [v["LV"] for v in volumes], "RV": [v["RV"] for v in volumes]}, "mL"
    else:
        curves, unit = {"LV": meas["lv_voxels"], "RV": [int((m == 1).sum()) for m in masks]}, "voxels"
    written.append(volume_curve(curves, x, xlabel, ed, es, unit, fig_dir / f"{study.name}_volumes.png", study.name))
    return written[-2], written[-1]


def _case_file(out: Path, name: str) -> Path:
    return out / "cases" / f"{name}.json"


def _is_done(out: Path, name: str, extras: tuple[str, ...] = ()) -> bool:
    """A study finished by an earlier run, its outputs in place and made with every optional
    output asked for now (a rerun with ``--save-probabilities`` redoes studies done without)."""
    try:
        rec = json.loads(_case_file(out, name).read_text())
    except (OSError, ValueError):
        return False
    return (isinstance(rec, dict) and rec.get("status") == "ok" and set(extras) <= set(rec.get("extras", ()))
            and all((out / o).exists() for o in rec.get("outputs", [])))


def _measures_csv(cases: list[dict[str, Any]]) -> str:
    buf = io.StringIO()
    cols = ["study", "qc", "uncertainty (%)", "frames", "ED frame", "ES frame", "ED/ES from", *MEASURE_COLUMNS,
            *FRAME_MEASURE_COLUMNS, *BODY_COLUMNS, "note", "flags"]
    w = csv.writer(buf)
    w.writerow(cols)
    for c in cases:
        if c.get("status") != "ok":
            w.writerow([c["study"], "failed"] + [""] * (len(cols) - 4) + [f"failed: {c.get('error', '')}", ""])
            continue
        m = c["measures"]
        flags = sorted({f["flag"] for f in c["flags"]})
        share = c.get("uncertainty")
        w.writerow([c["study"], c.get("qc", ""), "" if share is None else f"{100 * share:.1f}", c["frames"],
                    c["ed_frame"], c["es_frame"], c["ed_es_source"],
                    *[f"{m[k]:.2f}" if k in m and np.isfinite(m[k]) else ""
                      for k in (*MEASURE_COLUMNS, *FRAME_MEASURE_COLUMNS, *BODY_COLUMNS)],
                    c.get("note", ""), ";".join(f"{f}({sum(x['flag'] == f for x in c['flags'])})" for f in flags)])
    return buf.getvalue()


def _volumes_csv(cases: list[dict[str, Any]]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["study", "frame", *STRUCTURE_COLUMNS.values(), "LV (voxels)"])
    for c in cases:
        if c.get("status") != "ok":
            continue
        vols = c.get("frame_volumes_ml") or [None] * c["frames"]
        for t, v in enumerate(vols):
            row = [f"{v[k]:.2f}" if v else "" for k in STRUCTURE_COLUMNS]
            w.writerow([c["study"], t + 1, *row, c["lv_voxels"][t]])
    return buf.getvalue()


def rebuild_reports(out: Path, info: dict[str, Any]) -> dict[str, Any]:
    """measures.csv, volumes.csv, summary.json and report.html from every case record."""
    cases = case_records(out)
    write_text(out / "measures.csv", _measures_csv(cases))
    write_text(out / "volumes.csv", _volumes_csv(cases))
    shards = sorted({r["shard"] for r in shard_records(out)} | {info["shard"]})
    summary = {**info, "shards": shards, "label_map": label_map_json(),
               "cases": {c["study"]: {k: c.get(k) for k in ("status", "qc", "uncertainty", "seconds", "model_seconds",
                                                              "outputs", "output_frames", "qc_frames", "error",
                                                              "measures", "note", "ed_frame", "es_frame", "flags")}
                         for c in cases},
               "failed": [c["study"] for c in cases if c.get("status") != "ok"]}
    write_json(out / "summary.json", summary)
    write_html(out, cases, info, out / "report.html")
    return summary


def segment(inputs: list[str | Path], out: str | Path, model: str | list[str] | None = None, device: str = "auto",
            spacing=None, shard: str | None = None, overwrite: bool = False, workers: int = 2,
            postprocess: str = "auto", slice_order: str = "auto", progress: bool = True, backend: str = "auto",
            precision: str = "auto", gate: str = "auto", tta: str = "auto", dicom_seg: bool = False,
            save_probabilities: bool = False) -> int:
    """Run a batch; returns the exit code (0 all good, 1 some studies failed). ``model``: a
    shipped name or folder, or several (an ensemble, :mod:`.ensemble`). ``gate`` and ``tta``
    (``on``/``off``, or ``fast``: flips with the heart located once) override the model's own
    choices in ``model.json``. ``dicom_seg``: DICOM studies' masks also as DICOM SEG files;
    ``save_probabilities``: each mask's class probabilities beside it (:func:`_write_probabilities`)."""
    out = Path(out)
    idx, n = parse_shard(shard)
    check_location(out, [Path(i) for i in inputs])
    check_reports_ours(out)
    sources, skipped = discover_all(inputs)
    if not sources:
        why = "; ".join(f"{k.path}: {k.reason}" for k in skipped[:3])
        raise CmrsegError("no short-axis studies found in the inputs" + (f" (skipped {why})" if why else ""))
    predictor = load_predictor(model, device=device, postprocess=postprocess, backend=backend, precision=precision)
    if gate != "auto":
        predictor.gate = gate
    set_tta(predictor, tta)
    ensure_writable(out)  # only once the inputs and the model are known good
    with writer_lock(out, (idx, n)):
        return _run_batch(sources[idx::n], skipped, predictor, out, inputs, (idx, n), overwrite, spacing,
                          slice_order, workers, progress, (dicom_seg, save_probabilities))


def _run_batch(mine: list[StudySource], skipped: list, predictor, out: Path, inputs: list, shard: tuple[int, int],
               overwrite: bool, spacing, slice_order: str, workers: int, progress: bool,
               extra_flags: tuple[bool, bool]) -> int:
    """This shard's studies (``mine``) segmented, the reports rebuilt, the console told."""
    idx, n = shard
    dicom_seg, save_probabilities = extra_flags
    extras = tuple(name for name, on in zip(EXTRA_OUTPUTS, (dicom_seg, save_probabilities)) if on)
    todo = [s for s in mine if overwrite or not _is_done(out, s.name, extras)]
    info = _run_info(predictor, inputs, skipped, f"{idx + 1}/{n}")
    print(f"cmrseg segment: {len(mine)} {'study' if len(mine) == 1 else 'studies'} in this shard, "
          f"{len(mine) - len(todo)} already done, "
          f"model {predictor.name} ({predictor.meta.get('source')}: {predictor.meta.get('path')}) "
          f"on {predictor.device}", flush=True)
    for k in skipped:
        print(f"  skipped {k.path}: {k.reason}", flush=True)
    failures = _run_studies(todo, predictor, out, spacing, slice_order, workers, info["shard"], progress, extras)
    info["finished"] = time.strftime("%Y-%m-%d %H:%M:%S")
    write_json(out / "shards" / f"{idx + 1}-of-{n}.json", {**info, "studies": [s.name for s in todo]})
    summary = rebuild_reports(out, info)
    done = len(todo) - len(failures)
    print(f"{done} {'study' if done == 1 else 'studies'} segmented in this run, {len(mine) - len(todo)} already done; "
          f"measures in {out / 'measures.csv'}, report {out / 'report.html'}")
    print(qc_line(summary["cases"]))
    if failures:
        print(f"{len(failures)} failed:", file=sys.stderr)
        for f in failures:
            print(f"  {f['study']}: {f['error']}", file=sys.stderr)
        return 1
    return 0


def qc_line(cases: dict[str, dict[str, Any]]) -> str:
    """One console line: the quality-control verdicts of every study in the output folder, and
    the studies that failed QC by name (the ones to look at first)."""
    verdicts = [c.get("qc") for c in cases.values() if c.get("status") == "ok"]
    counts = ", ".join(f"{verdicts.count(v)} {v}" for v in ("ok", "review", "fail") if v in verdicts)
    failed = sorted(name for name, c in cases.items() if c.get("status") == "ok" and c.get("qc") == "fail")
    return (f"quality control: {counts or 'no study segmented'}"
            + (f"; QC failed: {', '.join(failed[:10])}{' ...' if len(failed) > 10 else ''}" if failed else ""))


def _run_info(predictor: Predictor | EnsemblePredictor, inputs: list, skipped: list, shard: str) -> dict[str, Any]:
    """What a shard's record and the summary say about this run (versions, model, settings)."""
    return {"cmrseg_version": __version__, "torch": torch.__version__, "python": sys.version.split()[0],
            "platform": platform.platform(), "model": predictor.name, "model_path": predictor.meta.get("path"),
            "model_source": predictor.meta.get("source"), "model_members": predictor.meta.get("members"),
            "model_protocol": predictor.meta.get("protocol"), "device": str(predictor.device),
            "backend": predictor.meta.get("backend"),
            "postprocess": predictor.postprocess, "gate": predictor.gate,
            "tta": tta_name(predictor),
            "precision": "bf16" if predictor.amp is not None else "fp32",
            "shard": shard, "inputs": [str(i) for i in inputs],
            "skipped": [{"path": str(k.path), "reason": k.reason} for k in skipped],
            "started": time.strftime("%Y-%m-%d %H:%M:%S")}


def _run_studies(todo: list[StudySource], predictor: Predictor | EnsemblePredictor, out: Path, spacing, slice_order: str, workers: int,
                 shard: str, progress: bool, extras: tuple[str, ...] = ()) -> list[dict[str, Any]]:
    """Read (in worker processes), segment and record every study; returns the failures.
    One study's failure never stops the batch."""
    owned = owned_files(out)
    num_workers = min(workers, len(todo)) if todo else 0
    # one study in flight per reader: with large cines, prefetching more multiplies the memory
    loader = torch.utils.data.DataLoader(_StudyReader(todo, spacing, slice_order), batch_size=None,
                                         num_workers=num_workers, worker_init_fn=_DieWithParent() if num_workers else None,
                                         prefetch_factor=1 if num_workers else None)
    taken: set[Path] = set()
    failures = []
    for i, study, error in tqdm(loader, total=len(todo), desc="segment", unit="study", disable=not progress):
        src = todo[i]
        t0 = time.perf_counter()
        if error is None:
            try:
                record = process_study(study, predictor, out, taken, owned, slice_order, extras,
                                       mask_dir=out / src.name if src.own_folder else out)
            except CmrsegError as exc:
                error = str(exc)
            except Exception as exc:  # isolate: one study's failure never stops the batch
                error = f"{src.paths[0]}: {type(exc).__name__}: {exc}"
        if error is not None:
            record = {"study": src.name, "status": "failed", "error": error, "seconds": time.perf_counter() - t0,
                      "source": str(src.paths[0])}
            failures.append(record)
        record["shard"] = shard
        write_json(_case_file(out, src.name), record)
    return failures
