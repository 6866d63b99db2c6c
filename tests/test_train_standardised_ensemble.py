"""experiments/train_standardised_ensemble.py: the two runs become an ensemble cmrseg segment loads,
with the shipped members' inference settings."""

import json
import shutil
from pathlib import Path

import pytest

from cmrseg.inference.ensemble import EnsemblePredictor, load_predictor
from cmrseg.inference.options import InferenceOptions


def test_assemble_gives_the_runs_the_members_settings_and_an_ensemble(tmp_path, load_script):
    script = load_script("experiments/train_standardised_ensemble.py")
    shipped = script.shipped_members()
    runs = []
    for member in shipped:  # stand-ins for finished runs: the shipped weights without inference settings
        run = tmp_path / member.name / "seg_as+ref_as_mt"
        shutil.copytree(member, run)
        meta = json.loads((run / "model.json").read_text())
        for key in script.INFERENCE_KEYS:
            meta.pop(key, None)
        (run / "model.json").write_text(json.dumps(meta))
        runs.append(run)
    folder = script.assemble(runs, shipped, tmp_path / "ensemble")
    for run, member in zip(runs, shipped):
        got, want = (json.loads((p / "model.json").read_text()) for p in (run, member))
        assert {k: got[k] for k in script.INFERENCE_KEYS} == {k: want[k] for k in script.INFERENCE_KEYS}
    ens = load_predictor(str(folder), InferenceOptions(device="cpu"))
    assert isinstance(ens, EnsemblePredictor) and len(ens.members) == 2 and ens.postprocess == "clean"
    assert {Path(m.meta["path"]).resolve() for m in ens.members} == {r.resolve() for r in runs}
    meta = json.loads((runs[0] / "model.json").read_text())
    meta["complete"] = False
    (runs[0] / "model.json").write_text(json.dumps(meta))
    with pytest.raises(SystemExit, match="not complete"):
        script.assemble(runs, shipped, tmp_path / "again")
