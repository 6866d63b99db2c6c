"""The GPU job: turn one device call into the best models it can ship.

    python experiments/gpu_job.py --data .gpu/acdc --out $OUT [--seconds 540] [--protocol paper] [--plan continue]
    python experiments/gpu_job.py --data .gpu/acdc --out $OUT --plan folds --splits .gpu/splits.json [--fold-epochs 120]

In this order, inside ``--seconds`` of wall time:

1. a throughput check (``benchmarks/bench_training.py --settings --profile``, at most
   ``--bench-seconds``): channels_last and cuDNN autotuning on or off, fixed-shape batches
   (packed stacks, masked padding) and, with ``--compile MODE``, ``torch.compile`` on them
   (``reduce-overhead``: CUDA graphs; give the check time for the compile, e.g.
   ``--bench-seconds 150``), and twice the batch (learning rate x sqrt 2) when that trains
   1.8x faster per slice, so at about the same optimiser steps per second; the setting that
   trains the most slices in a stage of the proposed model's budget (compile time paid out of
   it) is kept for every run below; then a profile of a few ``seg_as`` steps
   (``throughput.profile.txt``). A run that fails with a compiled setting is run again (it
   resumes) without the compile;
2. the proposed model (``seg_as`` Seg stage, then its Ref stage ``seg_as+ref_as_mt``);
3. ``seg_ss``;
4. ``--seeds`` further seeds of the proposed model (``seg_as@seed1``, ``seg_as+ref_as_mt@seed1``,
   ...), each stage with the time budget the proposed model's stages had: ensemble members;
5. further Table 1 and Table 2 runs while time is left (``EXTRA_RUNS``).

``--plan continue`` replaces 2-5: after the throughput check, each member of the shipped default
(or each model of ``--continue-from``) is trained further in its own protocol (``fast``), its Seg
stage from the model's Seg weights, then its Ref stage from the model on that run (as
``experiments/train_cpu_2h.sh`` continued them on a CPU, with shrinking gains: rules 5, 9 and 11
in docs/RESULTS.md), the call's time shared evenly by the stages; the continued models come back
as ``models/seg_as-ref_as_mt_cont<k>/`` and are scored on the CPU machine as an ensemble, as
the seeds are. Time left once they reached their epoch cap (a fast GPU) goes to further
continuations of the members, each with its own seed (``_cont3``, ``_cont4``, up to
``--max-members``): members trained apart, for the ensemble (docs/decisions.md, rule 15). The
data bundle is made for the paper protocol; a ``fast`` run takes its canvases resampled to its
coarser pixels (``StackDataset.on_canvas``), once per call for all runs (:func:`stage_data`).

``--plan folds`` replaces 2-5 too: the models of ``experiments/cross_validate.py``'s folds
(``--splits``: its ``splits.json``, carried in ``.gpu/``), each fold's proposed model trained
from scratch on its training patients by the ``fast`` protocol, both stages, at most
``--fold-epochs`` epochs each (:func:`folds_plan`), fold after fold, so a call cut short still
brings back whole folds and a second call goes on where it stopped. Back on the CPU machine,
``cross_validate.py ... --models-from OUT/models`` reads them out of fold as it reads the folds it
trains itself: the hours the five folds take on a 2-core CPU fit one call.

``--plan student`` trains the distilled student of issue 35 instead (:func:`student_plan`), for
the whole call, at most ``--student-epochs`` epochs.

Each stage gets a time budget (``time_budget_s``): it trains the protocol's epochs when they
fit, fewer otherwise, with the learning-rate schedule fitted to them (``model.json`` records
``trained_epochs`` and ``planned_epochs``). Runs live in ``WORK/runs/<run>`` (the layout of
``cmrseg reproduce``), so a second call on a still-warm machine skips finished runs. At the end
``cmrseg reproduce --deadline-min 0`` evaluates every finished run but the seeds on the
validation volumes (Tables 1 and 2, clinical errors, fig4.png, summary.json) and ``$OUT``
receives, per finished run, a model folder ``models/<run>/`` (float16 ``weights.safetensors`` and
``model.json``; ``+`` and ``@`` in run names become ``-`` and ``_``) and one ``results.tar.gz``
with every run's ``log.csv``, ``model.json``, ``config.yaml`` and the evaluation. Everything is
written to ``$OUT`` as soon as it exists, so a call cut short still brings back what finished.
The seeds are scored back on the CPU machine as an ensemble, as a user runs it:
``cmrseg segment --model OUT/models/seg_as-ref_as_mt OUT/models/seg_as-ref_as_mt_seed1 ... -i VAL -o P``
then ``cmrseg evaluate --pred P --gt VAL -o R`` (docs/decisions.md, rule 6).

Run on the device machine from the repository root with ``PYTHONPATH=src`` (no install
needed); the test suite runs it on CPU with the ``smoke`` protocol.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tarfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from cmrseg.checkpoint import half_precision, read_tensors, save_weights, stage_tensors  # noqa: E402 (after the path)
from cmrseg.training.config import load_config  # noqa: E402
from cmrseg.training.run_folder import is_complete_run, split_caches  # noqa: E402

PROPOSED = [("seg_as", []), ("seg_as+ref_as_mt", ["seg_stage_run={runs}/seg_as"])]
BASELINE = [("seg_ss", [])]
EXTRA_RUNS = [("seg_as_mt", []), ("det_seg", []), ("seg_ss+ref_ss_mt", ["seg_stage_run={runs}/seg_ss"]),
              ("seg_as+ref_as", ["seg_stage_run={runs}/seg_as"]), ("seg_ss+ref_ss", ["seg_stage_run={runs}/seg_ss"])]
SMALL_FILES = {".md", ".csv", ".json", ".yaml", ".png", ".log"}


def seed_runs(seeds: int) -> list[tuple[str, list[str]]]:
    """The proposed model's two stages again with seeds 1..``seeds`` (``<model>@seed<k>``)."""
    runs = []
    for k in range(1, seeds + 1):
        runs += [(f"seg_as@seed{k}", [f"seed={k}"]),
                 (f"seg_as+ref_as_mt@seed{k}", [f"seed={k}", f"seg_stage_run={{runs}}/seg_as@seed{k}"])]
    return runs


