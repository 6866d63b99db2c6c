"""experiments/fit_intensity_landmarks.py: landmarks from the training stacks into every member's model.json."""

import json
import shutil
from pathlib import Path

import numpy as np

from cmrseg.data.preprocessing import LANDMARK_PERCENTILES, PreprocessConfig

ROOT = Path(__file__).resolve().parents[1]


def test_fit_writes_the_same_landmarks_into_each_member(phantom_dir, tmp_path, load_script):
    weights = ROOT / "src" / "cmrseg" / "weights"
    for name in ("seg_as+ref_as_mt", "seg_as+ref_as_mt_long"):  # model.json only: the weights are not read
        (tmp_path / name).mkdir()
        shutil.copy(weights / name / "model.json", tmp_path / name / "model.json")
    (tmp_path / "ens").mkdir()
    (tmp_path / "ens" / "ensemble.json").write_text(json.dumps({"members": ["../seg_as+ref_as_mt",
                                                                            "../seg_as+ref_as_mt_long"]}))
    fit = load_script("experiments/fit_intensity_landmarks.py")
    assert fit.main([str(tmp_path / "ens"), "--data", str(phantom_dir / "h5" / "train"), "--write"]) == 0
    metas = [json.loads((tmp_path / n / "model.json").read_text()) for n in ("seg_as+ref_as_mt", "seg_as+ref_as_mt_long")]
    found = [m["preprocess"]["landmarks"] for m in metas]
    assert found[0] == found[1] and len(found[0]) == len(LANDMARK_PERCENTILES)
    assert np.all(np.diff(found[0]) > 0) and 0 < found[0][0] and found[0][-1] < 1
    cfg = PreprocessConfig.from_dict(metas[0]["preprocess"])
    assert cfg.landmark_window_mm == 120.0 and cfg.landmarks == tuple(found[0])
    try:  # a second fit on the fitted copy is refused: it would standardise twice
        fit.main([str(tmp_path / "ens"), "--data", str(phantom_dir / "h5" / "train")])
    except SystemExit as stop:
        assert "already has landmarks" in str(stop)
    else:
        raise AssertionError("a second fit was not refused")


def test_a_second_opinion_goes_into_ensemble_json_above_the_training_studies_uncertainty(phantom_dir, tmp_path,
                                                                                         load_script):
    weights = ROOT / "src" / "cmrseg" / "weights"
    (tmp_path / "seg_ss").mkdir()
    shutil.copy(weights / "seg_ss" / "model.json", tmp_path / "seg_ss" / "model.json")
    ens = tmp_path / "ens"
    ens.mkdir()
    (ens / "ensemble.json").write_text(json.dumps({"members": ["../seg_ss"], "postprocess": "clean"}))
    segmented = tmp_path / "seg"
    segmented.mkdir()
    uncertainties = [0.05 + 0.01 * i for i in range(11)]  # 0.05 ... 0.15
    studies = {f"p{i}": {"uncertainty": u} for i, u in enumerate(uncertainties)}
    (segmented / "summary.json").write_text(json.dumps({"studies": {**studies, "broken": {"uncertainty": None}}}))
    fit = load_script("experiments/fit_intensity_landmarks.py")
    assert fit.main([str(ens), "--data", str(phantom_dir / "h5" / "train"), "--second-opinion", str(segmented),
                     "--quantile", "90", "--write"]) == 0
    spec = json.loads((ens / "ensemble.json").read_text())
    opinion = spec["second_opinion"]
    assert spec["members"] == ["../seg_ss"] and spec["postprocess"] == "clean"
    assert opinion["above_uncertainty"] == round(float(np.percentile(uncertainties, 90)), 4) == 0.14
    assert len(opinion["landmarks"]) == len(LANDMARK_PERCENTILES) and opinion["landmark_window_mm"] == 120.0
    assert "11 training studies" in opinion["fitted"]
    # the members' own model.json are left as they were: the networks still read stacks as trained
    assert "landmarks" not in json.loads((tmp_path / "seg_ss" / "model.json").read_text())["preprocess"]
