"""Evaluation per ``shared/docs/PROTOCOL.md``: slice-level and volume Dice, HD95, topology
rates, clinical-measure errors (mean absolute and signed, with bootstrap intervals over
patients), the signed volume errors by slice level and the wall-thickness agreement, aggregated
and written as CSV, Markdown and JSON.

:func:`evaluate_volumes` is the core (arrays in, numbers out) that ``reproduce`` and ``cmrseg
evaluate`` use (training selects epochs with its fast equivalent,
:func:`cmrseg.measures.metrics.level_dice_fast`); :func:`evaluate_folders` reads prediction /
truth folders.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
from tqdm.auto import tqdm

from cmrseg.atomic import write_json, write_text
from cmrseg.data.io.common import is_label_file, parse_phase_name, strip_suffix
from cmrseg.data.io.discovery import TreeWalk
from cmrseg.data.io.formats import described, label_formats
from cmrseg.data.io.readers import read_label_volumes
from cmrseg.errors import InputError
from cmrseg.evaluation.aha_agreement import aha_agreement, aha_csv, aha_table, segment_pairs
from cmrseg.evaluation.compare import mean_intervals, per_patient
from cmrseg.evaluation.figures import bland_altman, dice_by_level, limits_of_agreement, wall_thickness_scatter
from cmrseg.evaluation.groups import read_groups
from cmrseg.evaluation.quality_check import check_quality, quality_table
from cmrseg.labels import (
    CLASS_NAMES,
    LV,
    MYO,
    check_convention,
    cine_phases,
    label_map_json,
    label_table,
    to_project_labels,
)
from cmrseg.measures.clinical import (
    ERROR_MEASURES,
    MEASURE_COLUMNS,
    cardiac_measures,
    mean_wall_mm,
    structure_volumes_ml,
)
from cmrseg.measures.levels import LEVELS, level_indices
from cmrseg.measures.metrics import dice_per_class, hd95_per_class
from cmrseg.measures.topology import TopologyCounts, topology_counts


@dataclass
class EvalVolume:
    """One predicted volume against its truth (both ``[S, H, W]``, base -> apex)."""

    name: str
    pred: np.ndarray
    gt: np.ndarray
    spacing: tuple[float, float, float] | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    #: where the prediction came from: (file relative to the prediction folder, frame index in
    #: it, whether its slices were reversed to run base -> apex), for matching the QC records
    #: of ``cmrseg segment`` (:mod:`cmrseg.evaluation.quality_check`)
    source: tuple[str, int, bool] | None = None


@dataclass
class VolumeResult:
    name: str
    meta: dict[str, Any]
    level_dice: dict[str, np.ndarray]  # level -> [RV, MYO, LV] (NaN = skipped)
    volume_dice: np.ndarray
    hd95: np.ndarray
    topology: TopologyCounts
    pred_volumes: dict[str, float] | None
    gt_volumes: dict[str, float] | None
    #: signed volume error (mL, prediction - truth) of [RV, MYO, LV] on the slices of each
    #: level (the protocol's levels of the truth) and on the whole stack (``all``); None without spacing
    level_volume_error: dict[str, np.ndarray] | None = None
    #: mean myocardial wall thickness (mm, :func:`cmrseg.measures.clinical.mean_wall_mm`) of the
    #: slices of each level where truth and prediction both have LV and MYO: ``[n, 3]`` (slice,
    #: truth, prediction) per level; None without spacing
    wall_mm: dict[str, np.ndarray] | None = None
    #: {AHA segment: (truth, prediction) mean wall thickness in mm} where both masks measured it
    #: (:func:`cmrseg.evaluation.aha_agreement.segment_pairs`); None without spacing
    aha_mm: dict[int, tuple[float, float]] | None = None


def _has_wall(sl: np.ndarray) -> bool:
    return bool((sl == LV).any() and (sl == MYO).any())


def _wall_thickness(pred: np.ndarray, gt: np.ndarray, levels: dict[str, np.ndarray], pixel_mm: float
                    ) -> dict[str, np.ndarray]:
    return {lv: np.array([(s, mean_wall_mm(gt[s], pixel_mm), mean_wall_mm(pred[s], pixel_mm)) for s in idx
                          if _has_wall(gt[s]) and _has_wall(pred[s])], dtype=float).reshape(-1, 3)
            for lv, idx in levels.items()}


def _level_volume_error(pred: np.ndarray, gt: np.ndarray, levels: dict[str, np.ndarray], voxel_ml: float
                        ) -> dict[str, np.ndarray]:
    groups = {**levels, "all": np.arange(gt.shape[0])}
    return {lv: np.array([voxel_ml * (int((pred[idx] == c).sum()) - int((gt[idx] == c).sum()))
                          for c in range(1, len(CLASS_NAMES) + 1)], dtype=float)
            for lv, idx in groups.items()}


def evaluate_case(case: EvalVolume, with_hd95: bool = True) -> VolumeResult:
    if case.pred.shape != case.gt.shape:
        raise ValueError(f"{case.name}: prediction shape {case.pred.shape} != truth shape {case.gt.shape}")
    levels = level_indices(case.gt)
    level_dice = {lv: dice_per_class(case.pred[idx], case.gt[idx]) if idx.size else np.full(3, np.nan)
                  for lv, idx in levels.items()}
    voxel_ml = None
    if case.spacing is not None and np.all(np.isfinite(case.spacing)):
        voxel_ml = float(np.prod(case.spacing)) / 1000.0
    return VolumeResult(
        name=case.name,
        meta=case.meta,
        level_dice=level_dice,
        volume_dice=dice_per_class(case.pred, case.gt),
        hd95=hd95_per_class(case.pred, case.gt, case.spacing) if with_hd95 else np.full(3, np.nan),
        topology=topology_counts(case.pred),
        pred_volumes=structure_volumes_ml(case.pred, voxel_ml) if voxel_ml else None,
        gt_volumes=structure_volumes_ml(case.gt, voxel_ml) if voxel_ml else None,
        level_volume_error=_level_volume_error(case.pred, case.gt, levels, voxel_ml) if voxel_ml else None,
        wall_mm=_wall_thickness(case.pred, case.gt, levels, float(np.sqrt(case.spacing[1] * case.spacing[2])))
        if voxel_ml else None,
        aha_mm=segment_pairs(case.pred, case.gt, (case.spacing[1], case.spacing[2])) if voxel_ml else None,
    )


def _mean(values: Iterable[float]) -> float:
    arr = np.array([v for v in values if v is not None and np.isfinite(v)], dtype=float)
    return float(arr.mean()) if arr.size else float("nan")


def _dice_table(results: Sequence[VolumeResult]) -> dict[str, dict[str, float]]:
    table: dict[str, dict[str, float]] = {}
    for lv in (*LEVELS, "volume"):
        row = {}
        for i, cname in enumerate(CLASS_NAMES):
            vals = [(r.volume_dice if lv == "volume" else r.level_dice[lv])[i] for r in results]
            row[cname] = _mean(vals)
        row["avg"] = _mean(row[c] for c in CLASS_NAMES)
        table[lv] = row
    return table


def clinical_rows(results: Sequence[VolumeResult]) -> list[dict[str, Any]]:
    """Per patient with ED and ES (and spacing): predicted and true measures and errors."""
    by_patient: dict[str, dict[str, VolumeResult]] = {}
    for r in results:
        phase, patient = r.meta.get("phase"), r.meta.get("patient")
        if phase in ("ED", "ES") and patient and r.pred_volumes is not None:
            by_patient.setdefault(patient, {})[phase] = r
    rows = []
    for patient, phases in sorted(by_patient.items()):
        if set(phases) != {"ED", "ES"}:
            continue
        pred = cardiac_measures(phases["ED"].pred_volumes, phases["ES"].pred_volumes)
        true = cardiac_measures(phases["ED"].gt_volumes, phases["ES"].gt_volumes)
        row: dict[str, Any] = {"patient": patient, "group": phases["ED"].meta.get("group", "")}
        for col in MEASURE_COLUMNS:
            row[f"pred {col}"] = pred[col]
            row[f"true {col}"] = true[col]
            row[f"error {col}"] = pred[col] - true[col]
        rows.append(row)
    return rows


def _clinical_summary(rows: list[dict[str, Any]]) -> dict[str, Any]:
    if not rows:
        return {}

    def errors(subset):
        """Mean absolute error, signed bias (mean of prediction minus truth) and Bland-Altman
        limits of agreement (bias -+ 1.96 SD) per measure."""
        out = {}
        for m in ERROR_MEASURES:
            out[f"{m} MAE"] = _mean(abs(r[f"error {m}"]) for r in subset)
            out[f"{m} bias"] = _mean(r[f"error {m}"] for r in subset)
            out[f"{m} LoA"] = list(limits_of_agreement([r[f"error {m}"] for r in subset])[1:])
        return out

    out: dict[str, Any] = {"patients": len(rows), "all": errors(rows), "by_group": {}}
    for group in sorted({r["group"] for r in rows if r["group"]}):
        subset = [r for r in rows if r["group"] == group]
        out["by_group"][group] = {"patients": len(subset), **errors(subset)}
    return out


def volume_error_by_level(results: Sequence[VolumeResult]) -> dict[str, Any]:
    """Where the volume errors sit: {phase: {structure: {level: mL}}}, the mean over that
    phase's volumes of prediction minus truth on the base / mid / apex slices (PROTOCOL.md's
    levels of the truth, which put slices above the heart in base and below it in apex) and on
    the whole stack (``all``: the phase's volume bias). ED and ES volumes only, one per patient."""
    out: dict[str, Any] = {}
    for phase in ("ED", "ES"):
        errs = [r.level_volume_error for r in results if r.meta.get("phase") == phase and r.level_volume_error]
        if not errs:
            continue
        out[phase] = {"volumes": len(errs)}
        for k, name in enumerate(CLASS_NAMES):
            out[phase][name] = {lv: float(np.mean([e[lv][k] for e in errs])) for lv in (*LEVELS, "all")}
    return out


def _agreement(pairs: np.ndarray) -> dict[str, float]:
    """Truth and prediction (``[n, 2]``) side by side: their means and SDs, the mean difference
    and the slope of prediction on truth (1: the thicknesses follow the truth's; below 1: pulled
    toward an average; NaN with fewer than three slices or no spread in the truth)."""
    truth, pred = pairs[:, 0], pairs[:, 1]
    spread = pairs.shape[0] >= 3 and float(truth.std()) > 0
    return {"slices": int(pairs.shape[0]), "truth mm": float(truth.mean()), "prediction mm": float(pred.mean()),
            "bias mm": float((pred - truth).mean()),
            "SD truth mm": float(truth.std(ddof=1)) if pairs.shape[0] > 1 else float("nan"),
            "SD prediction mm": float(pred.std(ddof=1)) if pairs.shape[0] > 1 else float("nan"),
            "slope": float(np.polyfit(truth, pred, 1)[0]) if spread else float("nan")}


def wall_pairs(results: Sequence[VolumeResult]) -> dict[str, dict[str, np.ndarray]]:
    """{phase: {level: ``[n, 2]`` (truth, prediction) mm}} of every slice with a wall in both
    (the volumes without a phase under ``volumes``); phases without such slices left out."""
    out = {}
    for phase in ("ED", "ES", "volumes"):
        walls = [r.wall_mm for r in results if r.wall_mm is not None and (r.meta.get("phase") or "volumes") == phase]
        if walls:
            out[phase] = {lv: np.concatenate([w[lv][:, 1:] for w in walls]) for lv in LEVELS}
    return out


def wall_thickness_agreement(results: Sequence[VolumeResult]) -> dict[str, Any]:
    """Does the prediction keep each slice's wall thickness? {phase: {level or ``all``:
    :func:`_agreement`}} over :func:`wall_pairs`. The brief's failure mode, thickness "pulled
    toward an average", shows as a slope below 1 and a prediction SD below the truth's."""
    out: dict[str, Any] = {}
    for phase, rows in wall_pairs(results).items():
        rows = {**rows, "all": np.concatenate(list(rows.values()))}
        if rows["all"].shape[0]:
            out[phase] = {lv: _agreement(pairs) for lv, pairs in rows.items() if pairs.shape[0]}
    return out


def wall_thickness_csv(results: Sequence[VolumeResult]) -> str:
    """One row per slice with a wall in truth and prediction: volume, patient, phase, slice,
    level, both thicknesses (mm)."""
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["volume", "patient", "phase", "slice", "level", "truth wall (mm)", "prediction wall (mm)"])
    for r in results:
        for lv, rows in (r.wall_mm or {}).items():
            w.writerows([r.name, r.meta.get("patient", ""), r.meta.get("phase") or "", int(s), lv, f"{t:.3f}",
                         f"{p:.3f}"] for s, t, p in rows)
    return buf.getvalue()