#: how a shipped model is continued: the settings of the last two CPU continuations (docs/RESULTS.md,
#: rules 9 and 11: lr 3e-4, one warm-up epoch), at most the paper's 200 epochs
CONTINUE_SETS = ["warmup_epochs=1", "epochs=200"]
CONTINUE_LR = 3e-4
SHIPPED = REPO / "src" / "cmrseg" / "weights"


def shipped_members() -> list[Path]:
    """The model folders of the shipped default (``proposed_ensemble/ensemble.json``)."""
    folder = SHIPPED / "proposed_ensemble"
    return [(folder / m).resolve() for m in json.loads((folder / "ensemble.json").read_text())["members"]]


def members_that_fit(members: list[Path], rate: float | None, window: float, overhead: float, slices: int | None,
                     min_epochs: int) -> list[Path]:
    """Which of ``members`` to continue in ``window`` seconds: as many as give every stage (two
    per member, ``overhead`` seconds each outside training) ``min_epochs`` epochs of ``slices``
    training slices at ``rate`` slices/s (the throughput check's), the ones with the higher
    ``val_score`` (their training's own selection score) first; at least one; all of them
    when the rate or the split's size is not known. The order of ``members`` is kept."""
    if not rate or not slices:
        return list(members)
    ranked = by_score(members)
    n = len(ranked)
    while n > 1 and rate * (window / (2 * n) - overhead) / slices < min_epochs:
        n -= 1
    return [m for m in members if m in ranked[:n]]


def continue_runs(members: list[Path], work: Path, batch_factor: int = 1,
                  keep: list[Path] | None = None) -> list[tuple[str, list[str], str]]:
    """``(run, overrides, protocol)`` continuing each two-stage model folder of ``members`` (of
    ``keep`` among them, in its order, when given) in its own protocol (:func:`member_runs`, k
    its place in ``members``)."""
    return [run for member in (members if keep is None else keep)
            for run in member_runs(member, members.index(member) + 1, work, batch_factor)]


def started_first(members: list[Path], keep: list[Path], runs: Path) -> list[Path]:
    """``keep`` with the members a previous call of the job began (its Seg-stage run folder
    ``seg_as@cont<k>`` is under ``runs``) put first, kept even when the throughput check would
    leave them out: a second call finishes the work the first left before it starts more."""
    started = [m for k, m in enumerate(members, 1) if (runs / f"seg_as@cont{k}").is_dir()]
    return started + [m for m in keep if m not in started]


