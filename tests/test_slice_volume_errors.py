"""experiments/slice_volume_errors.py: the one slice that carries a volume error is found and
its share is right."""

import json
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


def test_basal_es_rv_counts_the_experts_and_the_masks_calls(tmp_path, load_script):
    """experiments/basal_es_rv.py: the most basal ES slice with LV, RV there or not, counted only
    where ED has RV on that slice; a prediction's call on the same slice counted beside it."""
    from cmrseg.data.io.h5 import write_h5_volume

    script = load_script("experiments/basal_es_rv.py")
    gt, pred = tmp_path / "gt", tmp_path / "pred"
    image = np.random.default_rng(0).random((3, 32, 32)).astype(np.float32)

    def stack(*slices):  # per slice the classes present, as blocks of pixels
        label = np.zeros((3, 32, 32), dtype=np.uint8)
        for k, classes in enumerate(slices):
            for c in classes:
                label[k, 2 * c:2 * c + 2, :2] = c
        return label

    cases = {  # ED, ES truth, ES prediction: slice 0 has no heart at ES, so slice 1 is the basal one
        "patient001": (stack({1}, {1, 3}, {3}), stack((), {1, 2, 3}, {3}), stack((), {2, 3}, {3})),  # drawn, missed
        "patient002": (stack({1}, {1, 3}, {3}), stack((), {3}, {3}), stack((), {1, 3}, {3})),  # not drawn, added
        "patient003": (stack({1}, {1, 3}, {3}), stack((), {3}, {3}), stack((), {3}, {3})),  # not drawn, agreed
        "patient004": (stack({1}, {3}, {3}), stack((), {1, 3}, {3}), stack((), {3}, {3})),  # no RV at ED there: left out
    }
    gt.mkdir()
    (gt / "manifest.json").write_text(json.dumps([{"volume": f"{case}_frame0{f}", "phase": phase}
                                                 for case in cases for f, phase in ((1, "ED"), (2, "ES"))]))
    for case, (ed, es, es_pred) in cases.items():
        write_h5_volume(gt / f"{case}_frame01.h5", image, ed)
        write_h5_volume(gt / f"{case}_frame02.h5", image, es)
        write_h5_volume(pred / f"{case}_frame02.h5", image, es_pred)
    assert script.count_calls(gt)["all"] == [1, 3, 0, 0]
    assert script.count_calls(gt, pred)["all"] == [1, 3, 0, 1]


def test_myocardium_by_phase_ratio_and_signed_errors(phantom_dir, tmp_path, load_script):
    """experiments/myocardium_by_phase.py: the labels' ES / ED myocardium ratio per patient, and a
    mask's own ratio and signed MYO errors in mL, the ES error where myocardium was removed."""
    from cmrseg.labels import MYO

    script = load_script("experiments/myocardium_by_phase.py")
    gt_dir = phantom_dir / "h5" / "train"
    pred_dir = tmp_path / "pred"
    shutil.copytree(gt_dir, pred_dir)
    rows = {r["patient"]: r for r in script.split_rows(gt_dir, pred_dir)}
    assert len(rows) == 3 and all(r["ed_error_ml"] == r["es_error_ml"] == 0 and r["pred_ratio"] == r["ratio"]
                                  for r in rows.values())
    ed, es = (read_label_volume(gt_dir / f"patient001_frame0{f}.h5") for f in (1, 2))
    assert rows["patient001"]["ratio"] == pytest.approx((es.label == MYO).sum() / (ed.label == MYO).sum())
    k = int(np.argmax((es.label == MYO).reshape(es.label.shape[0], -1).sum(1)))
    removed = int((es.label[k] == MYO).sum())
    with h5py.File(pred_dir / "patient001_frame02.h5", "r+") as fh:  # the mask's ES misses slice k's MYO
        label = fh["label"][()]
        label[k][label[k] == MYO] = 0
        fh["label"][...] = label
    r = {r["patient"]: r for r in script.split_rows(gt_dir, pred_dir)}["patient001"]
    voxel_ml = float(np.prod(es.geometry.spacing)) / 1000.0
    assert removed > 0 and r["ed_error_ml"] == 0 and r["es_error_ml"] == pytest.approx(-removed * voxel_ml)
    assert r["pred_ratio"] == pytest.approx(((es.label == MYO).sum() - removed) / (ed.label == MYO).sum())
    assert "3 patients" in script.summary(list(rows.values()))