def summarize(results: Sequence[VolumeResult], units: str = "mm") -> dict[str, Any]:
    """The ``summary.json`` structure: ``levels`` (base/mid/apex/volume -> RV/MYO/LV/avg),
    ``fragment_rate``, ``hole_rate``, ``hd95``, ``clinical``, ``volume_error_by_level``,
    ``wall_thickness``, ``aha`` (per-segment wall agreement) and the label map."""
    topo = sum((r.topology for r in results), TopologyCounts())
    hd = {c: _mean(r.hd95[i] for r in results) for i, c in enumerate(CLASS_NAMES)}
    by_group: dict[str, Any] = {}
    for group in sorted({str(r.meta.get("group")) for r in results if r.meta.get("group")}):
        by_group[group] = _dice_table([r for r in results if r.meta.get("group") == group])["volume"]
    return {
        "n_volumes": len(results),
        "levels": _dice_table(results),
        "fragment_rate": topo.fragment_rate,
        "hole_rate": topo.hole_rate,
        "topology_counts": dict(zip(("fragmented_pairs", "predicted_pairs", "slices_with_holes",
                                     "slices_with_lv_or_myo"), topo.astuple())),
        f"hd95_{units}": hd,
        "volume_dice_by_group": by_group,
        "clinical": _clinical_summary(clinical_rows(results)),
        "volume_error_by_level": volume_error_by_level(results),
        "wall_thickness": wall_thickness_agreement(results),
        "aha": aha_agreement(results),
        "label_map": label_map_json(),
    }


