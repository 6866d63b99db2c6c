"""``cmrseg segment``: studies in; masks, clinical measures, quality flags and pictures out.

For every study (see :mod:`cmrseg.data.io.discovery`): segment every frame with one model (loaded
once per batch), write each input's mask under its own file name in its own format and geometry
(:mod:`.study_outputs`), pick ED and ES (``Info.cfg`` / side files / file names, else the largest
and smallest LV volume), compute the clinical measures when the voxel size is known, run quality
control, and draw a montage (and a volume curve for cines). Per-study results are JSON records in
``OUT/studies/``; ``measures.csv``, ``volumes.csv``, ``summary.json`` and ``report.html`` are rebuilt
from them after every batch (:func:`cmrseg.inference.report.rebuild_reports`), so shards
(``--shard i/n``, or ``auto`` in a Slurm job array) writing into one folder add up and finished
studies are skipped on a rerun.

The slice order is decided once, when a study is read (the geometric rule of
:mod:`cmrseg.data.orientation`, or ``--slice-order``), and carried with its volumes; after
segmentation the anatomy only checks it, and a study whose anatomy puts the base at the other
end is flagged for review (``base_apex_unsure``), never reordered.

A study that fails (unreadable file, bad geometry, ...) is reported and the batch goes on;
nothing is left half-written for it.
"""

from __future__ import annotations

import os
import platform
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from cmrseg import __version__
from cmrseg.atomic import write_json
from cmrseg.data.io.common import spacing_from_option
from cmrseg.data.io.discovery import StudySource, discover, load_study
from cmrseg.data.orientation import anatomy_reversed
from cmrseg.data.volume import Study
from cmrseg.errors import CmrsegError
from cmrseg.inference.ensemble import EnsemblePredictor, load_predictor
from cmrseg.inference.error_estimates import DEFAULT_LIMITS, error_features, estimate, load_calibration, parse_limits
from cmrseg.inference.options import SegmentOptions, parse_shard
from cmrseg.inference.output_folder import (
    check_location,
    check_reports_ours,
    ensure_writable,
    journal_file,
    kept_files,
    owned_files,
    read_record,
    record_file,
    writer_lock,
)
from cmrseg.inference.predictor import Predictor
from cmrseg.inference.quality import (
    mid_slice_count,
    qc_verdict,
    slice_flags,
    study_flags,
    study_uncertainty_flags,
    uncertainty_flags,
    uncertainty_share,
)
from cmrseg.inference.report import qc_line, rebuild_reports
from cmrseg.inference.study_outputs import StudyWriter, frames_by_file
from cmrseg.measures.aha import aha_analysis
from cmrseg.measures.clinical import body_measures, cardiac_measures, findings, frame_measures, structure_volumes_ml


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


@dataclass
class Batch:
    """What the studies of one ``cmrseg segment`` run share: the output folder, the options, the
    model, this run's shard, and the files of the folder earlier runs wrote (``owned``) or this
    run did (``taken``)."""

    out: Path
    options: SegmentOptions
    predictor: Predictor | EnsemblePredictor
    shard: tuple[int, int] = (0, 1)
    spacing: tuple[float, float, float] | None = None  # --spacing as (slice, row, column) mm
    calibration: dict[str, Any] = field(default_factory=dict)  # the error estimates' (error_estimates)
    limits: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_LIMITS))  # --qc-limits
    owned: set[Path] = field(default_factory=set)
    taken: set[Path] = field(default_factory=set)

    def writer(self, source: StudySource | None = None) -> StudyWriter:
        """The writer of one study (its masks into ``OUT/<study>/`` when its name is shared)."""
        mask_dir = self.out / source.name if source is not None and source.own_folder else self.out
        return StudyWriter(self.out, mask_dir, self.owned, self.taken,
                           journal=journal_file(self.out, source.name) if source is not None else None)


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


def _file_order(flag: dict[str, Any], study: Study) -> dict[str, Any]:
    """A flag's slice as the voxel index k of the written mask (the input's slice order)."""
    return {**flag, "slice": study.file_k(int(flag["slice"]))} if flag.get("slice") is not None else flag


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
    wall = study_wall(study, masks, ed, es)
    if wall and wall["max ED wall (mm)"] is not None:
        measures["max ED wall (mm)"] = wall["max ED wall (mm)"]
    read_notes = dict.fromkeys(n for v in study.frames for n in v.geometry.notes)  # what the readers decided
    note = "; ".join(n for n in (note, *read_notes) if n)
    return {"ed": ed, "es": es, "ed_es_source": source, "volumes": volumes, "measures": measures,
            "lv_voxels": lv_voxels, "voxel_ml": voxel_ml, "note": note, "aha": wall}


