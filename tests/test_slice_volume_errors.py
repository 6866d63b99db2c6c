"""experiments/slice_volume_errors.py: the one slice that carries a volume error is found and
its share is right."""

import shutil

import h5py
import numpy as np
import pytest

from cmrseg.data.io.readers import read_label_volume
from cmrseg.errors import InputError
from cmrseg.labels import RV


def test_a_missing_slice_is_found_and_the_rest_is_exact(phantom_dir, tmp_path, load_script):
    script = load_script("experiments/slice_volume_errors.py")
    gt_dir = phantom_dir / "h5" / "val"
    pred_dir = tmp_path / "pred"
    shutil.copytree(gt_dir, pred_dir)
    name = sorted(p for p in pred_dir.glob("*.h5"))[0]
    truth = read_label_volume(gt_dir / name.name)
    rv_per_slice = (truth.label == RV).reshape(truth.label.shape[0], -1).sum(1)
    k = int(np.argmax(rv_per_slice))
    with h5py.File(name, "r+") as fh:  # the prediction: RV gone from slice k, one RV pixel added on slice k+1
        label = fh["label"][()]
        label[k][label[k] == RV] = 0
        label[k + 1][0, 0] = RV
        fh["label"][...] = label
    rows = {r["volume"]: r for r in script.slice_errors(pred_dir, gt_dir, "RV")}
    r = rows[name.stem]
    voxel_ml = float(np.prod(truth.geometry.spacing)) / 1000.0
    assert r["k"] == k and r["truth_px"] == rv_per_slice[k] and r["pred_px"] == 0
    assert np.isclose(r["slice_error"], -rv_per_slice[k] * voxel_ml)
    assert np.isclose(r["rest"], voxel_ml) and np.isclose(r["error"], r["slice_error"] + voxel_ml)
    assert all(o["error"] == 0 for v, o in rows.items() if v != name.stem)  # untouched volumes: no error
    assert "without each volume's largest one-slice error" in script.markdown(list(rows.values()), "RV")
    # a missing prediction is one clear error naming the prediction folder, not a KeyError
    name.unlink()
    with pytest.raises(InputError, match="no prediction for 1 of"):
        script.slice_errors(pred_dir, gt_dir, "RV")


def test_slice_pixels_reports_each_prediction_on_the_chosen_slice(phantom_dir, tmp_path, load_script):
    """experiments/slice_pixels.py: truth and predicted pixels of a structure on a chosen slice."""
    script = load_script("experiments/slice_pixels.py")
    gt_dir = phantom_dir / "h5" / "val"
    pred_dir = tmp_path / "pred"
    shutil.copytree(gt_dir, pred_dir)
    name = sorted(pred_dir.glob("*.h5"))[0]
    truth = read_label_volume(gt_dir / name.name)
    k = int(np.argmax((truth.label == RV).reshape(truth.label.shape[0], -1).sum(1)))
    with h5py.File(name, "r+") as fh:  # the prediction drops the RV on slice k
        label = fh["label"][()]
        label[k][label[k] == RV] = 0
        fh["label"][...] = label
    counts = script.slice_pixels(gt_dir, pred_dir, {name.stem: k}, "RV")
    assert counts == {f"{name.stem}:{k}": (int((truth.label[k] == RV).sum()), 0)} and counts[f"{name.stem}:{k}"][0] > 0
    assert script.slice_pixels(gt_dir, gt_dir, {name.stem: k}, "RV")[f"{name.stem}:{k}"][1] > 0