def evaluate_volumes(cases: Iterable[EvalVolume], with_hd95: bool = True, progress: bool = False) -> tuple[list[VolumeResult], dict]:
    """Evaluate every case; returns (per-case results, summary)."""
    cases = list(cases)
    results = [evaluate_case(c, with_hd95) for c in tqdm(cases, desc="evaluate", disable=not progress, leave=False)]
    units = "mm" if all(c.spacing is not None for c in cases) else "voxels"
    return results, summarize(results, units)


# ----------------------------------------------------------------------------- reports

def _fmt(v: float) -> str:
    return "–" if v is None or not np.isfinite(v) else f"{v:.3f}"


def markdown_table(rows: Sequence[tuple[str, dict]], include_volume: bool = True) -> str:
    """The paper's Table 1 layout: one block of rows per model, one row per slice level.

    ``rows``: (model name, summary) pairs, summaries as returned by :func:`summarize`.
    """
    out = ["| Model | Slice level | RV Dice | MYO Dice | LV Dice | Average Dice |", "|---|---|---|---|---|---|"]
    for name, summary in rows:
        for i, lv in enumerate((*LEVELS, "volume") if include_volume else LEVELS):
            r = summary["levels"][lv]
            label = lv.capitalize() if lv != "volume" else "Volume"
            out.append(f"| {name if i == 0 else ''} | {label} | {_fmt(r['RV'])} | {_fmt(r['MYO'])} | "
                       f"{_fmt(r['LV'])} | {_fmt(r['avg'])} |")
    return "\n".join(out) + "\n"


