"""Training end to end on the phantom: smoke train -> checkpoint -> kill and resume ->
predict -> evaluate; config resolution; two-process DDP with gloo."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from cmrseg.checkpoint import read_tensors
from cmrseg.errors import CmrsegError
from cmrseg.inference.options import InferenceOptions
from cmrseg.measures.metrics import dice_per_class
from cmrseg.training.config import load_config

SMOKE = ["--protocol", "smoke"]


def _cli(*args, **kw):
    return subprocess.run([sys.executable, "-m", "cmrseg", *args], capture_output=True, text=True, **kw)


def test_config_layers_protocol_model_and_overrides(tmp_path):
    cfg = load_config(protocol="paper", model="seg_as+ref_as_mt", overrides=["augment.rotation_deg=10", "epochs=3"])
    assert cfg.protocol == "paper" and cfg.model == "seg_as+ref_as_mt"
    assert cfg.epochs == 3 and cfg.augment.rotation_deg == 10 and cfg.preprocess.target_spacing == 1.3
    assert load_config(protocol="fast", overrides=["lr=5e-4", "augment.gamma=1"]).lr == 5e-4  # YAML 1.1: a string
    with pytest.raises(CmrsegError, match="'lr' must be a number"):
        load_config(protocol="fast", overrides=["lr=fast"])
    cfg.save(tmp_path / "c.yaml")
    again = load_config(tmp_path / "c.yaml")
    assert again.to_dict() == cfg.to_dict()
    (tmp_path / "bad.yaml").write_text("epochz: 3\n")

    with pytest.raises(CmrsegError, match="unknown config keys"):
        load_config(tmp_path / "bad.yaml")


@pytest.mark.slow
def test_train_kill_resume_predict_evaluate(phantom_dir, tmp_path):
    run = tmp_path / "run"
    args = ["train", "--model", "seg_as+ref_as_mt", *SMOKE, "--data", str(phantom_dir / "h5"), "--out", str(run),
            "--epochs", "6", "--set", "progress=false", "--set", "val_every=2"]
    proc = subprocess.Popen([sys.executable, "-m", "cmrseg", *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    state = run / "stage1" / "last" / "state.json"
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        if state.exists() and json.loads(state.read_text())["state"]["epoch"] >= 2:
            break
        time.sleep(0.2)
    assert proc.poll() is None, proc.stdout.read().decode()[-2000:]
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed_at = json.loads(state.read_text())["state"]["epoch"]
    assert 2 <= killed_at < 6
    assert not (run / "model.json").exists()
    res = _cli(*args)
    assert res.returncode == 0, res.stderr[-2000:]
    log = (run / "stage1" / "log.csv").read_text().splitlines()
    epochs = [int(l.split(",")[0]) for l in log[1:]]
    assert epochs == list(range(1, 7)), epochs  # resumed, not restarted, and no epoch twice
    meta = json.loads((run / "model.json").read_text())
    assert meta["complete"] and meta["model"] == "seg_as+ref_as_mt" and meta["trained_epochs"] == 6
    weights = read_tensors(run / "weights.safetensors")
    assert any(k.startswith("seg.") for k in weights) and any(k.startswith("ref.classifier") for k in weights)
    assert (run / "stage1" / "snapshots").is_dir() and (run / "tensorboard").is_dir()
    # predict the validation volumes with the run folder alone, then evaluate
    from cmrseg.data.io import load_labelled_dataset, write_mask
    from cmrseg.inference.predictor import Predictor

    predictor = Predictor.from_path(run, InferenceOptions(device="cpu"))
    pred_dir = tmp_path / "pred"
    own = []
    for vol in load_labelled_dataset(phantom_dir / "h5" / "val"):
        p = predictor.predict_volume(vol)
        assert p.mask.shape == vol.label.shape and p.class_probs.shape == (vol.num_slices, 3)
        write_mask(p.mask, vol, pred_dir)
        own.append(dice_per_class(p.mask, vol.label))
    res = _cli("evaluate", "--pred", str(pred_dir), "--gt", str(phantom_dir / "h5" / "val"), "-o", str(tmp_path / "ev"))
    assert res.returncode == 0, res.stderr
    summary = json.loads((tmp_path / "ev" / "summary.json").read_text())
    # the evaluation read back the written masks: its volume Dice is the one computed from them here
    assert summary["n_volumes"] == len(own)
    for i, c in enumerate(("RV", "MYO", "LV")):
        values = [d[i] for d in own if d[i] == d[i]]
        assert summary["levels"]["volume"][c] == pytest.approx(sum(values) / len(values), abs=1e-9)


@pytest.mark.slow
def test_finished_run_is_not_retrained(phantom_dir, tmp_path):
    run = tmp_path / "r"
    args = ["train", "--model", "seg_ss", *SMOKE, "--data", str(phantom_dir / "h5"), "--out", str(run),
            "--epochs", "1", "--set", "progress=false"]
    assert _cli(*args).returncode == 0
    stamp = (run / "weights.safetensors").stat().st_mtime_ns
    assert _cli(*args).returncode == 0
    assert (run / "weights.safetensors").stat().st_mtime_ns == stamp
    # fine-tuning from that run with a zero learning rate keeps its convolution weights exactly
    tuned = tmp_path / "tuned"
    base = args[: args.index("--out") + 1]
    res = _cli(*base, str(tuned), "--epochs", "1", "--set", "progress=false", "--set", "lr=0",
               "--set", f"init_weights={run}")
    assert res.returncode == 0, res.stderr[-2000:]
    a, b = read_tensors(run / "weights.safetensors"), read_tensors(tuned / "weights.safetensors")
    convs = [k for k in a if k.endswith("weight") and a[k].ndim == 4]
    assert convs and all(torch.equal(a[k], b[k]) for k in convs)
    res = _cli(*base, str(tmp_path / "bad"), "--set", "progress=false", "--set", f"init_weights={tmp_path / 'no'}")
    assert res.returncode == 2 and "init_weights" in res.stderr and len(res.stderr.strip().splitlines()) == 1


def test_landmarks_set_for_a_run_reach_its_config_model_json_and_predictor(phantom_dir, tmp_path):
    from cmrseg.inference.predictor import Predictor

    run = tmp_path / "hs"
    res = _cli("train", "--model", "seg_ss", *SMOKE, "--data", str(phantom_dir / "h5"), "--out", str(run),
               "--epochs", "1", "--set", "progress=false",
               "--set", "preprocess.landmarks=[0.3,0.32,0.36,0.4,0.44,0.49,0.54,0.6,0.66,0.75]",
               "--set", "preprocess.landmark_window_mm=120")
    assert res.returncode == 0, res.stderr[-2000:]
    meta = json.loads((run / "model.json").read_text())
    assert meta["preprocess"]["landmarks"][-1] == 0.75 and meta["preprocess"]["landmark_window_mm"] == 120
    assert load_config(run / "config.yaml").preprocess.landmarks[0] == 0.3  # the run's config reads back
    predictor = Predictor.from_path(run, InferenceOptions(device="cpu"))
    assert predictor.preprocess.landmarks[0] == 0.3 and predictor.preprocess.landmark_window_mm == 120
    bad = _cli("train", "--model", "seg_ss", *SMOKE, "--data", str(phantom_dir / "h5"), "--out", str(tmp_path / "bad"),
               "--set", "preprocess.landmarks=[0.5,0.4]")
    assert bad.returncode == 2 and "preprocess.landmarks must be 10 increasing values" in bad.stderr
    assert len(bad.stderr.strip().splitlines()) == 1


def test_ref_stage_on_online_seg_outputs_keeps_the_final_seg_weights(phantom_dir, tmp_path):
    run = tmp_path / "online"
    res = _cli("train", "--model", "seg_as+ref_as_mt", *SMOKE, "--data", str(phantom_dir / "h5"), "--out", str(run),
               "--epochs", "2", "--set", "progress=false", "--set", "ref_inputs=online", "--set", "snapshot_fractions=[0.5]")
    assert res.returncode == 0, res.stderr[-2000:]
    meta = json.loads((run / "model.json").read_text())
    assert meta["ref_inputs"] == "online" and meta["ref_input_sources"] == 2  # final + one snapshot
    seg = read_tensors(run / "stage1" / "weights.safetensors")
    full = read_tensors(run / "weights.safetensors")
    assert all(torch.equal(full[f"seg.{k}"], v) for k, v in seg.items())  # the snapshots only fed the Ref stage


def test_fixed_shape_training_runs_both_stages_end_to_end(phantom_dir, tmp_path):
    """``fixed_shape=true`` (packed, padded stack batches) through ``cmrseg train``: both stages
    finish, and the log's slices/s counts real slices (two epochs of the phantom's stacks)."""
    run = tmp_path / "fixed"
    res = _cli("train", "--model", "seg_as+ref_as_mt", *SMOKE, "--data", str(phantom_dir / "h5"), "--out", str(run),
               "--epochs", "2", "--set", "progress=false", "--set", "fixed_shape=true", "--set", "batch_slices=20")
    assert res.returncode == 0, res.stderr[-2000:]
    assert json.loads((run / "model.json").read_text())["complete"]
    rows = (run / "stage1" / "log.csv").read_text().splitlines()
    head = rows[0].split(",")
    first = dict(zip(head, rows[1].split(",")))
    assert float(first["slices_per_s"]) * float(first["seconds"]) == pytest.approx(_phantom_train_slices(phantom_dir),
                                                                                   rel=1e-6)


def _phantom_train_slices(phantom_dir) -> int:
    from cmrseg.data.dataset import StackDataset

    cfg = load_config(protocol="smoke")
    return StackDataset.from_folder(phantom_dir / "h5" / "train", cfg.preprocess, progress=False).num_slices


def test_bad_config_and_data_give_one_line(tmp_path):
    res = _cli("train", "--model", "seg_ss", "--protocol", "nope", "--data", str(tmp_path), "--out", str(tmp_path / "o"))
    assert res.returncode == 2 and "unknown protocol" in res.stderr and len(res.stderr.strip().splitlines()) == 1
    res = _cli("train", "--model", "seg_ss", *SMOKE, "--data", str(tmp_path / "missing"), "--out", str(tmp_path / "o"))
    assert res.returncode == 2 and "missing" in res.stderr


@pytest.mark.slow
def test_two_process_ddp_with_gloo(phantom_dir, tmp_path):
    run = tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    res = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
                          "29517", "-m", "cmrseg", "train", "--model", "seg_as", *SMOKE, "--data",
                          str(phantom_dir / "h5"), "--out", str(run), "--epochs", "2", "--set", "progress=false",
                          "--set", "num_threads=1"], capture_output=True, text=True, env=env, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    log = (run / "log.csv").read_text().splitlines()
    assert len(log) == 3  # header + 2 epochs, written by rank 0 only
    assert json.loads((run / "model.json").read_text())["complete"]
    # one process with the same total batch gives comparable first-epoch loss (batch-size effects aside)
    single = tmp_path / "single"
    res = subprocess.run([sys.executable, "-m", "cmrseg", "train", "--model", "seg_as", *SMOKE, "--data",
                          str(phantom_dir / "h5"), "--out", str(single), "--epochs", "2", "--set", "progress=false",
                          "--set", "batch_stacks=4"], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    l_ddp = float(log[1].split(",")[3])
    l_one = float((single / "log.csv").read_text().splitlines()[1].split(",")[3])
    assert abs(l_ddp - l_one) / l_one < 0.25, (l_ddp, l_one)


@pytest.mark.slow
def test_demo_chain_on_the_phantom_learns(tmp_path):
    """make demo's chain, smaller and shorter (the full demo reaches volume Dice 0.95, docs/RESULTS.md)."""
    from cmrseg.pipelines.demo import run_demo

    out = tmp_path / "demo"
    summary = run_demo(out, patients=6, val_patients=1, device="cpu", overrides=["epochs=12", "progress=false"])
    assert summary["synthetic_phantom"] and summary["levels"]["volume"]["avg"] > 0.6, summary["levels"]
    for name in ("report.md", "table1.md", "fig4.png", "segment/report.html", "segment/measures.csv"):
        assert (out / name).exists(), name
    assert summary["segment_vs_known_volumes"]["studies"] == 2