def study_wall(study: Study, masks: list[np.ndarray], ed: int, es: int) -> dict[str, Any] | None:
    """The AHA 17-segment analysis (:func:`~cmrseg.measures.aha.aha_analysis`) of the ED and ES
    masks (ED alone for a single frame), slices numbered as in the mask files; ``None`` without
    an in-plane voxel size (no thickness in mm)."""
    geom = study.frames[0].geometry
    if geom.inplane_spacing is None:
        return None
    result = aha_analysis(masks[ed], masks[es] if es != ed else None, geom.inplane_spacing, geom.affine)
    for row in result["slices"]:
        row["slice"] = study.file_k(row["slice"])
        if row["insertion from slice"] is not None:
            row["insertion from slice"] = study.file_k(row["insertion from slice"])
    return result


def check_base_apex(study: Study, preds: list, slice_order: str) -> tuple[str, list[dict[str, Any]]]:
    """How the base and apex were told apart, and a ``base_apex_unsure`` review flag when the
    anatomy (the LV and its myocardium are larger towards the base:
    :func:`~cmrseg.data.orientation.anatomy_reversed`) puts the base at the other end from the
    order the study was read in. The order itself was decided at reading and is not changed."""
    if slice_order != "auto":
        return f"--slice-order {slice_order}", []
    reversed_ = anatomy_reversed([p.mask for p in preds])
    if reversed_ is None:
        return "geometry (the anatomy could not decide)", []
    if not reversed_:
        return "geometry (the anatomy agrees)", []
    n = study.frames[0].num_slices
    return "geometry (the anatomy disagrees: flagged)", [{
        "frame": "", "slice": None, "flag": "base_apex_unsure",
        "detail": f"the LV and myocardium are larger at k={study.file_k(n - 1)} than at the base the image geometry "
                  f"gives (k={study.file_k(0)}); check the stack, or segment it again with --slice-order reverse"}]


def process_study(study: Study, batch: Batch, writer: StudyWriter | None = None) -> dict[str, Any]:
    """Segment, measure, check and draw one study; returns its JSON record.

    Everything is computed before the first file is written, and a failure while writing
    removes what this study wrote (``writer``, by default into the output folder), so a failed
    study leaves nothing behind. A file already in the folder is replaced only when an earlier
    run wrote it (``batch.owned``)."""
    writer = writer or batch.writer()
    t0 = time.perf_counter()
    seg, opinion = _second_opinion(study, _segmented(study, batch.predictor, batch), batch)
    preds, meas, flags, mid = seg["preds"], seg["meas"], seg["flags"], seg["mid"]
    masks = [p.mask for p in preds]
    qc = _verdict(study, preds, meas, flags, mid, batch) | {"uncertainty": seg["uncertainty"],
                                                            "base_apex_from": seg["order_from"]}
    try:
        outputs = _write_outputs(study, preds, meas, writer, batch)
        figures = writer.figures(study, masks, meas, flags)
    except BaseException:
        writer.undo()
        raise
    return _record(study, meas, flags, qc, outputs, figures, batch) | {
        "second_opinion": opinion, "model_seconds": seg["model_seconds"], "seconds": time.perf_counter() - t0}


def _second_opinion(study: Study, seg: dict[str, Any], batch: Batch) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """``seg`` (:func:`_segmented`), or the study segmented again on standardised intensities when
    the predictor has a second opinion (:class:`~cmrseg.inference.ensemble.SecondOpinion`), ``seg``'s
    uncertainty exceeds its threshold and the networks are surer of the second reading; with what
    was asked and kept (``None``: not asked). The networks' seconds count both readings."""
    second = getattr(batch.predictor, "second_opinion", None)
    if second is None or seg["uncertainty"] is None or seg["uncertainty"] <= second.above:
        return seg, None
    other = _segmented(study, second.predictor, batch)
    kept = other["uncertainty"] is not None and other["uncertainty"] < seg["uncertainty"]
    opinion = {"uncertainty as read": seg["uncertainty"], "uncertainty standardised": other["uncertainty"],
               "kept": "standardised" if kept else "as read"}
    chosen = other if kept else seg
    chosen["model_seconds"] = seg["model_seconds"] + other["model_seconds"]
    if kept:
        chosen["meas"]["note"] = "; ".join(n for n in (chosen["meas"]["note"], (
            f"segmented on histogram-standardised intensities: the networks were surer of them (expected wrong "
            f"{seg['uncertainty']:.1%} of the masks as read, {other['uncertainty']:.1%} standardised)")) if n)
    return chosen, opinion