def topology_table(rows: Sequence[tuple[str, dict]]) -> str:
    out = ["| Model | Fragment rate | Hole rate | HD95 RV | HD95 MYO | HD95 LV |", "|---|---|---|---|---|---|"]
    for name, s in rows:
        hd = s.get("hd95_mm") or s.get("hd95_voxels") or {}
        out.append(f"| {name} | {100 * s['fragment_rate']:.2f} % | {100 * s['hole_rate']:.2f} % | "
                   f"{_fmt(hd.get('RV'))} | {_fmt(hd.get('MYO'))} | {_fmt(hd.get('LV'))} |")
    return "\n".join(out) + "\n"


def _mae_bias(clin: dict, measure: str) -> str:
    """``MAE (bias)``, the bias signed: prediction minus truth."""
    bias = clin.get(f"{measure} bias", float("nan"))
    return f"{clin[f'{measure} MAE']:.2f} ({bias:+.2f})"


def clinical_table(rows: Sequence[tuple[str, dict]]) -> str:
    """Mean absolute error per patient, signed bias (mean prediction - truth) in brackets."""
    cols = list(ERROR_MEASURES)
    out = ["| Model | " + " | ".join(f"{c} MAE (bias)" for c in cols) + " |", "|---" * (len(cols) + 1) + "|"]
    for name, s in rows:
        clin = s.get("clinical", {}).get("all")
        if clin:
            out.append(f"| {name} | " + " | ".join(_mae_bias(clin, c) for c in cols) + " |")
    return "\n".join(out) + "\n" if len(out) > 2 else ""


