"""``cmrseg reproduce``: train and evaluate the paper's Table 1 models (and, with
``ablations``, every Table 2 row) with one protocol, then write the tables in the paper's
layout, a Fig. 4-style figure and the wall time of every run.

Jobs run in-process one after another (``jobs=1``) or as parallel ``cmrseg train``
subprocesses sharing the device (``jobs>1``, useful on a large GPU where one small model
does not fill it). A Ref-stage job starts when its Seg-stage job has finished; a failed job
is reported and the others go on. Evaluation is on the validation volumes in their own
geometry, with the protocol (``shared/docs/PROTOCOL.md``).
"""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from cmrseg.atomic import write_json, write_text
from cmrseg.evaluation.evaluate import (EvalCase, clinical_table, evaluate_cases, markdown_table,
                                        topology_table)
from cmrseg.evaluation.levels import LEVELS, slice_levels
from cmrseg.models.registry import stage1_name

TABLE1 = ["seg_ss", "seg_as", "det_seg", "seg_as+ref_as_mt"]
TABLE2 = ["seg_ss", "seg_ss+ref_ss", "seg_ss+ref_ss_mt", "seg_as", "seg_as_mt", "seg_as+ref_as", "seg_as+ref_as_mt"]
REF_INPUT_ABLATION = "seg_as+ref_as_mt@final"

LABELS_T1 = {"seg_ss": "SS SK-UNet", "seg_as": "AS After-UNet", "det_seg": "Two-stage: Det + Seg",
             "seg_as+ref_as_mt": "Proposed"}
LABELS_T2 = {"seg_ss": "Seg (SS)", "seg_ss+ref_ss": "Seg (SS) + Ref (SS w/o MT)",
             "seg_ss+ref_ss_mt": "Seg (SS) + Ref (SS w/ MT)", "seg_as": "Seg (AS)", "seg_as_mt": "Seg (AS + MT)",
             "seg_as+ref_as": "Seg (AS) + Ref (AS w/o MT)", "seg_as+ref_as_mt": "Seg (AS) + Ref (AS w/ MT)",
             REF_INPUT_ABLATION: "Seg (AS) + Ref (AS w/ MT), Ref trained on final Seg outputs only"}


@dataclass
class Job:
    name: str  # run name (model name, or model@variant)
    model: str
    run_dir: Path
    after: str | None = None
    overrides: list[str] = field(default_factory=list)
    status: str = "pending"
    seconds: float = 0.0
    error: str = ""


def plan(models: list[str], runs: Path, ref_input_ablation: bool = False) -> list[Job]:
    """Jobs for ``models``, Seg stages shared: ``seg_as+ref_as_mt`` reuses the ``seg_as`` run."""
    jobs: dict[str, Job] = {}

    def add(name: str, model: str, overrides: list[str] | None = None):
        if name in jobs:
            return
        s1 = stage1_name(model)
        if s1 is not None:
            add(s1, s1)
        jobs[name] = Job(name, model, runs / name.replace("@", "_"), after=s1, overrides=list(overrides or []))
        if s1 is not None:
            jobs[name].overrides.append(f"stage1_run={runs / s1}")

    for m in sorted(models, key=_priority):
        add(m, m)
    if ref_input_ablation:
        add(REF_INPUT_ABLATION, "seg_as+ref_as_mt", ["ref_inputs=final"])
    return list(jobs.values())


def _priority(model: str) -> int:
    """Start order when runs share a device: the proposed model's chain and Table 1 first."""
    order = ["seg_as+ref_as_mt", "seg_ss", "det_seg", "seg_as_mt", "seg_as+ref_as", "seg_ss+ref_ss_mt", "seg_ss+ref_ss"]
    return order.index(model) if model in order else len(order)


def _train_args(job: Job, data: Path, protocol: str, overrides: list[str]) -> list[str]:
    args = ["train", "--model", job.model, "--protocol", protocol, "--data", str(data), "--out", str(job.run_dir)]
    for o in overrides + job.overrides:
        args += ["--set", o]
    return args


