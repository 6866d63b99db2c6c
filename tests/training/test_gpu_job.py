"""The GPU job end to end on CPU (smoke protocol) and the time budget that makes it fit a call."""

import json
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
import torch
import yaml

from cmrseg.checkpoint import read_tensors
from cmrseg.inference.ensemble import EnsemblePredictor, load_predictor
from cmrseg.inference.options import InferenceOptions
from cmrseg.training.config import load_config
from cmrseg.training.schedule import budget_epochs

REPO = Path(__file__).resolve().parents[2]


def test_budget_epochs_ignores_the_warm_up_epoch_and_stays_in_bounds():
    cfg = load_config(protocol="paper", overrides=["time_budget_s=100", "val_every=5"])
    # first epoch 10 s (device warm-up), then 1 s; validation 5 s every 5 epochs -> 2 s per epoch
    assert budget_epochs(cfg, 2, 11.0, [10.0, 1.0], 5.0) == 2 + int(89 / 2.0)
    assert budget_epochs(cfg, 2, 11.0, [10.0, 1.0], 0.0) == 2 + 89
    assert budget_epochs(cfg, 2, 11.0, [0.01, 0.01], 0.0) == cfg.epochs  # never above the protocol's epochs
    assert budget_epochs(cfg, 30, 150.0, [1.0] * 30, 0.0, planned=40) == 31  # over budget: one more epoch, then stop
    assert budget_epochs(cfg, 31, 151.0, [1.0] * 31, 0.0, planned=31) == 31  # ... not one more at every re-plan
    assert budget_epochs(cfg, 31, 60.0, [1.0] * 31, 0.0, planned=31) == 31 + 40  # faster than planned: more


def test_a_larger_batch_is_chosen_only_when_it_pays_and_then_scales_the_learning_rate(load_script):
    bench = load_script("benchmarks/bench_training.py")
    job = load_script("experiments/gpu_job.py")

    def row(cl, tune, factor, rate):
        return {"model": "seg_as", "channels_last": cl, "cudnn_benchmark": tune, "batch_factor": factor,
                "slices_per_s": rate}

    rows = [row(True, False, 1, 900.0), row(False, False, 1, 1000.0), row(True, True, 1, 950.0)]
    assert bench.best_settings(rows)["seg_as"] == {"channels_last": False, "cudnn_benchmark": False,
                                                   "fixed_shape": False, "compile": False,
                                                   "slices_per_s": 1000.0, "batch_factor": 1}
    # twice the batch with another setting does not count; with the best one, only when it keeps
    # at least 90 % of the steps per second (1.8x the slices per second)
    assert bench.best_settings(rows + [row(True, False, 2, 5000.0)])["seg_as"]["batch_factor"] == 1
    assert bench.best_settings(rows + [row(False, False, 2, 1700.0)])["seg_as"]["batch_factor"] == 1
    best = bench.best_settings(rows + [row(False, False, 2, 1900.0)])["seg_as"]
    assert best["batch_factor"] == 2 and best["slices_per_s"] == 1900.0
    cfg = load_config(protocol="paper")
    assert job.batch_overrides("paper", 1) == []
    sets = dict(s.split("=") for s in job.batch_overrides("paper", 2))
    assert int(sets["batch_stacks"]) == 2 * cfg.batch_stacks and int(sets["batch_slices"]) == 2 * cfg.batch_slices
    assert float(sets["lr"]) == pytest.approx(cfg.lr * 2 ** 0.5, rel=1e-5)
    # the overrides are valid config
    assert load_config(protocol="paper", overrides=job.batch_overrides("paper", 2)).batch_stacks == 2 * cfg.batch_stacks