def wall_slope_table(rows: Sequence[tuple[str, dict]]) -> str:
    """One row per model: its wall-thickness bias and slope at ED and ES over all slices
    (:func:`wall_thickness_agreement`); empty when no model has them."""
    out = ["| Model | ED bias (mm) | ED slope | ES bias (mm) | ES slope |", "|---|---|---|---|---|"]
    for name, s in rows:
        walls = s.get("wall_thickness") or {}
        cells = [(f"{walls[ph]['all']['bias mm']:+.2f}", f"{walls[ph]['all']['slope']:.2f}") if "all" in walls.get(ph, {})
                 else ("", "") for ph in ("ED", "ES")]
        if any(c for pair in cells for c in pair):
            out.append(f"| {name} | {cells[0][0]} | {cells[0][1]} | {cells[1][0]} | {cells[1][1]} |")
    return "\n".join(out) + "\n" if len(out) > 2 else ""


def volume_error_table(by_level: dict[str, Any]) -> list[str]:
    """Markdown lines of :func:`volume_error_by_level` (nothing when no volume was measurable)."""
    if not by_level:
        return []
    md = ["\nSigned volume error by slice level (mL, prediction - truth, mean over the phase's volumes; "
          "levels of the truth)\n",
          "| phase | structure | " + " | ".join(LEVELS) + " | all |", "|---|---" + "|---" * (len(LEVELS) + 1) + "|"]
    for phase, rows in by_level.items():
        md += [f"| {phase} | {name} | " + " | ".join(f"{rows[name][lv]:+.2f}" for lv in (*LEVELS, "all")) + " |"
               for name in CLASS_NAMES]
    return md


def wall_thickness_table(agreement: dict[str, Any]) -> list[str]:
    """Markdown lines of :func:`wall_thickness_agreement`."""
    if not agreement:
        return []
    md = ["\nMyocardial wall thickness per slice (mm; the radii of circles of the cavity's and the cavity-plus-"
          "wall's areas, apart), on the slices where truth and prediction both have LV and MYO; slope of the "
          "prediction on the truth over slices (below 1: thicknesses pulled toward an average)\n",
          "| phase | level | slices | truth | prediction | bias | SD truth | SD prediction | slope |",
          "|---|---|---|---|---|---|---|---|---|"]
    for phase, rows in agreement.items():
        md += [f"| {phase} | {lv} | {r['slices']} | {r['truth mm']:.2f} | {r['prediction mm']:.2f} | "
               f"{r['bias mm']:+.2f} | {r['SD truth mm']:.2f} | {r['SD prediction mm']:.2f} | {r['slope']:.2f} |"
               for lv, r in rows.items()]
    return md


def per_volume_csv(results: Sequence[VolumeResult]) -> str:
    buf = io.StringIO()
    cols = ["volume", "patient", "phase", "group"]
    cols += [f"{lv} {c} Dice" for lv in LEVELS for c in CLASS_NAMES]
    cols += [f"volume {c} Dice" for c in CLASS_NAMES] + [f"{c} HD95" for c in CLASS_NAMES]
    cols += ["fragmented pairs", "predicted pairs", "slices with holes"]
    w = csv.writer(buf)
    w.writerow(cols)
    for r in results:
        row = [r.name, r.meta.get("patient", ""), r.meta.get("phase") or "", r.meta.get("group", "")]
        row += [_csv(r.level_dice[lv][i]) for lv in LEVELS for i in range(3)]
        row += [_csv(v) for v in r.volume_dice] + [_csv(v) for v in r.hd95]
        row += [r.topology.fragmented_pairs, r.topology.predicted_pairs, r.topology.slices_with_holes]
        w.writerow(row)
    return buf.getvalue()


def _csv(v: float) -> str:
    return "" if v is None or not np.isfinite(v) else f"{v:.6f}"


