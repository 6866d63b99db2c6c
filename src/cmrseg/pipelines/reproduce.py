"""``cmrseg reproduce``: train and evaluate the paper's Table 1 models (and, with
``ablations``, every Table 2 row) with one protocol, then write the tables in the paper's
layout, a Fig. 4-style figure and the wall time of every run.

Training runs are scheduled by :mod:`cmrseg.pipelines.scheduler`: in this process one after
another (``jobs=1``) or as parallel worker processes sharing the device (``jobs>1``, useful on
a large GPU where one small model does not fill it). The splits are preprocessed once for all
runs (``OUT/cache``, :func:`~cmrseg.training.run_folder.split_caches`; removed once every run
has finished), not once per run. Evaluation is on the validation volumes in their own
geometry, with the protocol (``shared/docs/PROTOCOL.md``).
"""

from __future__ import annotations

import csv
import io
import json
import time
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from cmrseg.atomic import write_json, write_text
from cmrseg.data.dataset import is_cache
from cmrseg.data.io import load_labelled_dataset
from cmrseg.data.preprocessing import PreprocessConfig
from cmrseg.device import resolve_device
from cmrseg.errors import InputError
from cmrseg.evaluation.compare import Evaluation, compare_evaluations, summary_table, write_comparison
from cmrseg.evaluation.evaluate import (
    EvalVolume,
    clinical_table,
    evaluate_volumes,
    markdown_table,
    patient_scores,
    topology_table,
    wall_slope_table,
)
from cmrseg.evaluation.tables import (
    LABELS_T1,
    ORDER,
    REF_INPUT_ABLATION,
    TABLE1,
    TABLE2,
    fig4_examples,
    label,
    table1_rows,
    table2_rows,
    table_csv,
)
from cmrseg.inference.options import InferenceOptions
from cmrseg.inference.predictor import Predictor
from cmrseg.models.registry import PROPOSED
from cmrseg.pipelines.scheduler import InProcess, Job, Subprocess, job_config, plan, run_jobs
from cmrseg.training.run_folder import is_complete_run, remove_split_caches, resolve_splits, split_caches
from cmrseg.visualization import comparison_grid


def reproduce(data: str | Path, protocol: str, out: str | Path, ablations: bool = False, ref_input_ablation: bool = False,
              jobs: int = 1, device: str = "auto", overrides: list[str] | None = None,
              deadline_min: float | None = None, models: list[str] | None = None, labels: str | None = None) -> dict:
    """Train, evaluate and report. Returns ``{run name: summary}``. ``labels``: the data's label
    values (``--labels``), for training and for the evaluation on val."""
    out, data = Path(out), Path(data)
    out.mkdir(parents=True, exist_ok=True)
    _, val_src = resolve_splits(data)
    if is_cache(val_src):
        raise InputError(val_src, "reproduce evaluates on the original validation files; give a folder, not a cache")
    overrides = (list(overrides or []) + ([f"device={device}"] if device != "auto" else [])
                 + ([f"labels={labels}"] if labels else []))
    variants = {REF_INPUT_ABLATION: ("seg_as+ref_as_mt", ["ref_inputs=final"])} if ref_input_ablation else None
    job_list = plan(models or (TABLE2 + ["det_seg"] if ablations else TABLE1), out / "runs", variants)
    train_data = data
    if any(not is_complete_run(j.run_dir) for j in job_list):  # something to train: preprocess once for all
        train_data = split_caches(data, out / "cache", {_preprocess(j, protocol, overrides) for j in job_list}, labels)
    runner = InProcess(train_data) if jobs <= 1 else Subprocess(train_data, out / "logs")
    t0 = time.perf_counter()
    run_jobs(job_list, runner, protocol, overrides, parallel=jobs,
             deadline_s=None if deadline_min is None else deadline_min * 60)
    train_wall = time.perf_counter() - t0
    if train_data != data and all(j.status == "done" for j in job_list):  # kept only for a run to resume
        remove_split_caches(train_data)
    val_volumes = load_labelled_dataset(val_src, labels=labels)
    dev_name = resolve_device(device).type
    summaries, masks, speed, scores = evaluate_runs(job_list, val_volumes, device=dev_name)
    paired = paired_comparison(out / "paired", scores)
    text = write_report(out, job_list, summaries, speed, protocol, dev_name, paired)
    write_fig4(out / "fig4.png", val_volumes, masks, protocol)
    write_json(out / "summary.json", {
        "protocol": protocol, "device": dev_name, "train_wall_seconds": train_wall,
        "runs": {j.name: {"model": j.model, "status": j.status, "seconds": j.seconds, "error": j.error,
                          "inference_seconds_per_stack": speed.get(j.name)} for j in job_list},
        "summaries": summaries})
    print(text)
    failed = [j for j in job_list if j.status != "done"]
    if failed:
        print("runs that did not finish: " + ", ".join(f"{j.name} ({j.status}: {j.error})" for j in failed))
    return summaries


def _preprocess(job: Job, protocol: str, overrides: list[str]) -> PreprocessConfig | None:
    """The job's preprocessing; None when its config does not resolve (the scheduler then
    records that job's error)."""
    try:
        return job_config(job, protocol, overrides).preprocess
    except Exception:
        return None