def test_a_compiled_setting_must_pay_for_its_compile_time_within_the_stage(load_script):
    bench = load_script("benchmarks/bench_training.py")
    job = load_script("experiments/gpu_job.py")
    eager = {"model": "seg_as", "channels_last": True, "cudnn_benchmark": True, "fixed_shape": True, "compile": False,
             "batch_factor": 1, "slices_per_s": 1000.0, "tune_seconds": 2.0}
    compiled = {**eager, "compile": "reduce-overhead", "slices_per_s": 1500.0, "tune_seconds": 70.0}
    assert bench.best_settings([eager, compiled])["seg_as"]["compile"] == "reduce-overhead"  # by rate alone
    # a 150 s stage: 1500 x 80 s = 120,000 slices against 1000 x 148 s = 148,000: eager wins
    assert bench.best_settings([eager, compiled], stage_seconds=150)["seg_as"]["compile"] is False
    assert bench.best_settings([eager, compiled], stage_seconds=400)["seg_as"]["compile"] == "reduce-overhead"
    sets = job.setting_overrides({**eager, "compile": "reduce-overhead", "batch_factor": 1}, "paper")
    cfg = load_config(protocol="paper", overrides=sets)
    assert cfg.fixed_shape and cfg.compile == "reduce-overhead" and cfg.cudnn_benchmark and cfg.channels_last
    assert load_config(protocol="paper", overrides=job.setting_overrides(eager, "paper")).compile is False


@pytest.mark.parametrize("compiled_rate", [3000.0, 500.0])
def test_the_settings_grid_measures_fixed_shapes_compiled_and_a_doubled_batch(load_script, monkeypatch,
                                                                               compiled_rate):
    """The order of the throughput check on a GPU (a stand-in times each setting): four
    channels-last / autotuning settings, fixed shapes, fixed shapes compiled, then the doubled
    batch with the best, skipped when the best is compiled (a second compile)."""
    bench = load_script("benchmarks/bench_training.py")
    seen = []

    def fake(name, cfg, device, steps, channels_last=False, cudnn_benchmark=False, batch_factor=1, n_shapes=3,
             fixed_shape=False, compile_mode=None, amp="auto"):
        seen.append((name, channels_last, cudnn_benchmark, fixed_shape, compile_mode, batch_factor))
        rate = compiled_rate if compile_mode else 1200.0 if fixed_shape else 1000.0
        return {"model": name, "channels_last": channels_last, "cudnn_benchmark": cudnn_benchmark,
                "fixed_shape": fixed_shape, "compile": compile_mode or False, "batch_factor": batch_factor,
                "slices_per_s": rate * batch_factor, "tune_seconds": 30.0 if compile_mode else 1.0}

    monkeypatch.setattr(bench, "time_setting", fake)
    rows, best = bench.settings_grid(load_config(protocol="paper"), "cuda", 8, 1e9, compile_mode="reduce-overhead",
                                     stage_seconds=300)
    as_rows = [r for r in seen if r[0] == "seg_as"]
    assert [r[3:5] for r in as_rows[:6]] == [(False, None)] * 4 + [(True, None), (True, "reduce-overhead")]
    if compiled_rate > 1200:
        assert best["seg_as"]["compile"] == "reduce-overhead" and len(as_rows) == 6  # no doubled batch
    else:
        assert best["seg_as"]["fixed_shape"] and not best["seg_as"]["compile"]
        assert as_rows[6][3:] == (True, None, 2) and best["seg_as"]["batch_factor"] == 2
    assert [r for r in seen if r[0] == "seg_ss" and (r[3] or r[4])] == []  # single-slice: one shape already
    # on a CPU the grid compiles nothing
    seen.clear()
    bench.settings_grid(load_config(protocol="paper"), "cpu", 8, 1e9, compile_mode="reduce-overhead")
    assert not any(r[4] for r in seen)


def _two_members(folder: Path, with_weights: tuple[str, ...]) -> list[Path]:
    """Model folders ``a`` and ``b`` (``b`` the better by selection score), those named in
    ``with_weights`` with the shipped ``_long`` member's weights."""
    members = []
    for name, score in (("a", 0.87), ("b", 0.89)):
        (folder / name).mkdir()
        (folder / name / "model.json").write_text(json.dumps({"val_score": score, "model": "seg_as+ref_as_mt",
                                                              "protocol": "fast"}))
        if name in with_weights:
            (folder / name / "weights.safetensors").symlink_to(REPO / "src" / "cmrseg" / "weights"
                                                               / "seg_as+ref_as_mt_long" / "weights.safetensors")
        members.append(folder / name)
    return members