def clinical_csv(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return ""
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(rows[0]))
    w.writeheader()
    for r in rows:
        w.writerow({k: (f"{v:.3f}" if isinstance(v, float) else v) for k, v in r.items()})
    return buf.getvalue()


def patient_scores(results: Sequence[VolumeResult]) -> dict[str, dict[str, float]]:
    """``{patient: {metric: value}}``: the per-volume rows, clinical errors and wall-thickness
    errors by patient (:func:`cmrseg.evaluation.compare.per_patient`, as ``cmrseg compare`` reads
    a report)."""
    return per_patient(list(csv.DictReader(io.StringIO(per_volume_csv(results)))), clinical_rows(results),
                       list(csv.DictReader(io.StringIO(wall_thickness_csv(results)))))


def interval_table(intervals: dict[str, dict[str, float]]) -> list[str]:
    """Markdown lines: each number's mean over patients with its 95 % bootstrap interval."""
    if not intervals:
        return []
    n = max(r["patients"] for r in intervals.values())
    lines = [f"\nHow sure these numbers are: mean over patients (up to {n}) with its 95 % bootstrap interval (BCa, "
             "patients resampled, as `cmrseg compare` does); `abs error` means are the MAEs, `error` means the biases; "
             "a patient's Dice is its volumes' mean over the classes scored, so a level's mean can differ in the "
             "last digit from the per-volume table's\n", "| measure | patients | mean | 95 % interval |", "|---|---|---|---|"]
    for m, r in intervals.items():
        digits = 3 if "Dice" in m else 2
        ci = "–" if not np.isfinite(r["low"]) else f"{r['low']:.{digits}f} to {r['high']:.{digits}f}"
        lines.append(f"| {m} | {r['patients']} | {r['mean']:.{digits}f} | {ci} |")
    return lines


