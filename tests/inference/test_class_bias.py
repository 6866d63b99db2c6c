"""``class_bias`` in a model's ``model.json``: constants added to the logits before the softmax
(a prior correction), fitted on the training data by ``experiments/fit_class_bias.py``."""

import json
import shutil

import numpy as np
import pytest
import torch
from scipy import ndimage

from cmrseg.data.volume import Geometry, Volume
from cmrseg.errors import InputError
from cmrseg.inference.options import InferenceOptions
from cmrseg.inference.predictor import Predictor
from cmrseg.labels import LV, MYO


def _ring_volume() -> Volume:
    """An LV cavity (1.0) in a myocardial ring (0.5) on background (0), blurred as an image's
    borders are, three slices."""
    yy, xx = np.mgrid[0:120, 0:120]
    r = np.hypot(yy - 60.3, xx - 59.7)
    sl = np.where(r < 14, 1.0, np.where(r < 21, 0.5, 0.0)).astype(np.float32)
    sl = ndimage.gaussian_filter(sl, 1.5)
    return Volume(np.stack([sl] * 3), Geometry(spacing=(8.0, 1.6, 1.6)), None, "ring", "nifti")


def _myo_pixels(intensity_predictor, bias) -> int:
    predictor = intensity_predictor(postprocess="none")
    predictor = Predictor(predictor.model, {**predictor.meta, "class_bias": bias}, InferenceOptions(device="cpu"))
    mask = predictor.predict_volume(_ring_volume()).mask
    assert (mask == LV).sum() > 0
    return int((mask == MYO).sum())


def test_a_class_bias_moves_the_borders_of_that_class_and_none_leaves_the_masks_alone(intensity_predictor):
    plain = int((intensity_predictor(postprocess="none").predict_volume(_ring_volume()).mask == MYO).sum())
    assert _myo_pixels(intensity_predictor, None) == plain == _myo_pixels(intensity_predictor, [0, 0, 0, 0])
    thinner, thicker = _myo_pixels(intensity_predictor, [0, 0, -2.0, 0]), _myo_pixels(intensity_predictor, [0, 0, 2.0, 0])
    assert thinner < plain < thicker


@pytest.mark.parametrize("bias", [[0, 0, 1], [0, 0, float("nan"), 0], "MYO-1"])
def test_a_malformed_class_bias_is_refused_naming_the_model(intensity_predictor, bias):
    meta = {**intensity_predictor().meta, "class_bias": bias, "path": "/models/x"}
    with pytest.raises(InputError, match="/models/x.*class_bias must be one finite number per class"):
        Predictor(intensity_predictor().model, meta, InferenceOptions(device="cpu"))


def test_the_fit_reaches_the_reference_counts(load_script):
    fit = load_script("experiments/fit_class_bias.py")
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(20000, 4, generator=gen) * 2.0
    truth = torch.tensor([0.0, 0.6, -1.1, 0.4])
    target = torch.bincount((logits + truth).argmax(1), minlength=4)
    bias = fit.fit_bias(logits.log_softmax(1), target)
    got = torch.bincount((logits + bias).argmax(1), minlength=4)
    assert bias[0] == 0
    assert ((got - target).abs() / target).max() < 0.02
    assert torch.allclose(bias, truth, atol=0.15)


def test_the_script_writes_the_bias_into_model_json_once(load_script, smoke_model, phantom_dir, tmp_path, capsys):
    fit = load_script("experiments/fit_class_bias.py")
    model = tmp_path / "model"
    shutil.copytree(smoke_model, model)
    assert fit.main([str(model), "--data", str(phantom_dir / "h5" / "train"), "--match", "labels", "--write"]) == 0
    meta = json.loads((model / "model.json").read_text())
    assert len(meta["class_bias"]) == 4 and meta["class_bias"][0] == 0 and np.isfinite(meta["class_bias"]).all()
    assert "--match labels" in meta["class_bias_fitted"]
    assert "MYO" in capsys.readouterr().out
    # the fit leaves autograd as it found it: it once switched it off for the whole test process
    assert torch.is_grad_enabled()
    with pytest.raises(SystemExit, match="already has class_bias"):
        fit.main([str(model), "--data", str(phantom_dir / "h5" / "train"), "--match", "labels"])
    Predictor.from_path(model, InferenceOptions(device="cpu"))  # the written model loads