def run_jobs(jobs: list[Job], data: Path, protocol: str, overrides: list[str], parallel: int = 1,
             deadline_s: float | None = None, log_dir: Path | None = None) -> None:
    """Run ``jobs`` honouring dependencies; ``parallel`` subprocesses at a time (1 = in-process)."""
    from cmrseg.training.trainer import is_complete_run

    start = time.perf_counter()
    by_name = {j.name: j for j in jobs}
    for job in jobs:  # finished earlier (a rerun of the same folder): keep, do not retrain
        if is_complete_run(job.run_dir):
            job.status = "done"
    if parallel <= 1:
        from cmrseg.training.config import load_config
        from cmrseg.training.trainer import train

        for job in jobs:
            if job.status == "done":
                continue
            dep = by_name.get(job.after) if job.after else None
            if dep is not None and dep.status != "done":
                job.status, job.error = "skipped", f"needs {dep.name} ({dep.status})"
                continue
            if deadline_s is not None and time.perf_counter() - start > deadline_s:
                job.status, job.error = "skipped", "deadline passed"
                continue
            t0 = time.perf_counter()
            print(f"[reproduce] training {job.name}", flush=True)
            try:
                train(load_config(protocol=protocol, model=job.model, overrides=overrides + job.overrides),
                      data, job.run_dir)
                job.status, job.error = "done", ""
            except Exception as exc:  # isolate failures: the other models still train
                job.status, job.error = "failed", f"{type(exc).__name__}: {exc}"
            job.seconds = time.perf_counter() - t0
        return
    running: dict[str, tuple[subprocess.Popen, float, object]] = {}
    log_dir = log_dir or Path(".")
    log_dir.mkdir(parents=True, exist_ok=True)
    while True:
        for name, (proc, t0, fh) in list(running.items()):
            rc = proc.poll()
            if rc is None:
                continue
            fh.close()
            job = by_name[name]
            job.seconds = time.perf_counter() - t0
            job.status = "done" if rc == 0 else "failed"
            job.error = "" if rc == 0 else f"exit code {rc} (see {log_dir / (name.replace('@', '_') + '.log')})"
            print(f"[reproduce] {name}: {job.status} after {job.seconds:.0f} s", flush=True)
            del running[name]
        for job in jobs:
            if job.status != "pending":
                continue
            dep = by_name.get(job.after) if job.after else None
            if dep is not None and dep.status in ("failed", "skipped"):
                job.status, job.error = "skipped", f"needs {dep.name} ({dep.status})"
                continue
            if deadline_s is not None and time.perf_counter() - start > deadline_s:
                job.status, job.error = "skipped", "deadline passed"
                continue
            if (dep is None or dep.status == "done") and len(running) < parallel:
                fh = open(log_dir / (job.name.replace("@", "_") + ".log"), "w")
                cmd = [sys.executable, "-m", "cmrseg"] + _train_args(job, data, protocol, overrides + ["progress=false"])
                print(f"[reproduce] starting {job.name}", flush=True)
                running[job.name] = (subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, env=os.environ.copy()),
                                     time.perf_counter(), fh)
                job.status = "running"
        if not running and all(j.status != "pending" for j in jobs):
            return
        time.sleep(1.0)


def evaluate_runs(jobs: list[Job], val_volumes, device: str = "auto", progress: bool = True):
    """Predict every validation volume with every finished run; returns
    ({run name: summary}, {run name: [masks]}, {run name: inference seconds per stack})."""
    from tqdm.auto import tqdm

    from cmrseg.inference import Predictor

    summaries, masks, speed = {}, {}, {}
    for job in jobs:
        if job.status != "done":
            continue
        predictor = Predictor.from_path(job.run_dir, device=device)
        preds, secs = [], []
        for vol in tqdm(val_volumes, desc=f"predict {job.name}", disable=not progress, leave=False):
            p = predictor.predict_volume(vol)
            preds.append(p.mask)
            secs.append(p.seconds)
        cases = [EvalCase(v.name, m, v.label, v.geometry.spacing, v.meta) for v, m in zip(val_volumes, preds)]
        _, summaries[job.name] = evaluate_cases(cases)
        masks[job.name] = preds
        speed[job.name] = float(np.mean(secs))
    return summaries, masks, speed


def pick_examples(val_volumes, masks: dict[str, list[np.ndarray]], n_base: int = 2, n_apex: int = 1) -> list[dict]:
    """Fig. 4 rows: the basal and apical slices where the models disagree most (largest
    spread of the slice's mean Dice across models), one slice per volume."""
    from cmrseg.evaluation.metrics import dice_per_class

    cands = {"base": [], "apex": []}
    for i, vol in enumerate(val_volumes):
        levels = slice_levels(vol.label)
        for s, lv in enumerate(levels):
            if lv not in cands or not vol.label[s].any():
                continue
            scores = [np.nanmean(np.nan_to_num(dice_per_class(m[i][s], vol.label[s]), nan=1.0)) for m in masks.values()]
            cands[lv].append((float(np.ptp(scores)) if len(scores) > 1 else 0.0, i, s))
    rows = []
    for lv, n in (("base", n_base), ("apex", n_apex)):
        used = set()
        for spread, i, s in sorted(cands[lv], reverse=True):
            if i in used or len(used) >= n:
                continue
            used.add(i)
            vol = val_volumes[i]
            rows.append({"image": vol.image[s], "masks": {k: v[i][s] for k, v in masks.items()},
                         "label": f"{lv}: {vol.name} slice {s}", "gt": vol.label[s]})
    return rows


def _table_csv(rows: list[tuple[str, dict]]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["model", "level", "RV", "MYO", "LV", "avg"])
    for name, s in rows:
        for lv in (*LEVELS, "volume"):
            r = s["levels"][lv]
            w.writerow([name, lv] + [f"{r[c]:.4f}" for c in ("RV", "MYO", "LV", "avg")])
    return buf.getvalue()


def run_times(run_dir: Path) -> tuple[float | None, float | None]:
    """(training seconds of this run's own stage, of its reused Seg stage) from model.json."""
    try:
        meta = json.loads((run_dir / "model.json").read_text())
    except (OSError, ValueError):
        return None, None
    return meta.get("train_seconds"), meta.get("stage1_train_seconds")