def write_report(out_dir: str | Path, results: Sequence[VolumeResult], summary: dict, model_name: str = "prediction") -> None:
    """Write ``per_volume.csv``, ``clinical.csv`` (when measurable), ``wall_thickness.csv`` and
    ``aha_segments.csv`` (with spacing), ``table.md``, ``summary.json`` (with ``intervals``:
    :func:`cmrseg.evaluation.compare.mean_intervals` over patients) and the pictures
    (:mod:`.figures`: ``dice_by_level.png``; with spacing ``wall_thickness.png``; with clinical
    measures ``bland_altman.png``) into ``out_dir`` (each atomically)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    summary = {**summary, "intervals": mean_intervals(patient_scores(results))}
    write_text(out / "per_volume.csv", per_volume_csv(results))
    rows = clinical_rows(results)
    if rows:
        write_text(out / "clinical.csv", clinical_csv(rows))
    if summary.get("wall_thickness"):
        write_text(out / "wall_thickness.csv", wall_thickness_csv(results))
    if summary.get("aha"):
        write_text(out / "aha_segments.csv", aha_csv(results))
    unscored = summary.get("predictions_without_truth") or []
    md = [f"# Evaluation ({summary['n_volumes']} volumes)\n"]
    if unscored:
        md += [f"**{len(unscored)} prediction(s) without truth, not scored:** {', '.join(unscored)}\n"]
    md += ["Dice by slice level (protocol: shared/docs/PROTOCOL.md)\n",
          markdown_table([(model_name, summary)]), "\nTopology and surface distance\n", topology_table([(model_name, summary)])]
    if summary.get("volume_dice_by_group"):
        md += [f"\nVolume Dice by {summary.get('grouped_by', 'ACDC pathology group')}\n",
               "| group | RV | MYO | LV | avg |", "|---|---|---|---|---|"]
        md += [f"| {g} | {_fmt(r['RV'])} | {_fmt(r['MYO'])} | {_fmt(r['LV'])} | {_fmt(r['avg'])} |"
               for g, r in summary["volume_dice_by_group"].items()]
    clin = clinical_table([(model_name, summary)])
    if clin:
        md += [f"\nClinical measures over {summary['clinical']['patients']} patients: mean absolute error "
               "(signed bias, prediction - truth)\n", clin]
        groups = summary["clinical"].get("by_group", {})
        if groups:
            cols = list(ERROR_MEASURES)
            md += [f"\nClinical errors by {summary.get('grouped_by', 'ACDC pathology group')}: MAE (bias)\n",
                   "| group | patients | " + " | ".join(cols) + " |", "|---|---" + "|---" * len(cols) + "|"]
            md += [f"| {g} | {r['patients']} | " + " | ".join(_mae_bias(r, c) for c in cols) + " |"
                   for g, r in groups.items()]
    md += interval_table(summary["intervals"])
    md += volume_error_table(summary.get("volume_error_by_level") or {})
    md += wall_thickness_table(summary.get("wall_thickness") or {})
    md += aha_table(summary.get("aha") or {})
    md += quality_table(summary["quality_control"]) if summary.get("quality_control") else []
    md += _figures(out, results, rows, summary)
    write_text(out / "table.md", "\n".join(md))
    write_json(out / "summary.json", summary)


def loa_table(clin: dict) -> list[str]:
    """Markdown lines: the Bland-Altman limits of agreement of every measure."""
    cols = [c for c in ERROR_MEASURES if np.all(np.isfinite(clin.get(f"{c} LoA", [np.nan])))]
    if not cols:
        return []
    return ["\nLimits of agreement (Bland-Altman: bias -+ 1.96 SD of the per-patient differences)\n",
            "| " + " | ".join(cols) + " |", "|---" * len(cols) + "|",
            "| " + " | ".join("{:+.2f} to {:+.2f}".format(*clin[f"{c} LoA"]) for c in cols) + " |"]


def _figures(out: Path, results: Sequence[VolumeResult], rows: list[dict[str, Any]], summary: dict) -> list[str]:
    """Draw ``dice_by_level.png`` and, with clinical rows, ``bland_altman.png``; the markdown
    lines that show them (with the limits of agreement)."""
    md = ["\n![Dice by slice level](dice_by_level.png)"]
    dice_by_level(results, out / "dice_by_level.png")
    if summary.get("wall_thickness"):
        wall_thickness_scatter(wall_pairs(results), out / "wall_thickness.png")
        md += ["\n![Wall thickness, prediction against truth](wall_thickness.png)"]
    if rows:
        bland_altman(rows, out / "bland_altman.png")
        md = loa_table(summary["clinical"]["all"]) + ["\n![Bland-Altman](bland_altman.png)"] + md
    return md


# ----------------------------------------------------------------------------- folders

def label_files(root: Path) -> dict[str, Path]:
    """Label files under ``root`` (the walk every command makes: :class:`TreeWalk`) by volume
    name; where truth is named ``*_gt`` beside its images, those files under the name without it."""
    formats = label_formats()
    files = [p for p in TreeWalk().paths(root) if p.is_file() and any(f.matches(p) for f in formats)]
    gt_named = [p for p in files if is_label_file(p)]
    if gt_named:
        files = gt_named
    out = {}
    for p in files:
        key = strip_suffix(p)
        key = key[:-3] if key.endswith("_gt") else key
        out[key] = p
    return out


def paired_volumes(pred_dir: str | Path, gt_dir: str | Path,
                 spacing: tuple[float, float, float] | None = None, labels: str | None = None) -> list[EvalVolume]:
    """Every truth file of ``gt_dir`` with the same-named prediction of ``pred_dir``, read.

    Both hold h5 files (dataset ``label``) or NIfTI files (truth may be named ``*_gt``);
    an ACDC release tree of patient folders works as ``gt_dir``. The voxel size is the truth's
    unless ``spacing`` is given. ``labels``: the truth's label values (``--labels``, e.g.
    ``LV=1,MYO=2,RV=3``; predictions are cmrseg's). A missing folder, truth, prediction, a shape
    mismatch or truth whose RV and LV look swapped is one :class:`InputError` naming the path.
    """
    pred_dir, gt_dir = Path(pred_dir), Path(gt_dir)
    for d in (pred_dir, gt_dir):
        if not d.is_dir():
            raise InputError(d, "folder not found")
    gts, preds = label_files(gt_dir), label_files(pred_dir)
    if not gts:
        raise InputError(gt_dir, f"no label files ({described(label_formats())})")
    missing = sorted(set(gts) - set(preds))
    if missing:
        raise InputError(pred_dir, f"no prediction for {len(missing)} of {len(gts)} truth files: "
                                   + ", ".join(missing[:5]) + (" ..." if len(missing) > 5 else ""))
    if labels is not None:
        label_table(labels, gt_dir)  # a malformed --labels is refused once, naming the truth folder
    cases = [c for key in sorted(gts) for c in _file_volumes(key, gts[key], preds[key], spacing, labels, pred_dir)]
    check_convention([c.gt for c in cases], gt_dir, labels)
    return cases


def _phase_facts(key: str, meta: dict[str, Any]) -> dict[str, Any]:
    """A volume that is one phase's own file (``<case>_ED`` / ``<case>_ES``, the M&Ms layout)
    is that patient's ED or ES, so its pair gives the clinical measures; other volumes keep the
    facts their format gave."""
    case, phase = parse_phase_name(key)
    if phase is None or meta.get("phase"):
        return meta
    return {**meta, "patient": case, "phase": phase}


def _file_volumes(key: str, gt_path: Path, pred_path: Path, spacing: tuple[float, float, float] | None,
                labels: str | None, pred_dir: Path) -> list[EvalVolume]:
    """The cases of one truth file: one for a 3D map; for a 4D label cine one per frame the
    truth labels (frames left all zero are not labelled, as in the M&Ms data), each against
    the prediction's frame of the same index, named ``<key>_frameNN`` (1-based), with ED and
    ES told by the true LV's size (:func:`cmrseg.labels.cine_phases`)."""
    gts, preds = read_label_volumes(gt_path), read_label_volumes(pred_path)
    if len(preds) != len(gts):
        raise InputError(pred_path, f"prediction has {len(preds)} frame(s), its truth {len(gts)}")
    cases = []
    for t, (g, p) in enumerate(zip(gts, preds)):
        if len(gts) > 1 and not g.label.any():
            continue
        if p.label.shape != g.label.shape:
            raise InputError(pred_path, f"prediction shape {p.label.shape} != truth shape {g.label.shape}")
        sp = spacing if spacing is not None else g.geometry.spacing
        gt = to_project_labels(g.label, gt_path, labels)
        name, meta = ((key, _phase_facts(key, g.meta)) if len(gts) == 1
                      else (f"{key}_frame{t + 1:02d}", {**g.meta, "patient": key, "frame": t + 1}))
        source = (pred_path.relative_to(pred_dir).as_posix(), t, bool(p.geometry.slices_reversed))
        cases.append(EvalVolume(name, to_project_labels(p.label, pred_path), gt, sp, meta, source))
    if len(gts) > 1:
        for case, phase in zip(cases, cine_phases([c.gt for c in cases])):
            if phase and "phase" not in case.meta:
                case.meta["phase"] = phase
    return cases