@pytest.mark.slow
def _acdc_with_fewer_val_patients(acdc_val, folder, patients: int):
    """The real ACDC layout with all of train and the first ``patients`` of val (symlinks, their
    metadata rows and manifest entries): a run on real files, scored on fewer patients."""
    import csv

    rows = list(csv.DictReader((acdc_val / "metadata.csv").open()))[:patients]
    keep = {r["patient"] for r in rows}
    (folder / "val").mkdir(parents=True)
    (folder / "train").symlink_to(acdc_val.parent / "train", target_is_directory=True)
    for h5 in acdc_val.glob("*.h5"):
        if h5.name.split("_")[0] in keep:
            (folder / "val" / h5.name).symlink_to(h5)
    with (folder / "val" / "metadata.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    manifest = [e for e in json.loads((acdc_val / "manifest.json").read_text()) if e["patient"] in keep]
    (folder / "val" / "manifest.json").write_text(json.dumps(manifest))
    return folder


def test_reproduce_smoke_on_real_acdc_writes_tables_and_figure(acdc_val, tmp_path):
    out = tmp_path / "repro"
    data = _acdc_with_fewer_val_patients(acdc_val, tmp_path / "acdc", patients=5)
    res = _cli("reproduce", "--data", str(data), "--protocol", "smoke", "--out", str(out),
               "--models", "seg_as+ref_as_mt", "--set", "progress=false", "--set", "epochs=1")
    assert res.returncode == 0, res.stderr[-3000:]
    for name in ("table1.md", "table1.csv", "report.md", "fig4.png", "timings.csv", "summary.json"):
        assert (out / name).exists(), name
    table = (out / "table1.md").read_text()
    assert "Proposed" in table and "Apex" in table
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["runs"]) == {"seg_as", "seg_as+ref_as_mt"}
    assert all(r["status"] == "done" and r["seconds"] > 1 for r in summary["runs"].values())  # timed in-process
    assert summary["summaries"]["seg_as+ref_as_mt"]["n_volumes"] == 10
    # the splits were preprocessed once for both runs, and the cache went once they had finished
    assert res.stderr.count("preprocess:") >= 1 and not (out / "cache").exists()
    # the other run against the proposed model, patient by patient, in the report and in full beside it
    report = (out / "report.md").read_text()
    assert "against the proposed model, patient by patient (5 patients)" in report
    walls = report.split("## Wall thickness per slice")[1].split("##")[0]
    assert "| Proposed | " in walls and "| AS After-UNet | " in walls  # each model's bias and slope
    assert "(model - Proposed)" in report and "| AS After-UNet | " in report.split("patient by patient")[1]
    paired = json.loads((out / "paired" / "compare.json").read_text())
    assert paired["reference"] == "Proposed" and paired["candidates"] == ["AS After-UNet"]
    assert (out / "paired" / "compare.png").is_file()