def member_runs(member: Path, k: int, work: Path, batch_factor: int = 1,
                seed: int | None = None) -> list[tuple[str, list[str], str]]:
    """The two runs continuing the two-stage model folder ``member`` as the k-th continued
    member: its Seg stage from the model's Seg weights (``seg_as@cont<k>``; snapshots for the
    Ref inputs early, as ``experiments/train_cpu_2h.sh`` does), then its Ref stage from the whole
    model on that run (``<model>@cont<k>``); Adam's learning rate grows with the square root of
    the batch factor, as :func:`batch_overrides` scales it; ``seed``: the runs' seed (data order,
    augmentation), else the protocol's."""
    lr = f"lr={CONTINUE_LR * math.sqrt(batch_factor):.6g}"
    sets = [lr, *CONTINUE_SETS, *([f"seed={seed}"] if seed is not None else [])]
    meta = json.loads((member / "model.json").read_text())
    init_seg = work / "init" / f"{member.name}.seg.safetensors"
    if not init_seg.is_file():
        init_seg.parent.mkdir(parents=True, exist_ok=True)
        save_weights(stage_tensors(read_tensors(member / "weights.safetensors"), "seg"), init_seg)
    seg, ref = f"seg_as@cont{k}", f"{meta['model']}@cont{k}"
    return [(seg, [f"init_weights={init_seg}", "snapshot_fractions=[0.1, 0.3]", *sets], meta["protocol"]),
            (ref, [f"init_weights={member}", f"seg_stage_run={{runs}}/{seg}", *sets], meta["protocol"])]


def by_score(members: list[Path]) -> list[Path]:
    """``members``, the higher ``val_score`` (their training's own selection score) first."""
    return sorted(members, key=lambda m: -json.loads((m / "model.json").read_text()).get("val_score", 0.0))


class Clock:
    def __init__(self, seconds: float):
        self.t0 = time.perf_counter()
        self.seconds = seconds

    def elapsed(self) -> float:
        return time.perf_counter() - self.t0

    def left(self) -> float:
        return self.seconds - self.elapsed()