def _segmented(study: Study, predictor, batch: Batch) -> dict[str, Any]:
    """One study segmented by ``predictor``: its predictions, measures, QC flags, mid-slice
    counts, uncertainty (:func:`_quality_flags`), how base and apex were told, and the networks'
    seconds."""
    preds = predictor.predict_volumes(study.frames, keep_probabilities="probabilities" in batch.options.extras)
    order_from, order_flags = check_base_apex(study, preds, batch.options.slice_order)
    _blank_missing_slices(study, preds)
    meas = study_measures(study, [p.mask for p in preds])
    flags, mid, uncertainty = _quality_flags(study, preds, meas)
    return {"preds": preds, "meas": meas, "flags": flags + order_flags, "mid": mid, "uncertainty": uncertainty,
            "order_from": order_from, "model_seconds": float(sum(p.seconds for p in preds))}


def _verdict(study: Study, preds: list, meas: dict[str, Any], flags: list[dict[str, Any]], mid: dict[str, int],
             batch: Batch) -> dict[str, Any]:
    """The verdict and its reasons (:func:`~cmrseg.inference.quality.qc_verdict`), each measure's
    estimated error and what it came from (:mod:`.error_estimates`), and the findings."""
    features = error_features(study, preds, meas)
    estimates, likely = {}, {}
    if features and batch.calibration:
        estimates = estimate(features, meas["measures"], batch.calibration)
        likely = estimate(features, meas["measures"], batch.calibration, part="verdict")
    verdict_, reasons = qc_verdict(flags, mid, likely, batch.limits)
    return {"qc": verdict_, "qc_reasons": reasons, "estimated_errors": estimates, "likely_errors": likely,
            "error_features": features,
            "findings": findings(meas["measures"]), "qc_frames": sorted(mid)}


def _record(study: Study, meas: dict[str, Any], flags: list[dict[str, Any]], qc: dict[str, Any], outputs: list[Path],
            figures: dict[str, Path | None], batch: Batch) -> dict[str, Any]:
    """A segmented study's JSON record (``OUT/studies/<study>.json``)."""
    geom, out = study.frames[0].geometry, batch.out
    return {
        "study": study.name, "status": "ok", "source": str(study.source), "kind": study.kind,
        "frames": len(study.frames), "ed_frame": _frame_number(study, meas["ed"]),
        "es_frame": _frame_number(study, meas["es"]), "ed_es_source": meas["ed_es_source"],
        "phase_frames": {"ED": study.frame_label(meas["ed"]), "ES": study.frame_label(meas["es"])},
        "spacing_mm": list(geom.spacing) if geom.spacing is not None else None,
        "spacing_source": geom.spacing_source, "measures": meas["measures"], "note": meas["note"],
        "base_slice_k": study.file_k(0), **qc,
        "frame_volumes_ml": meas["volumes"], "lv_voxels": meas["lv_voxels"],
        "flags": [_file_order(f, study) for f in flags],
        "outputs": [str(p.relative_to(out)) for p in outputs],
        "output_frames": {str(p.relative_to(out)): [study.frame_label(t) for t in idx]
                          for p, idx in zip(outputs, frames_by_file(study))},
        "extras": list(batch.options.extras), "error_calibration": batch.calibration.get("source"),
        "aha": meas["aha"], **{key: str(p.relative_to(out)) if p else None for key, p in figures.items()},
    }