def test_splits_are_preprocessed_once_for_many_runs_and_rebuilt_when_the_data_change(phantom_dir, tmp_path):
    import shutil

    from cmrseg.data.dataset import StackDataset
    from cmrseg.training.run_folder import remove_split_caches, split_caches

    data = tmp_path / "data"
    shutil.copytree(phantom_dir / "h5", data)
    smoke = load_config(protocol="smoke").preprocess
    folder = split_caches(data, tmp_path / "cache", {smoke})
    assert folder == tmp_path / "cache"
    for split in ("train", "val"):  # the same stacks the runs would preprocess themselves
        a = StackDataset.from_folder(folder / f"{split}.npz", smoke)
        b = StackDataset.from_folder(data / split, smoke, progress=False)
        assert [r.name for r in a.records] == [r.name for r in b.records]
        assert all((x.image == y.image).all() and (x.label == y.label).all() for x, y in zip(a.records, b.records))
    stamp = (folder / "train.npz").stat().st_mtime_ns
    assert split_caches(data, tmp_path / "cache", {smoke}) == folder
    assert (folder / "train.npz").stat().st_mtime_ns == stamp  # unchanged data: reused
    one = next(f for f in (data / "val").iterdir() if f.is_file())
    os.utime(one, ns=(one.stat().st_atime_ns, one.stat().st_mtime_ns + 10**9))
    split_caches(data, tmp_path / "cache", {smoke})
    assert (folder / "train.npz").stat().st_mtime_ns != stamp  # a source file changed: rebuilt
    paper = load_config(protocol="paper").preprocess
    assert split_caches(data, tmp_path / "other", {smoke, paper, None}) == data  # runs that preprocess differently
    assert not (tmp_path / "other").exists()
    # removed when done: only what it wrote
    (folder / "notes.txt").write_text("the user's")
    remove_split_caches(folder)
    assert [p.name for p in folder.iterdir()] == ["notes.txt"]
    (folder / "notes.txt").unlink()
    split_caches(data, folder, {smoke})
    remove_split_caches(folder)
    assert not folder.exists()
    # caches as the source (the GPU bundle's train.npz.xz made for a finer canvas): resampled once
    paper_cache = tmp_path / "paper"
    paper_cache.mkdir()
    for split in ("train", "val"):
        StackDataset.from_folder(data / split, paper, progress=False).save_cache(paper_cache / f"{split}.npz")
    folder2 = split_caches(paper_cache, tmp_path / "c2", {smoke, None})
    a = StackDataset.from_folder(folder2 / "train.npz", smoke)
    b = StackDataset.from_folder(paper_cache / "train.npz", smoke)
    assert folder2 == tmp_path / "c2" and a.preprocess == smoke
    assert all((x.image == y.image).all() and (x.label == y.label).all() for x, y in zip(a.records, b.records))
