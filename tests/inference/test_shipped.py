"""The models shipped inside the package load without any download and segment a stack."""

import json

import numpy as np

from cmrseg.data.io import load_labelled_dataset
from cmrseg.inference.ensemble import EnsemblePredictor, load_predictor
from cmrseg.inference.options import InferenceOptions
from cmrseg.inference.predictor import (
    DEFAULT_MODEL,
    ENSEMBLE_FILE,
    PROPOSED_MODEL,
    WEIGHTS_DIR,
    Predictor,
    shipped_models,
)

LABEL_MAP = {"0": "background", "1": "RV", "2": "MYO", "3": "LV"}


def test_default_model_is_a_shipped_ensemble_of_described_models():
    """``cmrseg segment``'s default is the shipped ensemble; each member is a complete shipped
    model with its provenance, and the single proposed model is one of them."""
    assert DEFAULT_MODEL in shipped_models() and PROPOSED_MODEL in shipped_models()
    spec = json.loads((WEIGHTS_DIR / DEFAULT_MODEL / ENSEMBLE_FILE).read_text())
    members = [(WEIGHTS_DIR / DEFAULT_MODEL / m).resolve() for m in spec["members"]]
    assert len(members) >= 2 and WEIGHTS_DIR / PROPOSED_MODEL in members
    for folder in members:
        meta = json.loads((folder / "model.json").read_text())
        assert folder.parent == WEIGHTS_DIR and folder.name in shipped_models()
        assert meta["complete"] and meta["model"] == PROPOSED_MODEL and meta["shipped"]["name"] == folder.name
        assert "trained" in meta["shipped"] and meta["label_map"] == LABEL_MAP


def test_shipped_models_segment_a_stack_in_its_geometry(phantom_dir):
    vol = load_labelled_dataset(phantom_dir / "h5" / "val")[0]
    single = Predictor.load(options=InferenceOptions(device="cpu"))  # one network: the proposed model
    default = load_predictor(options=InferenceOptions(device="cpu"))  # what cmrseg segment runs
    assert single.meta["path"].endswith(PROPOSED_MODEL) and isinstance(default, EnsemblePredictor)
    assert default.meta["source"] == "shipped" and "seg_as+ref_as_mt_long" in default.name
    for predictor in (single, default):
        pred = predictor.predict_volume(vol)
        assert pred.mask.shape == vol.image.shape and pred.mask.dtype == np.uint8
        assert pred.class_probs.shape == (vol.num_slices, 3)


def test_shipped_default_segments_a_real_val_patient(acdc_val):
    """A regression guard on real data: the shipped default's volume Dice on two val volumes
    (RESULTS: 0.917 on average over val)."""
    from cmrseg.data.io import read_volumes
    from cmrseg.data.io.h5 import read_h5
    from cmrseg.measures.metrics import dice_per_class

    predictor = load_predictor(options=InferenceOptions(device="cpu"))
    for name in ("patient002_frame01.h5", "patient019_frame02.h5"):
        (vol,) = read_volumes(acdc_val / name)
        truth = read_h5(acdc_val / name).label
        assert np.nanmean(dice_per_class(predictor.predict_volume(vol).mask, truth)) > 0.85, name


def test_predictor_gate_can_be_switched_off_for_ablations():
    import torch

    from cmrseg.models import create_model

    torch.manual_seed(0)
    model = create_model("seg_as+ref_as_mt", widths=(4, 8, 8, 16), heads=2)
    with torch.no_grad():
        model.ref.classifier.mlp[-1].weight.zero_()
        model.ref.classifier.mlp[-1].bias.copy_(torch.tensor([-10.0, 10.0, 10.0]))  # p_RV ~ 0
        model.ref.decoder.head.bias.copy_(torch.tensor([0.0, 100.0, 0.0, 0.0]))  # ungated: RV everywhere
    meta = {"model": "seg_as+ref_as_mt", "preprocess": {"target_spacing": None, "canvas": 32}}
    x = torch.randn(5, 1, 32, 32)
    gated, _ = Predictor(model, meta, InferenceOptions(device="cpu")).predict_canvas(x)
    ungated, cls = Predictor(model, meta, InferenceOptions(device="cpu", gate="off")).predict_canvas(x)
    assert (cls[:, 0] < 0.5).all()
    assert not (gated.argmax(1) == 1).any() and (ungated.argmax(1) == 1).all()


def test_the_shipped_student_runs_once_per_stack_on_the_whole_canvas(phantom_dir):
    """``--model student`` (issue 35): one network, no heart-centred second pass, no flips, the
    default's clean-up; a stack comes back in its own geometry."""
    student = load_predictor(["student"], InferenceOptions(device="cpu"))
    assert isinstance(student, Predictor) and "student" in shipped_models()
    assert student.inference_crop is None and student.meta["model"] == "seg_as"
    assert student.meta["postprocess"] == "clean" and student.meta["tta"] is False
    assert student.meta["teacher"] == DEFAULT_MODEL and student.meta["shipped"]["name"] == "student"
    vol = load_labelled_dataset(phantom_dir / "h5" / "val")[0]
    pred = student.predict_volume(vol)
    assert pred.mask.shape == vol.image.shape and pred.mask.dtype == np.uint8