def _write_outputs(study: Study, preds: list, meas: dict[str, Any], writer: StudyWriter, batch: Batch) -> list[Path]:
    """The mask files, then the extras asked for beside them (a DICOM SEG's note joins
    ``meas["note"]``); returns their paths, the masks first (:func:`frames_by_file` order)."""
    masks = [p.mask for p in preds]
    outputs = writer.masks(study, masks)
    if batch.options.save_probabilities:
        outputs += writer.probabilities(study, preds, list(outputs))
    if batch.options.dicom_seg and study.frames[0].fmt == "dicom":
        segs, seg_note = writer.dicom_segs(study, masks, outputs[0], (meas["ed"], meas["es"]),
                                           _seg_algorithm(batch.predictor))
        outputs += segs
        meas["note"] = "; ".join(n for n in (meas["note"], seg_note) if n)
    return outputs


def _blank_missing_slices(study: Study, preds: list) -> None:
    """No image there in the input: nothing is labelled there, and nothing expected wrong."""
    for v, p in zip(study.frames, preds):
        gaps = v.meta.get("missing_slices") or []
        p.mask[gaps] = 0
        if p.expected_errors is not None:
            p.expected_errors[gaps] = 0.0
        if p.probabilities is not None:
            p.probabilities[gaps] = np.array([1.0, 0.0, 0.0, 0.0], dtype=p.probabilities.dtype)[:, None, None]
        if p.bands is not None:
            p.bands[gaps] = 0


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
            flags += slice_flags(pred.mask, pred.class_probs, study.frame_label(t), pixel_mm)
            mid[study.frame_label(t)] = mid_slice_count(pred.mask)
            if pred.expected_errors is not None:
                flags += uncertainty_flags(pred.expected_errors, pred.mask, study.frame_label(t))
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
        flags += [{"frame": study.frame_label(t), "slice": k, "flag": "missing_image",
                   "detail": "no image for this slice and frame in the input: mask left empty, volumes interpolate it"}
                  for t, g in enumerate(gaps) for k in g]
    return flags, mid, share


def _seg_algorithm(predictor: Predictor | EnsemblePredictor) -> str:
    """The model's name as a DICOM SEG gives its algorithm (at most 64 characters): its shipped
    or folder name, or ``ensemble of N``."""
    paths = str(predictor.meta.get("path") or predictor.name).split("; ")
    return (Path(paths[0]).name if len(paths) == 1 else f"ensemble of {len(paths)}")[:64]


def _is_done(out: Path, name: str, extras: tuple[str, ...] = ()) -> bool:
    """A study finished by an earlier run, its outputs in place and made with every optional
    output asked for now (a rerun with ``--save-probabilities`` redoes studies done without)."""
    rec = read_record(out, name)
    return (rec is not None and rec.get("status") == "ok" and set(extras) <= set(rec.get("extras", ()))
            and all((out / o).exists() for o in rec.get("outputs", [])))


def segment(inputs: list[str | Path], out: str | Path, options: SegmentOptions = SegmentOptions()) -> int:
    """Run a batch (:class:`~cmrseg.inference.options.SegmentOptions`); returns the exit code
    (0 all good, 1 some studies failed)."""
    out = Path(out)
    shard, shard_from = parse_shard(options.shard)
    spacing = spacing_from_option(options.spacing)
    parse_limits(options.qc_limits)  # a malformed --qc-limits is refused before anything is read
    check_location(out, [Path(i) for i in inputs])
    check_reports_ours(out)
    sources, skipped = discover(inputs)
    if not sources:
        why = "; ".join(f"{k.path}: {k.reason}" for k in skipped[:3])
        raise CmrsegError("no short-axis studies found in the inputs" + (f" (skipped {why})" if why else ""))
    predictor = load_predictor(options.model, options.inference)
    ensure_writable(out)  # only once the inputs and the model are known good
    paths = [str(predictor.meta.get("path", "")), *(predictor.meta.get("members") or [])]
    batch = Batch(out, options, predictor, shard, spacing, owned=owned_files(out), calibration=load_calibration(paths),
                  limits=parse_limits(options.qc_limits))
    with writer_lock(out, shard):
        return _run_batch(batch, sources[shard[0]::shard[1]], inputs, skipped, shard_from)


