"""One scheduler for training runs: jobs start when the job they depend on (a Ref stage on its
Seg stage) has finished, at most ``parallel`` at a time, none after the deadline; a failed job
is recorded and the others go on; a job whose run folder is already complete is kept.

Two runners start a job: :class:`InProcess` calls :func:`cmrseg.training.trainer.train` (one
job at a time), :class:`Subprocess` starts ``python -m cmrseg.pipelines.train_worker`` with the
job's config saved as YAML (several jobs sharing a large GPU). The scheduler's rules do not
depend on the runner.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from cmrseg.models.registry import seg_stage_name
from cmrseg.training.config import TrainConfig, load_config
from cmrseg.training.run_folder import is_complete_run
from cmrseg.training.trainer import train


@dataclass
class Job:
    name: str  # run name (model name, or model@variant)
    model: str
    run_dir: Path
    after: str | None = None  # the job that must finish first
    overrides: list[str] = field(default_factory=list)  # config overrides of this job
    status: str = "pending"  # pending | running | done | failed | skipped
    seconds: float = 0.0
    error: str = ""


def plan(models: list[str], runs: Path, variants: dict[str, tuple[str, list[str]]] | None = None) -> list[Job]:
    """Jobs for ``models`` (and ``variants``: run name -> (model, overrides)), Seg stages
    shared: ``seg_as+ref_as_mt`` reuses the ``seg_as`` run."""
    jobs: dict[str, Job] = {}

    def add(name: str, model: str, overrides: list[str] | None = None):
        if name in jobs:
            return
        s1 = seg_stage_name(model)
        if s1 is not None:
            add(s1, s1)
        jobs[name] = Job(name, model, runs / name.replace("@", "_"), after=s1, overrides=list(overrides or []))
        if s1 is not None:
            jobs[name].overrides.append(f"seg_stage_run={runs / s1}")

    for m in sorted(models, key=_priority):
        add(m, m)
    for name, (model, overrides) in (variants or {}).items():
        add(name, model, overrides)
    return list(jobs.values())


def _priority(model: str) -> int:
    """Start order when runs share a device: the proposed model's chain and Table 1 first."""
    order = ["seg_as+ref_as_mt", "seg_ss", "det_seg", "seg_as_mt", "seg_as+ref_as", "seg_ss+ref_ss_mt", "seg_ss+ref_ss"]
    return order.index(model) if model in order else len(order)


class Handle(Protocol):
    def poll(self) -> str | None:
        """None while the job runs; then "" if it succeeded, else why it failed."""


class Runner(Protocol):
    def start(self, job: Job, cfg: TrainConfig) -> Handle: ...


class _Finished:
    def __init__(self, error: str):
        self.error = error

    def poll(self) -> str:
        return self.error


class InProcess:
    """Train in this process; ``start`` returns when the job has ended."""

    def __init__(self, data: Path):
        self.data = data

    def start(self, job: Job, cfg: TrainConfig) -> Handle:
        try:
            train(cfg, self.data, job.run_dir)
            return _Finished("")
        except Exception as exc:  # isolate failures: the other models still train
            return _Finished(f"{type(exc).__name__}: {exc}")


class Subprocess:
    """One worker process per job, its output in ``log_dir/<job>.log``."""

    def __init__(self, data: Path, log_dir: Path):
        self.data = data
        self.log_dir = log_dir
        log_dir.mkdir(parents=True, exist_ok=True)

    def start(self, job: Job, cfg: TrainConfig) -> Handle:
        stem = self.log_dir / job.name.replace("@", "_")
        cfg.progress = False
        cfg.save(stem.with_suffix(".yaml"))
        log = stem.with_suffix(".log")
        fh = open(log, "w")
        cmd = [sys.executable, "-m", "cmrseg.pipelines.train_worker", str(stem.with_suffix(".yaml")), str(self.data),
               str(job.run_dir)]
        return _Process(subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, env=os.environ.copy()), fh, log)


class _Process:
    def __init__(self, proc: subprocess.Popen, fh, log: Path):
        self.proc, self.fh, self.log = proc, fh, log

    def poll(self) -> str | None:
        rc = self.proc.poll()
        if rc is None:
            return None
        self.fh.close()
        return "" if rc == 0 else f"exit code {rc} (see {self.log})"


def run_jobs(jobs: list[Job], runner: Runner, protocol: str, overrides: list[str], parallel: int = 1,
             deadline_s: float | None = None, poll_s: float = 1.0) -> None:
    """Run ``jobs`` in order, honouring dependencies, ``parallel`` and the deadline."""
    start = time.perf_counter()
    by_name = {j.name: j for j in jobs}
    for job in jobs:  # finished earlier (a rerun of the same folder): keep, do not retrain
        if is_complete_run(job.run_dir):
            job.status = "done"
    running: dict[str, tuple[Handle, float]] = {}
    while True:
        for name, (handle, t0) in list(running.items()):
            if (error := handle.poll()) is not None:
                job = by_name[name]
                job.seconds, job.error = time.perf_counter() - t0, error
                job.status = "failed" if error else "done"
                print(f"[reproduce] {name}: {job.status} after {job.seconds:.0f} s", flush=True)
                del running[name]
        for job in (j for j in jobs if j.status == "pending"):
            dep = by_name.get(job.after) if job.after else None
            if dep is not None and dep.status in ("failed", "skipped"):
                job.status, job.error = "skipped", f"needs {dep.name} ({dep.status})"
            elif deadline_s is not None and time.perf_counter() - start > deadline_s:
                job.status, job.error = "skipped", "deadline passed"
            elif (dep is None or dep.status == "done") and len(running) < parallel:
                print(f"[reproduce] training {job.name}", flush=True)
                job.status = "running"
                t0 = time.perf_counter()  # before the start: an in-process runner trains inside it
                running[job.name] = (_start(runner, job, protocol, overrides), t0)
        if not running and all(j.status != "pending" for j in jobs):
            return
        if running and all(h.poll() is None for h, _ in running.values()):
            time.sleep(poll_s)


def job_config(job: Job, protocol: str, overrides: list[str]) -> TrainConfig:
    """The config ``job`` trains with: the protocol, its model, the common and its own overrides."""
    return load_config(protocol=protocol, model=job.model, overrides=overrides + job.overrides)


def _start(runner: Runner, job: Job, protocol: str, overrides: list[str]) -> Handle:
    try:
        cfg = job_config(job, protocol, overrides)
    except Exception as exc:  # a bad override fails this job, not the schedule
        return _Finished(f"{type(exc).__name__}: {exc}")
    return runner.start(job, cfg)