def _num(v, digits: int = 1) -> str:
    return "" if v is None or not np.isfinite(v) else f"{v:.{digits}f}"


def _minutes(v) -> str:
    return "" if v is None else f"{v / 60:.1f} min"


def write_tables(out: Path, jobs: list[Job], summaries: dict, speed: dict, protocol: str, device: str) -> str:
    """Write table1/table2 (md + csv), timings.csv and report.md; returns the report text."""
    order = TABLE1 + [m for m in TABLE2 + [REF_INPUT_ABLATION] if m not in TABLE1]
    done = sorted((j.name for j in jobs if j.name in summaries), key=lambda m: order.index(m) if m in order else len(order))
    t1 = [(LABELS_T1[m], summaries[m]) for m in TABLE1 if m in summaries]
    t2 = [(LABELS_T2[m], summaries[m]) for m in TABLE2 + [REF_INPUT_ABLATION] if m in summaries]
    write_text(out / "table1.md", markdown_table(t1))
    write_text(out / "table1.csv", _table_csv(t1))
    has_t2 = any(m in summaries for m in TABLE2 if m not in TABLE1)
    if has_t2:
        write_text(out / "table2.md", markdown_table(t2))
        write_text(out / "table2.csv", _table_csv(t2))
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["run", "model", "status", "train_seconds", "stage1_train_seconds", "inference_seconds_per_stack", "error"])
    times = {j.name: run_times(j.run_dir) for j in jobs}
    for j in jobs:
        own, s1 = times[j.name]
        w.writerow([j.name, j.model, j.status, _num(own), _num(s1), _num(speed.get(j.name), 3), j.error])
    write_text(out / "timings.csv", buf.getvalue())
    named = [(LABELS_T1.get(m) or LABELS_T2.get(m, m), summaries[m]) for m in done]
    report = [f"# Reproduction ({protocol} protocol, device {device})\n",
              "## Table 1: Dice by slice level (validation split)\n", markdown_table(t1)]
    if has_t2:
        report += ["\n## Table 2: ablations\n", markdown_table(t2)]
    report += ["\n## Topology and surface distance\n", topology_table(named)]
    clin = clinical_table(named)
    if clin:
        report += ["\n## Clinical measures (mean absolute error per patient)\n", clin]
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


def reproduce(data: str | Path, protocol: str, out: str | Path, ablations: bool = False, ref_input_ablation: bool = False,
              jobs: int = 1, device: str = "auto", overrides: list[str] | None = None,
              deadline_min: float | None = None, models: list[str] | None = None) -> dict:
    """Train, evaluate and report. Returns ``{run name: summary}``."""
    from cmrseg.data.io import load_labelled_dataset
    from cmrseg.device import resolve_device
    from cmrseg.training.trainer import resolve_splits
    from cmrseg.visualization import comparison_grid

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    data = Path(data)
    _, val_src = resolve_splits(data)
    if val_src.suffix == ".npz":
        from cmrseg.errors import InputError

        raise InputError(val_src, "reproduce evaluates on the original validation files; give a folder, not a cache")
    overrides = list(overrides or [])
    if device != "auto":
        overrides.append(f"device={device}")
    wanted = models or (TABLE2 + ["det_seg"] if ablations else TABLE1)
    job_list = plan(wanted, out / "runs", ref_input_ablation)
    t0 = time.perf_counter()
    run_jobs(job_list, data, protocol, overrides, parallel=jobs,
             deadline_s=None if deadline_min is None else deadline_min * 60, log_dir=out / "logs")
    train_wall = time.perf_counter() - t0
    val_volumes = load_labelled_dataset(val_src)
    dev_name = resolve_device(device).type
    summaries, masks, speed = evaluate_runs(job_list, val_volumes, device=dev_name)
    text = write_tables(out, job_list, summaries, speed, protocol, dev_name)
    if masks:
        order = [m for m in TABLE1 + TABLE2 + [REF_INPUT_ABLATION] if m in masks]
        fig_masks = {m: masks[m] for m in order if m in TABLE1} or masks
        rows = pick_examples(val_volumes, fig_masks)
        cols = [LABELS_T1.get(m, m) for m in fig_masks] + ["Ground truth"]
        for r in rows:
            r["masks"] = {LABELS_T1.get(k, k): v for k, v in r["masks"].items()}
            r["masks"]["Ground truth"] = r.pop("gt")
        if rows:
            comparison_grid(rows, cols, out / "fig4.png", title=f"Basal and apical validation slices ({protocol} protocol)")
    info = {"protocol": protocol, "device": dev_name, "train_wall_seconds": train_wall,
            "runs": {j.name: {"model": j.model, "status": j.status, "seconds": j.seconds, "error": j.error,
                              "inference_seconds_per_stack": speed.get(j.name)} for j in job_list},
            "summaries": summaries}
    write_json(out / "summary.json", info)
    print(text)
    failed = [j for j in job_list if j.status != "done"]
    if failed:
        print("runs that did not finish: " + ", ".join(f"{j.name} ({j.status}: {j.error})" for j in failed))
    return summaries