def _run_batch(batch: Batch, mine: list[StudySource], inputs: list, skipped: list, shard_from: str) -> int:
    """This shard's studies (``mine``) segmented, the reports rebuilt, the console told."""
    out, (idx, n) = batch.out, batch.shard
    todo = [s for s in mine if batch.options.overwrite or not _is_done(out, s.name, batch.options.extras)]
    info = _run_info(batch.predictor, inputs, skipped, f"{idx + 1}/{n}")
    print(f"cmrseg segment: {len(mine)} {'study' if len(mine) == 1 else 'studies'} in this shard ({idx + 1}/{n}, "
          f"{shard_from}), {len(mine) - len(todo)} already done, model {batch.predictor.name} "
          f"({batch.predictor.meta.get('source')}: {batch.predictor.meta.get('path')}) on {batch.predictor.device}",
          flush=True)
    for k in skipped:
        print(f"  skipped {k.path}: {k.reason}", flush=True)
    failures = _run_studies(todo, batch, info["shard"])
    info["finished"] = time.strftime("%Y-%m-%d %H:%M:%S")
    write_json(out / "shards" / f"{idx + 1}-of-{n}.json", {**info, "studies": [s.name for s in todo]})
    summary = rebuild_reports(out, info)
    done = len(todo) - len(failures)
    print(f"{done} {'study' if done == 1 else 'studies'} segmented in this run, {len(mine) - len(todo)} already done; "
          f"measures in {out / 'measures.csv'}, report {out / 'report.html'}")
    print(qc_line(summary["studies"]))
    if failures:
        print(f"{len(failures)} failed:", file=sys.stderr)
        for f in failures:
            print(f"  {f['study']}: {f['error']}", file=sys.stderr)
        return 1
    return 0


def _run_info(predictor: Predictor | EnsemblePredictor, inputs: list, skipped: list, shard: str) -> dict[str, Any]:
    """What a shard's record and the summary say about this run (versions, model, settings)."""
    options = predictor.options
    return {"cmrseg_version": __version__, "torch": torch.__version__, "python": sys.version.split()[0],
            "platform": platform.platform(), "model": predictor.name, "model_path": predictor.meta.get("path"),
            "model_source": predictor.meta.get("source"), "model_members": predictor.meta.get("members"),
            "model_protocol": predictor.meta.get("protocol"), "device": str(predictor.device),
            "backend": predictor.meta.get("backend"), "postprocess": predictor.postprocess, "gate": predictor.gate,
            "tta": "fast" if options.tta == "fast" else options.tta == "on",
            "precision": "bf16" if predictor.amp is not None else "fp32",
            "second_opinion": ({"above_uncertainty": predictor.second_opinion.above,
                                "landmarks": list(predictor.second_opinion.predictor.members[0].preprocess.landmarks)}
                               if getattr(predictor, "second_opinion", None) else None),
            "shard": shard, "inputs": [str(i) for i in inputs],
            "skipped": [{"path": str(k.path), "reason": k.reason} for k in skipped],
            "started": time.strftime("%Y-%m-%d %H:%M:%S")}


def _run_studies(todo: list[StudySource], batch: Batch, shard: str) -> list[dict[str, Any]]:
    """Read (in worker processes), segment and record every study; returns the failures.
    One study's failure never stops the batch."""
    options = batch.options
    num_workers = min(options.workers, len(todo)) if todo else 0
    # one study in flight per reader: with large cines, prefetching more multiplies the memory
    loader = torch.utils.data.DataLoader(_StudyReader(todo, batch.spacing, options.slice_order), batch_size=None,
                                         num_workers=num_workers, worker_init_fn=_DieWithParent() if num_workers else None,
                                         prefetch_factor=1 if num_workers else None)
    failures = []
    for i, study, error in tqdm(loader, total=len(todo), desc="segment", unit="study", disable=not options.progress):
        src = todo[i]
        t0 = time.perf_counter()
        writer = batch.writer(src)
        if error is None:
            try:
                record = process_study(study, batch, writer)
            except CmrsegError as exc:
                error = str(exc)
            except Exception as exc:  # isolate: one study's failure never stops the batch
                error = f"{src.paths[0]}: {type(exc).__name__}: {exc}"
        if error is not None:
            record = {"study": src.name, "status": "failed", "error": error, "seconds": time.perf_counter() - t0,
                      "source": str(src.paths[0]), "kept": kept_files(batch.out, src.name)}
            failures.append(record)
        record["shard"] = shard
        write_json(record_file(batch.out, src.name), record)
        writer.done()
    return failures