def test_the_continue_plan_keeps_the_members_that_get_enough_epochs(load_script, tmp_path):
    """Two members share a call when each of their four stages still gets ``--min-epochs``
    epochs at the measured rate; otherwise the one with the better selection score goes alone
    (named by its place among the members, so the rule's folder names hold). A member an
    earlier call began goes first, and is kept."""
    job = load_script("experiments/gpu_job.py")
    members = _two_members(tmp_path, with_weights=("b",))  # a has none: it is not read
    # 500 s, 25 s overhead per stage, 1,312 slices: four stages of 100 s train 1,000 x 100 / 1,312 = 76 epochs
    assert job.members_that_fit(members, 1000.0, 500.0, 25.0, 1312, 100) == [members[1]]
    assert job.members_that_fit(members, 1000.0, 500.0, 25.0, 1312, 70) == members
    assert job.members_that_fit(members, 3000.0, 500.0, 25.0, 1312, 100) == members
    assert job.members_that_fit(members, None, 500.0, 25.0, 1312, 100) == members  # no throughput check
    assert job.members_that_fit(members, 10.0, 500.0, 25.0, 1312, 100) == [members[1]]  # at least one
    runs = job.continue_runs(members, tmp_path / "work", keep=[members[1]])
    assert [r[0] for r in runs] == ["seg_as@cont2", "seg_as+ref_as_mt@cont2"]
    # a second call finishes first what an earlier one began, even a member it would now leave out
    runs_dir = tmp_path / "work" / "runs"
    assert job.started_first(members, members, runs_dir) == members  # nothing begun yet
    (runs_dir / "seg_as@cont2").mkdir(parents=True)
    assert job.started_first(members, members, runs_dir) == [members[1], members[0]]
    assert job.started_first(members, [members[0]], runs_dir) == [members[1], members[0]]
    (tmp_path / "both").mkdir()
    both = _two_members(tmp_path / "both", with_weights=("a", "b"))
    runs = job.continue_runs(both, tmp_path / "work", keep=[both[1], both[0]])
    assert [r[0] for r in runs] == ["seg_as@cont2", "seg_as+ref_as_mt@cont2", "seg_as@cont1", "seg_as+ref_as_mt@cont1"]
    assert f"init_weights={both[1]}" in runs[1][1] and f"init_weights={both[0]}" in runs[3][1]


class _FakeClock:
    """A job clock that moves only when a fake run spends time."""

    def __init__(self, seconds: float, spent: float):
        self.seconds, self.spent = seconds, spent

    def elapsed(self) -> float:
        return self.spent

    def left(self) -> float:
        return self.seconds - self.spent


def test_spare_time_of_a_continue_call_trains_members_apart(load_script, tmp_path):
    """Time left once the members reached their epoch cap goes to the members continued again,
    the better one first, each with its own seed, while both stages of one more get
    ``--min-epochs`` at the measured rate, up to ``--max-members``; nothing is added before a
    stage has been measured or when the time is short."""
    import argparse

    job = load_script("experiments/gpu_job.py")
    members = _two_members(tmp_path, with_weights=("a", "b"))

    def spare(left: float, max_members: int, epoch_seconds: list[float]) -> list[tuple[str, list[str]]]:
        args = argparse.Namespace(continue_from=members, max_members=max_members, min_epochs=100, eval_reserve=20.0,
                                  work=tmp_path / "work", startup=10.0)
        runner = job.Runner(args, _FakeClock(540.0, 540.0 - left), {})
        runner.epoch_seconds = list(epoch_seconds)
        calls = []

        def fake_run(name, extra, stages_left, until, protocol=None):
            calls.append((name, extra))
            runner.clock.spent += 70.0  # a stage of 100 epochs at 0.5 s, 10 s overhead, and some
            return True

        runner.run, runner.ready = fake_run, lambda extra: True
        names = job.spare_members(runner, 1)
        assert names == {name for name, _ in calls}
        return calls

    # a stage of 100 epochs: 10 + 100 x 0.5 = 60 s, so a member needs 2 x 60 / 0.95 = 126 s besides the 20 kept
    calls = spare(300.0, 4, [0.3, 0.5])
    assert [name for name, _ in calls] == ["seg_as@cont3", "seg_as+ref_as_mt@cont3",
                                           "seg_as@cont4", "seg_as+ref_as_mt@cont4"]
    assert all("seed=3" in extra for _, extra in calls[:2]) and all("seed=4" in extra for _, extra in calls[2:])
    assert f"init_weights={members[1]}" in calls[1][1] and f"init_weights={members[0]}" in calls[3][1]  # b first
    assert "seg_stage_run={runs}/seg_as@cont3" in calls[1][1]
    assert [name for name, _ in spare(300.0, 3, [0.5])] == ["seg_as@cont3", "seg_as+ref_as_mt@cont3"]
    assert spare(140.0, 4, [0.5]) == []  # 120 s after the reserve: short of 126
    assert spare(300.0, 4, []) == []  # no stage measured yet
    assert spare(300.0, 2, [0.5]) == []  # the members are all there may be