def evaluate_runs(jobs: list[Job], val_volumes, device: str = "auto", progress: bool = True):
    """Predict every validation volume with every finished run; returns ({run name: summary},
    {run name: [masks]}, {run name: inference seconds per stack}, {run name: per-patient scores})."""
    summaries, masks, speed, scores = {}, {}, {}, {}
    for job in jobs:
        if job.status != "done":
            continue
        predictor = Predictor.from_path(job.run_dir, InferenceOptions(device=device))
        preds, secs = [], []
        for vol in tqdm(val_volumes, desc=f"predict {job.name}", disable=not progress, leave=False):
            p = predictor.predict_volume(vol)
            preds.append(p.mask)
            secs.append(p.seconds)
        cases = [EvalVolume(v.name, m, v.label, v.geometry.spacing, v.meta) for v, m in zip(val_volumes, preds)]
        results, summaries[job.name] = evaluate_volumes(cases)
        scores[job.name] = patient_scores(results)
        masks[job.name] = preds
        speed[job.name] = float(np.mean(secs))
    return summaries, masks, speed, scores


def paired_comparison(out: Path, scores: dict[str, dict]) -> dict | None:
    """Every other finished run against the proposed model, patient by patient
    (:mod:`cmrseg.evaluation.compare`), written to ``out``; None without the proposed model
    or another run to compare it with."""
    if PROPOSED not in scores or len(scores) < 2:
        return None
    names = [PROPOSED] + [m for m in sorted(scores, key=lambda m: ORDER.index(m) if m in ORDER else len(ORDER))
                          if m != PROPOSED]
    try:  # an addition to the report: an old SciPy or a missing matplotlib must not cost the tables
        result = compare_evaluations([Evaluation(label(m), scores[m]) for m in names])
        write_comparison(out, result)
    except (ImportError, AttributeError, TypeError) as e:
        print(f"paired comparison left out: {type(e).__name__}: {e}")
        return None
    return result


def write_fig4(path: Path, val_volumes, masks: dict, protocol: str) -> None:
    """Fig. 4: Table 1's models (or all runs) and the truth on the slices they disagree on most."""
    if not masks:
        return
    fig_masks = {m: masks[m] for m in TABLE1 if m in masks} or masks
    rows = fig4_examples(val_volumes, fig_masks)
    for r in rows:
        r["masks"] = {LABELS_T1.get(k, k): v for k, v in r["masks"].items()}
        r["masks"]["Ground truth"] = r.pop("gt")
    if rows:
        cols = [LABELS_T1.get(m, m) for m in fig_masks] + ["Ground truth"]
        comparison_grid(rows, cols, path, title=f"Basal and apical validation slices ({protocol} protocol)")


def run_times(run_dir: Path) -> tuple[float | None, float | None]:
    """(training seconds of this run's own stage, of its reused Seg stage) from model.json."""
    try:
        meta = json.loads((run_dir / "model.json").read_text())
    except (OSError, ValueError):
        return None, None
    return meta.get("train_seconds"), meta.get("seg_stage_train_seconds")


def _num(v, digits: int = 1) -> str:
    return "" if v is None or not np.isfinite(v) else f"{v:.{digits}f}"


def _minutes(v) -> str:
    return "" if v is None else f"{v / 60:.1f} min"


def write_report(out: Path, jobs: list[Job], summaries: dict, speed: dict, protocol: str, device: str,
                 paired: dict | None = None) -> str:
    """Write table1/table2 (md + csv), timings.csv and report.md (with ``paired``, the
    comparison with the proposed model); returns the report text."""
    t1, t2 = table1_rows(summaries), table2_rows(summaries)
    for name, rows in (("table1", t1), ("table2", t2)):
        if rows or name == "table1":
            write_text(out / f"{name}.md", markdown_table(rows))
            write_text(out / f"{name}.csv", table_csv(rows))
    times = {j.name: run_times(j.run_dir) for j in jobs}
    write_text(out / "timings.csv", _timings_csv(jobs, times, speed))
    named = [(label(m), summaries[m]) for m in sorted(summaries, key=lambda m: ORDER.index(m) if m in ORDER else len(ORDER))]
    report = [f"# Reproduction ({protocol} protocol, device {device})\n",
              "## Table 1: Dice by slice level (validation split)\n", markdown_table(t1)]
    if t2:
        report += ["\n## Table 2: ablations\n", markdown_table(t2)]
    report += ["\n## Topology and surface distance\n", topology_table(named)]
    if clin := clinical_table(named):
        report += ["\n## Clinical measures (mean absolute error per patient)\n", clin]
    if walls := wall_slope_table(named):
        report += ["\n## Wall thickness per slice: prediction against truth\n",
                   "Bias (mm) and slope of the prediction on the truth over all slices; a slope below 1 means "
                   "thicknesses pulled toward an average.\n", walls]
    if paired:
        report += [f"\n## Each model against the proposed model, patient by patient ({paired['patients']} patients)\n",
                   f"Mean difference (model - {paired['reference']}) [95 % bootstrap interval]; * where the Wilcoxon "
                   "signed-rank test, adjusted over the metrics, says p < 0.05. All metrics: paired/compare.md.\n",
                   summary_table(paired)]
    report += ["\n## Runs\n", "| run | status | training wall time (this stage) | incl. Seg stage | inference s/stack |",
               "|---|---|---|---|---|"]
    for j in jobs:
        own, s1 = times[j.name]
        total = own + s1 if own is not None and s1 is not None else own
        report.append(f"| {j.name} | {j.status}{(': ' + j.error) if j.error else ''} | {_minutes(own)} | "
                      f"{_minutes(total) if s1 is not None else ''} | {_num(speed.get(j.name), 2)} |")
    text = "\n".join(report) + "\n"
    write_text(out / "report.md", text)
    return text


def _timings_csv(jobs: list[Job], times: dict, speed: dict) -> str:
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["run", "model", "status", "train_seconds", "seg_stage_train_seconds", "inference_seconds_per_stack", "error"])
    for j in jobs:
        own, s1 = times[j.name]
        w.writerow([j.name, j.model, j.status, _num(own), _num(s1), _num(speed.get(j.name), 3), j.error])
    return buf.getvalue()
