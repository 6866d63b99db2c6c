"""The models shipped inside the package load without any download and segment a stack."""

import json

import numpy as np

from cmrseg.data.io import load_labelled_dataset
from cmrseg.inference import Predictor, shipped_models
from cmrseg.inference.predictor import DEFAULT_MODEL, WEIGHTS_DIR


def test_default_model_is_shipped_and_described():
    assert DEFAULT_MODEL in shipped_models()
    meta = json.loads((WEIGHTS_DIR / DEFAULT_MODEL / "model.json").read_text())
    assert meta["complete"] and meta["model"] == DEFAULT_MODEL and "trained" in meta["shipped"]
    assert meta["label_map"] == {"0": "background", "1": "RV", "2": "MYO", "3": "LV"}


def test_shipped_default_segments_a_stack_in_its_geometry(phantom_dir):
    predictor = Predictor.load(device="cpu")
    vol = load_labelled_dataset(phantom_dir / "h5" / "val")[0]
    pred = predictor.predict_volume(vol)
    assert pred.mask.shape == vol.image.shape and pred.mask.dtype == np.uint8
    assert set(np.unique(pred.mask)) <= {0, 1, 2, 3}
    assert pred.class_probs.shape == (vol.num_slices, 3)