def test_a_run_that_fails_compiled_is_run_again_uncompiled(load_script, tmp_path, monkeypatch):
    """A compile that breaks on the GPU's torch or driver must not cost the call's model."""
    import argparse

    job = load_script("experiments/gpu_job.py")
    calls = []

    def fake_run(cmd, **kw):
        calls.append(cmd)
        compiled = "compile=reduce-overhead" in cmd
        if not compiled:  # the uncompiled run finishes
            run = Path(cmd[cmd.index("--out") + 1])
            run.mkdir(parents=True, exist_ok=True)
            (run / "model.json").write_text(json.dumps({"complete": True, "trained_epochs": 3, "val_score": 0.5}))
        return subprocess.CompletedProcess(cmd, 1 if compiled else 0)

    monkeypatch.setattr(job.subprocess, "run", fake_run)
    monkeypatch.setattr(job, "is_complete_run", lambda run: (Path(run) / "model.json").is_file())
    args = argparse.Namespace(device="cuda", protocol="paper", data=tmp_path / "data", work=tmp_path, set=[])
    settings = ["channels_last=true", "fixed_shape=true", "compile=reduce-overhead"]
    assert job.train("seg_as", [], args, tmp_path / "runs", 100.0, 300.0, settings)
    assert len(calls) == 2 and "compile=reduce-overhead" in calls[0]
    assert not any(c.startswith("compile=") for c in calls[1]) and "fixed_shape=true" in calls[1]
    # a failure without compile is not retried
    calls.clear()
    monkeypatch.setattr(job.subprocess, "run", lambda cmd, **kw: calls.append(cmd) or subprocess.CompletedProcess(cmd, 1))
    assert not job.train("seg_ss", [], args, tmp_path / "runs2", 100.0, 300.0, ["compile=false"])
    assert len(calls) == 1