def log(msg: str) -> None:
    print(f"[gpu_job {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def env() -> dict:
    e = dict(os.environ, PYTHONUNBUFFERED="1")
    e["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO / "src"), e.get("PYTHONPATH", "")) if p)
    return e


def throughput_check(out: Path, protocol: str, device: str, seconds: float, steps: int = 8,
                     profile_steps: int = 5, compile_mode: str | None = None,
                     stage_seconds: float | None = None) -> dict:
    """Run the settings benchmark; the best setting for seg_as (the most
    slices in a stage of ``stage_seconds``). A benchmark that overruns ``seconds`` is stopped
    and the settings it measured so far still count. Then ``profile_steps`` steps of seg_as
    under ``torch.profiler`` (``throughput.profile.txt``: where the step's time goes, for the
    next speed-up)."""
    json_path = out / "throughput.json"
    cmd = [sys.executable, str(REPO / "benchmarks" / "bench_training.py"), "--device", device, "--protocol", protocol,
           "--settings", "--steps", str(steps), "--seconds", str(seconds * 0.6), "--profile", str(profile_steps),
           "--out", str(json_path)]
    if compile_mode:
        cmd += ["--compile", compile_mode]
    if stage_seconds:
        cmd += ["--stage-seconds", f"{stage_seconds:.0f}"]
    try:
        res = subprocess.run(cmd, env=env(), capture_output=True, text=True, timeout=seconds)
        (out / "throughput.log").write_text(res.stdout + res.stderr)
        if res.returncode != 0 or not json_path.is_file():
            log(f"throughput check failed (exit {res.returncode}); default settings: {res.stderr.strip()[-300:]}")
            return {}
    except subprocess.TimeoutExpired:  # the benchmark rewrites its JSON after every setting it measures
        if not json_path.is_file():
            log(f"throughput check passed {seconds:.0f} s before a setting finished; default settings")
            return {}
        log(f"throughput check passed {seconds:.0f} s; the best setting measured by then")
    report = json.loads(json_path.read_text())
    best = (report.get("best") or {}).get("seg_as")
    if not best:
        return {}
    log(f"best setting for seg_as: {json.dumps(best)}")
    if report.get("profile"):
        log(f"profile of seg_as: {json.dumps(report['profile'])}")
    return best


def setting_overrides(best: dict, protocol: str) -> list[str]:
    """``cmrseg train --set`` overrides of a benchmark's best setting (``best_settings``)."""
    def yaml_value(v) -> str:
        return str(v).lower() if isinstance(v, bool) else str(v)

    sets = [f"{k}={yaml_value(best.get(k, False))}" for k in ("channels_last", "cudnn_benchmark", "fixed_shape",
                                                               "compile")]
    return sets + batch_overrides(protocol, int(best.get("batch_factor", 1)))


def batch_overrides(protocol: str, factor: int) -> list[str]:
    """Config overrides for ``factor`` times the protocol's batch. Adam's learning rate grows
    with the square root of the batch (the square-root scaling rule for adaptive optimisers,
    Malladi et al., NeurIPS 2022), not linearly as SGD's would."""
    if factor == 1:
        return []
    cfg = load_config(protocol=protocol)
    return [f"batch_stacks={cfg.batch_stacks * factor}", f"batch_slices={cfg.batch_slices * factor}",
            f"lr={cfg.lr * math.sqrt(factor):.6g}"]


def train(name: str, extra: list[str], args, runs: Path, budget: float, timeout: float, settings: list[str],
          protocol: str | None = None, data: Path | None = None) -> bool:
    """One ``cmrseg train`` process with a per-stage time budget (``protocol``: ``args.protocol``
    unless given; ``data``: the call's data unless given); True if the run finished."""
    run = runs / name
    if is_complete_run(run):
        log(f"{name}: finished earlier, kept")
        return True
    model = name.split("@")[0]
    sets = ["progress=false", f"device={args.device}", f"time_budget_s={budget:.0f}", "checkpoint_every=10",
            *settings, *(e.format(runs=runs) for e in extra), *args.set]
    protocol = protocol or args.protocol
    data = data or getattr(args, "stage_data", {}).get(protocol, args.data)
    cmd = [sys.executable, "-m", "cmrseg", "train", "--model", model, "--protocol", protocol,
           "--data", str(data), "--out", str(run)]
    for s in sets:
        cmd += ["--set", s]
    log(f"{name}: training, {budget:.0f} s per stage, stopped after {timeout:.0f} s")
    (args.work / "logs").mkdir(parents=True, exist_ok=True)
    with open(args.work / "logs" / f"{name}.log", "a") as fh:  # a retry without compile keeps the failure
        t0 = time.perf_counter()
        try:
            rc = subprocess.run(cmd, env=env(), stdout=fh, stderr=subprocess.STDOUT, timeout=timeout).returncode
        except subprocess.TimeoutExpired:
            rc = "timeout"
    ok = rc == 0 and is_complete_run(run)
    compiled = [s for s in settings if s.startswith("compile=") and s != "compile=false"]
    if not ok and rc != "timeout" and compiled:  # compiling failed (torch, driver): the run resumes eager
        spent = time.perf_counter() - t0
        log(f"{name}: failed ({rc}) with {compiled[0]} after {spent:.0f} s; again without it")
        return train(name, extra, args, runs, max(10.0, budget - spent), timeout - spent,
                     [s for s in settings if not s.startswith("compile=")], protocol, data)
    meta = json.loads((run / "model.json").read_text()) if ok else {}
    log(f"{name}: {'done' if ok else f'failed ({rc})'} after {time.perf_counter() - t0:.0f} s"
        + (f", {meta.get('trained_epochs')} epochs, val score {meta.get('val_score', float('nan')):.4f}" if ok else ""))
    return ok


def stage_data(args) -> dict[str, Path]:
    """``{protocol: data}`` for the runs: the bundle's splits preprocessed once for the call's
    protocol (``WORK/data/<protocol>``, uncompressed: a stage reads them in a fraction of a
    second instead of decompressing the bundle, resampling it to a coarser canvas and
    preprocessing val, 5-7 s per stage on the 2-core CPU); the bundle itself if that fails."""
    t0 = time.perf_counter()
    try:
        preprocess = load_config(protocol=args.protocol, overrides=args.set).preprocess
        data = split_caches(args.data, args.work / "data" / args.protocol, {preprocess}, progress=False)
    except Exception as exc:  # the runs read the bundle themselves, as before
        log(f"splits not preprocessed once ({type(exc).__name__}: {exc}); every run reads {args.data}")
        return {}
    log(f"splits preprocessed for every {args.protocol} run in {time.perf_counter() - t0:.0f} s: {data}")
    return {args.protocol: data}


def model_folder_name(run: str) -> str:
    """``$OUT/models/<this>``: the run's name without the characters the device transfer refuses."""
    return run.replace("+", "-").replace("@", "_")


def pack(work: Path, out: Path, finished: list[str]) -> None:
    """Per finished run a model folder ``$OUT/models/<run>/`` (``weights.safetensors`` in float16,
    normalisation statistics float32, ``model.json`` and ``config.yaml``: ``cmrseg segment
    --model`` takes it as it is, ``experiments/ship_model.py`` ships it) + one tarball of the
    small files (logs, configs, tables)."""
    for name in finished:
        run, dst = work / "runs" / name, out / "models" / model_folder_name(name)
        if (run / "weights.safetensors").is_file() and not (dst / "weights.safetensors").exists():
            dst.mkdir(parents=True, exist_ok=True)
            for side in ("model.json", "config.yaml"):  # config.yaml: experiments/ship_model.py reads it
                (dst / side).write_text((run / side).read_text())
            save_weights(half_precision(read_tensors(run / "weights.safetensors")), dst / "weights.safetensors")
    tmp = out / ".results.tar.gz"
    with tarfile.open(tmp, "w:gz") as tar:
        for p in sorted(work.rglob("*")):
            if p.is_file() and (p.suffix in SMALL_FILES or "tensorboard" in p.parts) and p.stat().st_size < 4 * 2 ** 20:
                tar.add(p, arcname=str(p.relative_to(work)))
    os.replace(tmp, out / "results.tar.gz")


class Runner:
    """Trains runs one after another inside the job's clock, each stage with a time budget; keeps
    the finished ones and brings each back to ``$OUT`` as soon as it exists."""

    def __init__(self, args, clock: Clock, best: dict):
        self.args, self.clock, self.best = args, clock, best
        self.runs = args.work / "runs"
        self.finished: list[str] = []
        self.startup = args.startup  # a training process's seconds outside its stage: the most measured
        self.seg_budget = 0.0  # the proposed Seg stage's budget: an ensemble member's stage gets no more
        self.epoch_seconds: list[float] = []  # training seconds per epoch of each finished stage

    def run(self, name: str, extra: list[str], stages_left: int, until: float, protocol: str | None = None,
            data: Path | None = None) -> bool:
        """Train ``name`` (on ``data``, else the call's) with what is left until ``until`` (job
        seconds) shared by ``stages_left``."""
        args, clock = self.args, self.clock
        timeout = clock.left() - args.eval_reserve
        span = min(until - clock.elapsed(), timeout)
        # 5 % of the span kept back: a Ref stage's first minutes (its inputs from the Seg
        # snapshots) are not in its budget, and a stage past the timeout is lost
        budget = (0.95 * span - self.startup * stages_left) / stages_left
        if name == PROPOSED[0][0]:
            self.seg_budget = budget
        if budget < 10 and not is_complete_run(self.runs / name):
            log(f"{name}: skipped, {span:.0f} s left")
            return False
        t0 = clock.elapsed()
        protocol = protocol or args.protocol
        settings = setting_overrides(self.best, protocol) if self.best else []
        ok = train(name, extra, args, self.runs, budget, timeout, settings, protocol, data)
        if ok:
            self.finished.append(name)
            meta = json.loads((self.runs / name / "model.json").read_text())
            trained = meta.get("train_seconds") or 0.0
            if meta.get("trained_epochs"):
                self.epoch_seconds.append(trained / meta["trained_epochs"])
            # measured: the process's time beyond what its budget governed (start, data, Ref
            # inputs); the largest so far, since a stage lost to the timeout costs more than seconds
            self.startup = max(self.startup, clock.elapsed() - t0 - min(budget, trained))
            pack(args.work, args.out, self.finished)
        return ok

    def stage_seconds(self, epochs: int) -> float | None:
        """What a stage of ``epochs`` epochs costs, from the stages finished so far (the slowest
        epoch and the largest overhead measured); None before any finished."""
        if not self.epoch_seconds:
            return None
        return self.startup + epochs * max(self.epoch_seconds)

    def ready(self, extra: list[str]) -> bool:
        """Whether the Seg-stage run a Ref stage starts from (``seg_stage_run``) finished."""
        needs = [e.split("=", 1)[1].format(runs=self.runs) for e in extra if e.startswith("seg_stage_run")]
        return not needs or is_complete_run(Path(needs[0]))


def paper_plan(runner: Runner) -> set[str]:
    """Items 2-5 of the module docstring; the names of the ensemble members (scored on CPU)."""
    args, clock = runner.args, runner.clock
    window = max(0.0, clock.left() - args.eval_reserve)
    proposed_end = clock.elapsed() + window * args.proposed_share
    # the proposed model: two stages sharing its part of the window
    if runner.run(*PROPOSED[0], stages_left=2, until=proposed_end):
        runner.run(*PROPOSED[1], stages_left=1, until=proposed_end)
    seeds = seed_runs(args.seeds)
    members = {name for name, _ in seeds}
    for name, extra in BASELINE + seeds + (EXTRA_RUNS if args.extra else []):
        if not runner.ready(extra):
            continue
        if clock.left() - args.eval_reserve < 60 and not is_complete_run(runner.runs / name):
            break
        until = clock.seconds - args.eval_reserve
        if name in members:  # an ensemble member: a stage gets what the proposed model's stage got, no more
            until = min(until, clock.elapsed() + runner.seg_budget + runner.startup)
        runner.run(name, extra, stages_left=1, until=until)
    return members


def training_slices(data: Path) -> int | None:
    """The training split's slice count from the bundle's ``train.json`` (make_gpu_bundle.py), if any."""
    side = data / "train.json"
    return int(json.loads(side.read_text())["slices"]) if side.is_file() else None


def continue_plan(runner: Runner) -> set[str]:
    """``--plan continue``: each model of ``--continue-from`` (default: the shipped default's
    members; fewer when the throughput check says they would not get ``--min-epochs`` per stage,
    :func:`members_that_fit`) continued, both stages, in its own protocol, the window shared
    evenly by the stages; all of them are scored on CPU (module docstring), so their names are
    returned."""
    args, best = runner.args, runner.best
    factor = int(best.get("batch_factor", 1)) if best else 1
    window = runner.clock.left() - args.eval_reserve
    keep = members_that_fit(args.continue_from, best.get("slices_per_s"), window, runner.startup,
                            training_slices(args.data), args.min_epochs)
    if len(keep) < len(args.continue_from):
        log(f"continuing {', '.join(m.name for m in keep)} only: at {best['slices_per_s']:.0f} slices/s more members "
            f"would get fewer than {args.min_epochs} epochs per stage")
    resumed = started_first(args.continue_from, keep, runner.runs)
    if resumed != keep:
        log(f"first what an earlier call began: {', '.join(m.name for m in resumed)}")
    todo = continue_runs(args.continue_from, args.work, factor, resumed)
    for i, (name, extra, protocol) in enumerate(todo):
        if runner.ready(extra):
            runner.run(name, extra, stages_left=len(todo) - i, until=runner.clock.seconds - args.eval_reserve,
                       protocol=protocol)
    return {name for name, _, _ in todo} | spare_members(runner, factor)


def spare_members(runner: Runner, factor: int) -> set[str]:
    """Time left once the members reached their epoch cap: the members continued again, each
    further one with its own seed (``seg_as@cont<k>``, k past the members; the better by
    selection score first, then in turn), so they are trained apart for the ensemble, while both
    stages of one more still get ``--min-epochs`` at the rate the finished stages trained, up to
    ``--max-members`` in all. Their run names."""
    args, clock = runner.args, runner.clock
    names: set[str] = set()
    ranked = by_score(args.continue_from)
    for k in range(len(args.continue_from) + 1, args.max_members + 1):
        need = runner.stage_seconds(args.min_epochs)
        if need is None or clock.left() - args.eval_reserve < 2 * need / 0.95:
            break
        member = ranked[(k - len(args.continue_from) - 1) % len(ranked)]
        log(f"{clock.left():.0f} s left, a stage of {args.min_epochs} epochs takes about {need:.0f} s: "
            f"{member.name} continued again with seed {k} (cont{k})")
        runs = member_runs(member, k, args.work, factor, seed=k)
        for i, (name, extra, protocol) in enumerate(runs):
            if runner.ready(extra):
                runner.run(name, extra, stages_left=len(runs) - i, until=clock.seconds - args.eval_reserve,
                           protocol=protocol)
        names |= {name for name, _, _ in runs}
    return names


def fold_runs(k: int, epochs: int) -> list[tuple[str, list[str]]]:
    """Fold ``k``'s proposed model, both stages from scratch, at most ``epochs`` epochs each
    (``seg_as@fold<k>``, then ``seg_as+ref_as_mt@fold<k>`` on it)."""
    cap = [f"epochs={epochs}"]
    return [(f"seg_as@fold{k}", cap), (f"seg_as+ref_as_mt@fold{k}", [*cap, f"seg_stage_run={{runs}}/seg_as@fold{k}"])]


def _patient(record) -> str:
    """A training stack's patient: its ``meta["patient"]``, else its name before the first ``_``."""
    return str(record.meta.get("patient") or record.name.split("_")[0])


def fold_data(args, k: int, patients: list[str]) -> Path:
    """``WORK/data/folds/fold_<k>``: the call's training stacks of ``patients`` (``train.npz``)
    beside its validation split (linked), for fold ``k``'s runs; made once per call and kept
    while the fold's patients are the same."""
    from cmrseg.data.dataset import StackDataset
    from cmrseg.training.run_folder import resolve_splits

    dst = args.work / "data" / "folds" / f"fold_{k}"
    stamp = dst / "patients.json"
    if stamp.is_file() and json.loads(stamp.read_text()) == sorted(patients):
        return dst
    source = args.stage_data.get(args.protocol, args.data)
    train_src, val_src = resolve_splits(source)
    preprocess = load_config(protocol=args.protocol, overrides=args.set).preprocess
    full = StackDataset.from_folder(train_src, preprocess, progress=False)
    keep = set(patients)
    records = [r for r in full.records if _patient(r) in keep]
    missing = keep - {_patient(r) for r in records}
    if missing:
        raise SystemExit(f"error: {args.splits}: fold {k}'s training patients {sorted(missing)[:3]} are not in {train_src}")
    dst.mkdir(parents=True, exist_ok=True)
    stamp.unlink(missing_ok=True)
    StackDataset(records, full.preprocess).save_cache(dst / "train.npz", compression="none")
    val = dst / ("val.npz" if val_src.name.endswith(".npz") else "val")
    if val.is_symlink() or val.exists():
        val.unlink()
    val.symlink_to(val_src.resolve())
    stamp.write_text(json.dumps(sorted(patients)))
    log(f"fold {k}: {len(records)} training stacks of {len(keep)} patients in {dst}")
    return dst


def folds_plan(runner: Runner) -> set[str]:
    """``--plan folds``: each fold of ``--splits`` (``experiments/cross_validate.py``'s
    ``splits.json``; ``--fold`` picks some) trains the proposed model from scratch on its training
    patients, fold after fold, at most ``--fold-epochs`` epochs a stage, the window shared by the
    stages left (a stage that stops at its epoch cap leaves its time to the rest); each comes back
    as ``models/seg_as-ref_as_mt_fold<k>/`` for ``cross_validate.py --models-from`` to read out of
    fold on the CPU machine. Nothing is evaluated here: their names are returned."""
    args = runner.args
    splits = json.loads(args.splits.read_text())
    folds = args.fold if args.fold is not None else range(len(splits))
    todo = [(name, extra, k) for k in folds for name, extra in fold_runs(k, args.fold_epochs)]
    data = {k: fold_data(args, k, splits[k]["train"]) for k in folds}
    for i, (name, extra, k) in enumerate(todo):
        if runner.ready(extra):
            runner.run(name, extra, stages_left=len(todo) - i, until=runner.clock.seconds - args.eval_reserve,
                       data=data[k])
    return {name for name, _, _ in todo}


STUDENT = "seg_as@student"  # the distilled student's run (configs/protocols/student.yaml)


def student_plan(runner: Runner) -> set[str]:
    """``--plan student``: the vendor-robust student of issue 35 (``--protocol student``: one
    ``seg_as`` distilled from the shipped default with vendor-like shifts, from the ``_long``
    member's Seg weights), the whole window, at most ``--student-epochs`` epochs: on the CPU its
    6,000-second run trained 59 (``weights/student/model.json``). It comes back as
    ``models/seg_as_student/``, scored on the CPU machine against the default by a rule written
    before (``experiments/ship_decision.py``); its name is returned."""
    args = runner.args
    runner.run(STUDENT, [f"epochs={args.student_epochs}"], stages_left=1,
               until=runner.clock.seconds - args.eval_reserve)
    return {STUDENT}


def evaluate(runner: Runner, members: set[str]) -> None:
    """``cmrseg reproduce`` scores every finished run but the ensemble members on val."""
    args, clock = runner.args, runner.clock
    models = [n for n in runner.finished if n not in members]
    if not models:
        return
    log(f"evaluating {', '.join(models)} on val")
    cmd = [sys.executable, "-m", "cmrseg", "reproduce", "--data", str(args.data), "--protocol", args.protocol,
           "--out", str(args.work), "--device", args.device, "--deadline-min", "0", "--models", *models]
    try:
        res = subprocess.run(cmd, env=env(), capture_output=True, text=True, timeout=max(30.0, clock.left() - 10))
        (args.work / "evaluate_console.log").write_text(res.stdout + res.stderr)
        log(f"evaluation exit {res.returncode}")
        print(res.stdout[-3000:] if res.returncode == 0 else res.stderr[-3000:], flush=True)
    except subprocess.TimeoutExpired:
        log("evaluation ran out of time")


def parse_args(argv: list[str] | None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", required=True, type=Path, help="train.npz.xz (or train.npz, train/) and val/ (experiments/make_gpu_bundle.py)")
    ap.add_argument("--out", required=True, type=Path, help="where weights, logs and evaluation go ($OUT)")
    ap.add_argument("--work", type=Path, default=Path("/tmp/gpu_job"), help="run folders (kept for a second call)")
    ap.add_argument("--seconds", type=float, default=540.0, help="wall time of the whole job")
    ap.add_argument("--plan", choices=["paper", "continue", "folds", "student"], default="paper",
                    help="paper: the protocol's runs (module docstring); continue: train the shipped models further; "
                         "folds: the cross-validation folds' models (--splits); student: the distilled student")
    ap.add_argument("--student-epochs", type=int, default=300,
                    help="--plan student: at most this many epochs (default 300)")
    ap.add_argument("--splits", type=Path, help="--plan folds: experiments/cross_validate.py's splits.json")
    ap.add_argument("--fold", type=int, nargs="+", metavar="K", help="--plan folds: these folds only (default: all)")
    ap.add_argument("--fold-epochs", type=int, default=120,
                    help="--plan folds: at most this many epochs a stage (default 120, as docs/RESULTS.md rule 27's folds)")
    ap.add_argument("--continue-from", type=Path, nargs="+", metavar="MODEL",
                    help="--plan continue: the two-stage model folders to continue (default: the shipped default's members)")
    ap.add_argument("--min-epochs", type=int, default=100,
                    help="--plan continue: continue fewer members (the better ones by val score) when the throughput "
                         "check says each stage would get fewer epochs than this (default 100)")
    ap.add_argument("--max-members", type=int, default=4,
                    help="--plan continue: with time left once the members reached their epoch cap, continue them "
                         "again with other seeds (trained apart, for the ensemble) up to this many in all (default 4)")
    ap.add_argument("--protocol", help="the runs' protocol, and the throughput check's (default: paper; with "
                    "--plan continue the continued models' own, which their runs always take)")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--bench-seconds", type=float, default=45.0, help="throughput check, at most (0 = skip)")
    ap.add_argument("--bench-steps", type=int, default=8, help="timed training steps per setting")
    ap.add_argument("--compile", metavar="MODE", help="the throughput check also measures torch.compile in this "
                    "mode on fixed-shape batches (reduce-overhead: CUDA graphs); raise --bench-seconds for it")
    ap.add_argument("--proposed-share", type=float, default=0.75,
                    help="share of the training time for the proposed model's two stages")
    ap.add_argument("--eval-reserve", type=float,
                    help="seconds kept for evaluation and packing (default 80; 20 with --plan continue)")
    ap.add_argument("--startup", type=float, default=25.0,
                    help="first guess of a training process's seconds outside its stages (loading data, probability maps)")
    ap.add_argument("--no-extra", dest="extra", action="store_false",
                    help="stop after seg_ss (default: further Table 1/2 runs while time is left)")
    ap.add_argument("--seeds", type=int, default=2,
                    help="further seeds of the proposed model after seg_ss, for an ensemble (default 2)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override for every run")
    args = ap.parse_args(argv)
    if args.plan == "folds" and not (args.splits and args.splits.is_file()):
        ap.error("--plan folds needs --splits FILE (experiments/cross_validate.py's splits.json)")
    if args.eval_reserve is None:
        args.eval_reserve = 80.0 if args.plan == "paper" else 20.0
    if args.plan == "continue":
        args.continue_from = args.continue_from or shipped_members()
        args.protocol = args.protocol or json.loads((args.continue_from[0] / "model.json").read_text())["protocol"]
    if args.plan == "student":
        args.protocol = "student"
    args.protocol = args.protocol or ("fast" if args.plan == "folds" else "paper")  # the folds: as rule 27's
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    clock = Clock(args.seconds)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.work / "runs").mkdir(parents=True, exist_ok=True)
    log(f"job: {args.seconds:.0f} s, plan {args.plan}, protocol {args.protocol}, device {args.device}, data {args.data}")
    # a stage of the proposed model (of a continued model) gets about this long: what a setting's
    # compile time is paid from
    if args.plan == "paper":
        share = args.proposed_share / 2
    elif args.plan == "continue":
        share = 1 / (2 * len(args.continue_from))
    elif args.plan == "folds":
        share = 1 / (2 * len(args.fold or json.loads(args.splits.read_text())))
    else:
        share = 1.0
    stage_guess = (args.seconds - args.bench_seconds - args.eval_reserve) * share - args.startup
    best = (throughput_check(args.out, args.protocol, args.device, args.bench_seconds, args.bench_steps,
                             compile_mode=args.compile, stage_seconds=max(stage_guess, 30.0))
            if args.bench_seconds > 0 else {})
    args.stage_data = stage_data(args)
    runner = Runner(args, clock, best)
    members = {"paper": paper_plan, "continue": continue_plan, "folds": folds_plan, "student": student_plan}[
        args.plan](runner)
    if runner.finished:
        evaluate(runner, members)
        pack(args.work, args.out, runner.finished)
    log(f"done after {clock.elapsed():.0f} s; finished runs: {', '.join(runner.finished) or 'none'}")
    return 0 if runner.finished else 1


if __name__ == "__main__":
    sys.exit(main())
