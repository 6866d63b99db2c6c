"""experiments/train_standardised_ensemble.py: the two runs become an ensemble cmrseg segment loads,
with the shipped members' inference settings."""

import json
import shutil
from pathlib import Path

import pytest

from cmrseg.inference.ensemble import EnsemblePredictor, load_predictor
from cmrseg.inference.options import MODEL_CHOICES, InferenceOptions


def test_assemble_gives_the_runs_the_members_settings_and_an_ensemble(tmp_path, load_script):
    script = load_script("experiments/train_standardised_ensemble.py")
    shipped = script.shipped_members()
    runs = []
    for member in shipped:  # stand-ins for finished runs: the shipped weights without inference settings
        run = tmp_path / member.name / "seg_as+ref_as_mt"
        shutil.copytree(member, run)
        meta = json.loads((run / "model.json").read_text())
        for key in MODEL_CHOICES:
            meta.pop(key, None)
        (run / "model.json").write_text(json.dumps(meta))
        runs.append(run)
    folder = script.assemble(runs, shipped, tmp_path / "ensemble")
    for run, member in zip(runs, shipped):
        got, want = (json.loads((p / "model.json").read_text()) for p in (run, member))
        assert {k: got[k] for k in MODEL_CHOICES} == {k: want[k] for k in MODEL_CHOICES}
    ens = load_predictor(str(folder), InferenceOptions(device="cpu"))
    assert isinstance(ens, EnsemblePredictor) and len(ens.members) == 2 and ens.postprocess == "clean"
    assert {Path(m.meta["path"]).resolve() for m in ens.members} == {r.resolve() for r in runs}
    meta = json.loads((runs[0] / "model.json").read_text())
    meta["complete"] = False
    (runs[0] / "model.json").write_text(json.dumps(meta))
    with pytest.raises(SystemExit, match="not complete"):
        script.assemble(runs, shipped, tmp_path / "again")


def test_init_continues_an_ensemble_with_its_own_landmarks(tmp_path, load_script):
    """--init (rule 24): the ensemble's members in the shipped members' order, with the landmarks
    and window they were trained with; members that disagree, or a folder that is no ensemble, stop."""
    script = load_script("experiments/train_standardised_ensemble.py")
    shipped = script.shipped_members()
    assert script.starting_points(None) == (shipped, None)
    runs = []
    for i, member in enumerate(shipped):
        run = tmp_path / f"run{i}" / "seg_as+ref_as_mt"  # both runs' folders share this name, as rule 23's did
        shutil.copytree(member, run)
        meta = json.loads((run / "model.json").read_text())
        meta["preprocess"].update(landmarks=[0.1 * k + 0.05 for k in range(10)], landmark_window_mm=120.0)
        (run / "model.json").write_text(json.dumps(meta))
        runs.append(run)
    folder = script.assemble(runs, shipped, tmp_path / "ensemble")
    starts, (landmarks, window) = script.starting_points(folder)
    assert starts == [r.resolve() for r in runs]
    assert landmarks == [0.1 * k + 0.05 for k in range(10)] and window == 120.0
    meta = json.loads((runs[1] / "model.json").read_text())
    meta["preprocess"]["landmark_window_mm"] = 90.0
    (runs[1] / "model.json").write_text(json.dumps(meta))
    with pytest.raises(SystemExit, match="do not share one set of landmarks"):
        script.starting_points(folder)
    with pytest.raises(SystemExit, match="no ensemble.json"):
        script.starting_points(tmp_path / "run0")


def test_main_with_init_trains_each_member_from_the_ensemble(tmp_path, load_script, monkeypatch):
    """The --init command line reaches train_cpu_2h.sh: each shipped member's place continued from
    the ensemble's member, the seed and the ensemble's own landmarks in EXTRA_SETS (the training
    itself stood in for by a copy)."""
    script = load_script("experiments/train_standardised_ensemble.py")
    shipped = script.shipped_members()
    runs = []
    for i, member in enumerate(shipped):
        run = tmp_path / "old" / f"run{i}"
        shutil.copytree(member, run)
        meta = json.loads((run / "model.json").read_text())
        meta["preprocess"].update(landmarks=[0.1 * k + 0.05 for k in range(10)], landmark_window_mm=None)
        meta["complete"] = True
        (run / "model.json").write_text(json.dumps(meta))
        runs.append(run)
    init = script.assemble(runs, shipped, tmp_path / "old" / "ensemble")
    calls = []

    def fake_training(cmd, check, env):
        calls.append((cmd, env["INIT"], env["EXTRA_SETS"]))
        shutil.copytree(env["INIT"], Path(cmd[3]) / "seg_as+ref_as_mt")

    monkeypatch.setattr(script.subprocess, "run", fake_training)
    out = tmp_path / "new"
    assert script.main([str(tmp_path / "data"), str(out), "--init", str(init), "--seed", "24", "--seg-min", "27"]) == 0
    assert [c[1] for c in calls] == [str(r.resolve()) for r in runs]
    assert [Path(c[0][3]).name for c in calls] == [m.name for m in shipped]
    assert all(c[0][4:6] == ["27", "10"] for c in calls)
    sets = calls[0][2].split()
    assert "seed=24" in sets and "preprocess.landmarks=[0.05000,0.15000" in sets[2]
    assert not any(s.startswith("preprocess.landmark_window_mm") for s in sets)  # the ensemble's None kept
    assert (out / "ensemble" / "ensemble.json").is_file()