def test_time_budget_shortens_a_stage_and_records_it(phantom_dir, tmp_path):
    run = tmp_path / "budget"
    res = subprocess.run([sys.executable, "-m", "cmrseg", "train", "--model", "seg_ss", "--protocol", "smoke",
                          "--data", str(phantom_dir / "h5"), "--out", str(run), "--epochs", "500",
                          "--set", "progress=false", "--set", "time_budget_s=3", "--set", "val_every=1",
                          "--set", "schedule=cosine", "--set", "warmup_epochs=0"],
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    meta = json.loads((run / "model.json").read_text())
    assert meta["complete"] and meta["time_budget_s"] == 3
    assert 2 < meta["trained_epochs"] < 500 and meta["trained_epochs"] == meta["planned_epochs"]
    epochs = [int(line.split(",")[0]) for line in (run / "log.csv").read_text().splitlines()[1:]]
    assert epochs == list(range(1, meta["trained_epochs"] + 1))
    lr_last = float((run / "log.csv").read_text().splitlines()[-1].split(",")[2])
    # the cosine schedule was fitted to the epochs that fit: it ended at its floor (2 % of the peak)
    assert lr_last == pytest.approx(0.02 * load_config(protocol="smoke").lr, rel=1e-3)


@pytest.mark.slow
@pytest.mark.serial
def test_gpu_job_runs_end_to_end_on_cpu(phantom_dir, tmp_path):
    out, work, bundle = tmp_path / "out", tmp_path / "work", tmp_path / "bundle"
    # the data as it travels to the GPU machine: make_gpu_bundle.py's train.npz.xz + uint8 val/
    res = subprocess.run([sys.executable, str(REPO / "experiments" / "make_gpu_bundle.py"), str(phantom_dir / "h5"),
                          str(bundle), "smoke"], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0 and (bundle / "train.npz.xz").is_file() and (bundle / "val" / "manifest.json").is_file(), \
        res.stderr[-2000:]
    res = subprocess.run([sys.executable, str(REPO / "experiments" / "gpu_job.py"), "--data", str(bundle),
                          "--out", str(out), "--work", str(work), "--seconds", "240", "--protocol", "smoke",
                          "--device", "cpu", "--bench-seconds", "30", "--bench-steps", "3", "--eval-reserve", "60",
                          "--startup", "5", "--seeds", "1",
                          "--no-extra", "--set", "epochs=3", "--set", "val_every=1"],
                         capture_output=True, text=True, timeout=400)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-2000:]
    # the throughput check chose a setting and said so
    bench = json.loads((out / "throughput.json").read_text())
    assert {r["model"] for r in bench["rows"]} >= {"seg_as"} and "seg_as" in bench["best"]
    # ... and profiled seg_as with it: the op table came back beside the JSON
    assert bench["profile"]["model"] == "seg_as" and bench["profile"]["wall_ms_per_step"] > 0
    assert "convolution" in (out / "throughput.profile.txt").read_text()
    # the proposed model (both stages), seg_ss and a second seed came back as model folders, float16 ...
    for name in ("seg_as", "seg_as-ref_as_mt", "seg_ss", "seg_as_seed1", "seg_as-ref_as_mt_seed1"):
        tensors = read_tensors(out / "models" / name / "weights.safetensors")
        convs = [v for k, v in tensors.items() if v.ndim == 4]
        assert convs and all(str(v.dtype) == "torch.float16" for v in convs)
        assert all(str(v.dtype) == "torch.float32" for k, v in tensors.items() if "running_var" in k)
        assert json.loads((out / "models" / name / "model.json").read_text())["complete"]
    seed_cfg = yaml.safe_load((work / "runs" / "seg_as+ref_as_mt@seed1" / "config.yaml").read_text())
    assert seed_cfg["seed"] == 1 and seed_cfg["seg_stage_run"].endswith("seg_as@seed1")
    # ... and the seeds segment together as an ensemble, as the docstring says they are scored
    ens = load_predictor([out / "models" / "seg_as-ref_as_mt", out / "models" / "seg_as-ref_as_mt_seed1"], InferenceOptions(device="cpu"))
    assert isinstance(ens, EnsemblePredictor) and len(ens.members) == 2
    # ... with logs, model descriptions and the evaluation on val in one tarball
    with tarfile.open(out / "results.tar.gz") as tar:
        names = set(tar.getnames())
    for run in ("seg_as", "seg_as+ref_as_mt", "seg_ss"):
        assert {f"runs/{run}/log.csv", f"runs/{run}/model.json", f"runs/{run}/config.yaml"} <= names
    assert {"summary.json", "table1.md", "report.md"} <= names
    summary = json.loads((work / "summary.json").read_text())
    assert set(summary["summaries"]) == {"seg_as", "seg_as+ref_as_mt", "seg_ss"}
    assert all(r["status"] == "done" for r in summary["runs"].values())
    assert json.loads((work / "runs" / "seg_as+ref_as_mt" / "model.json").read_text())["trained_epochs"] == 3
    # the runs read the bundle preprocessed once for the call, not each on its own
    assert (work / "data" / "smoke" / "train.npz").is_file() and "splits preprocessed for every smoke run" in res.stdout
    # a second call finds every run finished and retrains nothing
    again = subprocess.run([sys.executable, str(REPO / "experiments" / "gpu_job.py"), "--data",
                            str(phantom_dir / "h5"), "--out", str(tmp_path / "out2"), "--work", str(work),
                            "--seconds", "120", "--protocol", "smoke", "--device", "cpu", "--bench-seconds", "0",
                            "--eval-reserve", "60", "--seeds", "1", "--no-extra"], capture_output=True, text=True, timeout=300)
    assert again.returncode == 0 and again.stdout.count("finished earlier, kept") == 5, again.stdout[-2000:]


@pytest.mark.slow
@pytest.mark.serial
def test_gpu_job_continues_a_shipped_model_in_its_own_protocol(phantom_dir, tmp_path):
    """``--plan continue`` on CPU: a shipped two-stage model (``fast`` networks) trained further
    from the paper protocol's bundle (its canvases resampled to 1.6 mm): the Seg stage starts
    from the model's Seg weights, the Ref stage from the model on that Seg run, and the result
    comes back as a model folder that loads for segmenting; the time left (its epochs capped at
    1) trains it again with another seed; nothing is evaluated on the device.
    Run on a Python without what the GPU machine lacks."""
    from cmrseg.checkpoint import stage_tensors

    member = REPO / "src" / "cmrseg" / "weights" / "seg_as+ref_as_mt"
    out, work, bundle = tmp_path / "out", tmp_path / "work", tmp_path / "bundle"
    res = subprocess.run([sys.executable, str(REPO / "experiments" / "make_gpu_bundle.py"), str(phantom_dir / "h5"),
                          str(bundle), "paper"], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    (tmp_path / "env").mkdir()
    res = subprocess.run([sys.executable, str(REPO / "experiments" / "gpu_job.py"), "--data", str(bundle),
                          "--out", str(out), "--work", str(work), "--seconds", "200", "--plan", "continue",
                          "--continue-from", str(member), "--device", "cpu", "--bench-seconds", "14", "--bench-steps",
                          "2", "--startup", "5", "--set", "epochs=1", "--set", "val_every=1", "--min-epochs", "1",
                          "--max-members", "2"],
                         capture_output=True, text=True, timeout=400, env=gpu_machine_env(tmp_path / "env"))
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-2000:]
    # on the GPU machine's Python (no nibabel, MONAI ...), the throughput check measured the fast networks
    bench = json.loads((out / "throughput.json").read_text())
    assert bench["protocol"] == "fast" and bench["best"]["seg_as"]["slices_per_s"] > 0
    runs = work / "runs"
    seg_cfg = yaml.safe_load((runs / "seg_as@cont1" / "config.yaml").read_text())
    ref_cfg = yaml.safe_load((runs / "seg_as+ref_as_mt@cont1" / "config.yaml").read_text())
    assert seg_cfg["protocol"] == ref_cfg["protocol"] == "fast" and seg_cfg["preprocess"]["target_spacing"] == 1.6
    assert seg_cfg["lr"] == ref_cfg["lr"] == pytest.approx(3e-4)
    # the paper-canvas bundle was resampled to the fast canvas once, for all four runs
    source = json.loads((work / "data" / "fast" / "source.json").read_text())
    assert source["preprocess"]["target_spacing"] == 1.6 and (work / "data" / "fast" / "train.npz").is_file()
    start = read_tensors(seg_cfg["init_weights"])  # the shipped model's Seg stage, exactly
    shipped = stage_tensors(read_tensors(member / "weights.safetensors"), "seg")
    assert start.keys() == shipped.keys() and all(torch.equal(start[k], shipped[k]) for k in start)
    assert ref_cfg["init_weights"] == str(member) and ref_cfg["seg_stage_run"] == str(runs / "seg_as@cont1")
    # it started where the shipped model is: after one epoch already far above a new network
    first = (runs / "seg_as@cont1" / "log.csv").read_text().splitlines()[1].split(",")
    assert float(first[9]) > 0.4, first
    folder = out / "models" / "seg_as-ref_as_mt_cont1"
    meta = json.loads((folder / "model.json").read_text())
    assert meta["complete"] and meta["protocol"] == "fast" and meta["trained_epochs"] == 1
    assert yaml.safe_load((folder / "config.yaml").read_text())["seg_stage_run"] == str(runs / "seg_as@cont1")
    assert all(str(v.dtype) == "torch.float16" for v in read_tensors(folder / "weights.safetensors").values()
               if v.ndim == 4)
    assert load_predictor([folder], InferenceOptions(device="cpu")).meta["protocol"] == "fast"
    with tarfile.open(out / "results.tar.gz") as tar:
        assert "runs/seg_as+ref_as_mt@cont1/log.csv" in tar.getnames()
    assert not (work / "summary.json").exists()  # scored on the CPU machine, as an ensemble
    # the time left went to the member continued again with its own seed: trained apart
    again = yaml.safe_load((runs / "seg_as+ref_as_mt@cont2" / "config.yaml").read_text())
    assert again["seed"] == 2 != ref_cfg["seed"] and again["init_weights"] == str(member)
    assert again["seg_stage_run"] == str(runs / "seg_as@cont2")
    assert (out / "models" / "seg_as-ref_as_mt_cont2" / "weights.safetensors").is_file()


_BLOCK = '''
import importlib.machinery
import sys

class _Absent:
    def create_module(self, spec):
        raise ModuleNotFoundError("not on the GPU machine: " + spec.name, name=spec.name)

    def exec_module(self, module):
        pass

class _Block:
    # a spec without origin: importing fails as for a missing module, while find_spec probes
    # (torch._dynamo's list of third-party packages) pass over it as they would over nothing
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("nibabel", "pydicom", "monai", "onnxruntime", "highdicom"):
            return importlib.machinery.ModuleSpec(name, _Absent())
        return None

sys.meta_path.insert(0, _Block())
'''


def gpu_machine_env(folder: Path) -> dict:
    """An environment whose Python, like the GPU machine's, has no nibabel, pydicom, highdicom,
    MONAI or onnxruntime (a ``sitecustomize`` in ``folder`` hides them), with ``src`` on the path."""
    (folder / "sitecustomize.py").write_text(_BLOCK)
    return {"PYTHONPATH": f"{folder}:{REPO / 'src'}", "PATH": "/usr/bin:/bin"}


def test_the_training_path_imports_without_what_the_gpu_machine_lacks(tmp_path):
    """The GPU machine's python has torch, h5py, scipy, scikit-image and safetensors but not
    nibabel, pydicom, highdicom or MONAI (the job carries a MONAI wheel for evaluation only): the modules
    the job trains with must import without them, whatever moves to module level."""
    env = gpu_machine_env(tmp_path)

    def run(code: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)

    assert "not on the GPU machine: nibabel" in run("import nibabel").stderr  # the blocker works
    res = run("import cmrseg.cli, cmrseg.training.trainer, cmrseg.pipelines.reproduce, cmrseg.pipelines.train_worker")
    assert res.returncode == 0, res.stderr[-2000:]
    job = subprocess.run([sys.executable, str(REPO / "experiments" / "gpu_job.py"), "--help"],
                         capture_output=True, text=True, env=env)
    assert job.returncode == 0 and "--seeds" in job.stdout, job.stderr[-2000:]


@pytest.mark.slow
def test_the_student_plan_distils_the_shipped_default_on_the_gpu_machines_python(phantom_dir, tmp_path):
    """``--plan student`` on CPU: the student protocol's one run (teacher: the shipped default,
    from the ``_long`` member's Seg weights) on a Python without what the GPU machine lacks; it
    comes back as a model folder that segments."""
    out, work = tmp_path / "out", tmp_path / "work"
    (tmp_path / "env").mkdir()
    res = subprocess.run([sys.executable, str(REPO / "experiments" / "gpu_job.py"), "--data", str(phantom_dir / "h5"),
                          "--out", str(out), "--work", str(work), "--seconds", "300", "--plan", "student",
                          "--student-epochs", "1", "--device", "cpu", "--bench-seconds", "0", "--startup", "5",
                          "--set", "val_every=1"],
                         capture_output=True, text=True, timeout=500, env=gpu_machine_env(tmp_path / "env"))
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-2000:]
    cfg = yaml.safe_load((work / "runs" / "seg_as@student" / "config.yaml").read_text())
    assert cfg["protocol"] == "student" and cfg["teacher"] == "proposed_ensemble" and cfg["epochs"] == 1
    assert (work / "runs" / "seg_as@student" / "teacher" / "targets.npz").is_file()
    folder = out / "models" / "seg_as_student"
    meta = json.loads((folder / "model.json").read_text())
    assert meta["complete"] and meta["trained_epochs"] == 1 and meta["teacher"] == "proposed_ensemble"
    assert load_predictor([folder], InferenceOptions(device="cpu")).meta["protocol"] == "student"