def predictions_without_truth(pred_dir: str | Path, gt_dir: str | Path) -> list[str]:
    """The prediction files (by case name) that no truth file of ``gt_dir`` matches: they are
    not scored, and ``cmrseg evaluate`` names them (:func:`evaluate_folders`)."""
    return sorted(set(label_files(Path(pred_dir))) - set(label_files(Path(gt_dir))))


def evaluate_folders(pred_dir: str | Path, gt_dir: str | Path, out_dir: str | Path,
                     spacing: tuple[float, float, float] | None = None, progress: bool = True,
                     labels: str | None = None, groups: str | Path | None = None, group_by: str = "group") -> dict:
    """Evaluate every truth file of ``gt_dir`` against the same-named file in ``pred_dir``
    (:func:`paired_volumes`); writes the report into ``out_dir`` and returns the summary.
    ``groups``: a CSV of the subjects whose column ``group_by`` gives each case's group
    (:func:`cmrseg.evaluation.groups.read_groups`), in place of ACDC's pathology groups."""
    cases = paired_volumes(pred_dir, gt_dir, spacing, labels)
    without_truth = predictions_without_truth(pred_dir, gt_dir)
    if groups is not None:
        found = read_groups(groups, group_by, sorted({str(c.meta.get("patient") or c.name) for c in cases}))
        for c in cases:
            c.meta = {**c.meta, "group": found.get(str(c.meta.get("patient") or c.name), "")}
    results, summary = evaluate_volumes(cases, progress=progress)
    summary["grouped_by"] = group_by if groups is not None else "ACDC pathology group"
    summary["predictions_without_truth"] = without_truth
    qc = check_quality(cases, results, Path(pred_dir))
    if qc is not None:
        summary["quality_control"] = qc
    write_report(out_dir, results, summary)
    return summary
