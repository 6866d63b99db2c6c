"""Ensembles (``cmrseg.inference.ensemble``): probabilities averaged in the input grid, an
ensemble folder shipped like a model, ``cmrseg segment --model A B``, and clear errors."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from cmrseg.data.io import read_volumes
from cmrseg.errors import CmrsegError, InputError
from cmrseg.inference.ensemble import EnsemblePredictor, load_predictor
from cmrseg.inference.options import InferenceOptions
from cmrseg.inference.postprocessing import postprocess
from cmrseg.inference.predictor import WEIGHTS_DIR, Predictor

CPU, FP32 = InferenceOptions(device="cpu"), InferenceOptions(device="cpu", precision="fp32")


@pytest.fixture(scope="module")
def volume(phantom_dir):
    return read_volumes(phantom_dir / "h5" / "val" / "patient004_frame01.h5")[0]


def test_probabilities_are_the_members_mean(volume):
    a = Predictor.load("seg_as+ref_as_mt", FP32)
    b = Predictor.load("seg_ss", FP32)  # another architecture, no classifier
    ens = EnsemblePredictor([a, b], postprocess="clean")
    pa, ca = a.predict_probabilities(volume)
    pb, cb = b.predict_probabilities(volume)
    assert cb is None and pa.shape == pb.shape == (volume.num_slices, 4, *volume.shape[1:])
    probs, cls = ens.predict_probabilities(volume)
    torch.testing.assert_close(probs, (pa + pb) / 2)
    torch.testing.assert_close(cls, ca)  # presence: the mean over the members that have a classifier
    pred = ens.predict_volume(volume)
    expected = postprocess(((pa + pb) / 2).argmax(1).to(torch.uint8).numpy(), "clean")
    np.testing.assert_array_equal(pred.mask, expected)
    assert not np.array_equal(expected, postprocess(pa.argmax(1).to(torch.uint8).numpy(), "clean"))
    # --gate and --tta reach every member
    fast = load_predictor(["seg_as+ref_as_mt", "seg_ss"], InferenceOptions(device="cpu", gate="off", tta="fast"))
    assert all(m.gate == "off" and m.tta and m.locate_once for m in fast.members) and fast.gate == "off"
    assert fast.options.tta == "fast" and fast.tta
    assert ens.name == "ensemble of 2 (seg_as+ref_as_mt, seg_ss)" and ens.postprocess == "clean"


def test_a_model_twice_is_the_model(volume):
    one = Predictor.load("seg_ss", FP32)
    twice = load_predictor(["seg_ss", "seg_ss"], FP32)
    assert isinstance(twice, EnsemblePredictor) and twice.postprocess == one.postprocess
    np.testing.assert_array_equal(twice.predict_volume(volume).mask, one.predict_volume(volume).mask)


def _ensemble_folder(tmp_path, spec) -> Path:
    folder = tmp_path / "ens"
    folder.mkdir()
    for name in ("seg_as+ref_as_mt", "seg_ss"):
        shutil.copytree(WEIGHTS_DIR / name, folder / name)
    (folder / "ensemble.json").write_text(json.dumps(spec))
    return folder


def _segment(*args):
    return subprocess.run([sys.executable, "-m", "cmrseg", "segment", *map(str, args), "--workers", "1"],
                          capture_output=True, text=True)


@pytest.mark.slow
def test_segment_with_an_ensemble_folder_or_two_models(phantom_dir, tmp_path):
    folder = _ensemble_folder(tmp_path, {"members": ["seg_as+ref_as_mt", "seg_ss"], "postprocess": "clean"})
    ens = load_predictor(folder, CPU)
    assert isinstance(ens, EnsemblePredictor) and ens.meta["path"] == str(folder) and ens.postprocess == "clean"
    src = phantom_dir / "h5" / "val"
    res = _segment("-i", src, "-o", tmp_path / "a", "--model", folder)
    assert res.returncode == 0, res.stderr[-2000:]
    res = _segment("-i", src, "-o", tmp_path / "b", "--model", folder / "seg_as+ref_as_mt", folder / "seg_ss",
                   "--postprocess", "clean")
    assert res.returncode == 0, res.stderr[-2000:]
    import h5py

    for f in sorted((tmp_path / "a").glob("*.h5")):
        with h5py.File(f) as x, h5py.File(tmp_path / "b" / f.name) as y:
            np.testing.assert_array_equal(x["label"][:], y["label"][:])
    summary = json.loads((tmp_path / "b" / "summary.json").read_text())
    assert summary["model"].startswith("ensemble of 2") and len(summary["model_members"]) == 2
    assert summary["model_source"] == "command line"


def test_bad_ensembles_fail_clearly(phantom_dir, tmp_path):
    folder = _ensemble_folder(tmp_path, {"members": ["seg_as+ref_as_mt", "missing"]})
    with pytest.raises(InputError, match="not a model folder"):
        load_predictor(folder, CPU)
    with pytest.raises(InputError, match="an ensemble of models"):  # e.g. cmrseg export-onnx --model ENSEMBLE
        Predictor.from_path(folder)
    (folder / "ensemble.json").write_text("{not json")
    out = tmp_path / "out"
    res = _segment("-i", phantom_dir / "h5" / "val", "-o", out, "--model", folder)
    assert res.returncode != 0 and "ensemble.json" in res.stderr and "invalid ensemble description" in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1 and not out.exists()
    other = Predictor.load("seg_ss", CPU)
    other.meta["label_map"] = {"0": "background", "1": "LV"}
    with pytest.raises(CmrsegError, match="label map"):
        EnsemblePredictor([Predictor.load("seg_ss", CPU), other])


LANDMARKS = [0.2919, 0.32046, 0.35703, 0.39745, 0.44152, 0.48937, 0.54168, 0.59859, 0.66296, 0.74869]


def test_a_second_opinion_reads_stacks_standardised_with_the_same_networks(volume, tmp_path):
    opinion = {"landmarks": LANDMARKS, "landmark_window_mm": 120, "above_uncertainty": 0.1}
    folder = _ensemble_folder(tmp_path, {"members": ["seg_as+ref_as_mt", "seg_ss"], "second_opinion": opinion})
    ens = load_predictor(folder, FP32)
    second = ens.second_opinion
    assert second is not None and second.above == 0.1 and second.predictor.postprocess == ens.postprocess
    for m, s in zip(ens.members, second.predictor.members):
        assert s.model is m.model  # no second copy of the weights
        assert m.preprocess.landmarks is None and s.preprocess.landmarks == tuple(LANDMARKS)
        assert s.preprocess.landmark_window_mm == 120 and s.preprocess.canvas == m.preprocess.canvas
    as_read, _ = ens.predict_probabilities(volume)
    standardised, _ = second.predictor.predict_probabilities(volume)
    assert as_read.shape == standardised.shape and not torch.allclose(as_read, standardised)
    assert load_predictor(folder, InferenceOptions(device="cpu", second_opinion="off")).second_opinion is None
    # a broken second opinion is refused naming the file
    (folder / "ensemble.json").write_text(json.dumps({"members": ["seg_ss"], "second_opinion": {
        **opinion, "landmarks": LANDMARKS[::-1]}}))
    with pytest.raises(InputError, match="ensemble.json.*invalid second_opinion"):
        load_predictor(folder, CPU)


@pytest.mark.slow
def test_segment_keeps_the_opinion_the_networks_are_surer_of(phantom_dir, tmp_path):
    opinion = {"landmarks": LANDMARKS, "landmark_window_mm": 120, "above_uncertainty": 0.0}  # every study asked
    folder = _ensemble_folder(tmp_path, {"members": ["seg_ss"], "second_opinion": opinion})
    res = _segment("-i", phantom_dir / "h5" / "val", "-o", tmp_path / "out", "--model", folder)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "second opinion on standardised intensities for" in res.stdout
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["second_opinion"]["above_uncertainty"] == 0.0
    for study in summary["studies"].values():
        o = study["second_opinion"]
        read, std = o["uncertainty as read"], o["uncertainty standardised"]
        assert o["kept"] == ("standardised" if std < read else "as read")
        assert study["uncertainty"] == min(read, std)
        assert ("histogram-standardised" in study["note"]) == (o["kept"] == "standardised")
    # never asked where the networks are sure enough, or when turned off
    res = _segment("-i", phantom_dir / "h5" / "val", "-o", tmp_path / "off", "--model", folder, "--second-opinion", "off")
    assert res.returncode == 0, res.stderr[-2000:]
    summary = json.loads((tmp_path / "off" / "summary.json").read_text())
    assert summary["second_opinion"] is None
    assert all(s["second_opinion"] is None for s in summary["studies"].values())
