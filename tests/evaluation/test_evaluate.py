"""``cmrseg evaluate`` against the real ACDC validation split and an independent
computation of the protocol written here from its text."""

import json
import shutil
import subprocess
import sys

import h5py
import numpy as np
import pytest
from scipy import ndimage


def _independent_level_dice(pred, gt):
    """PROTOCOL.md, written out with plain numpy and no cmrseg code."""
    s = gt.shape[0]
    heart = [i for i in range(s) if gt[i].any()]
    groups = np.array_split(np.array(heart), 3)
    level = {}
    for name, grp in zip(("base", "mid", "apex"), groups):
        for i in grp:
            level[int(i)] = name
    for i in range(s):
        if i < heart[0]:
            level[i] = "base"
        if i > heart[-1]:
            level[i] = "apex"
    out = {}
    for name in ("base", "mid", "apex", "volume"):
        idx = [i for i in range(s) if name == "volume" or level.get(i) == name]
        vals = []
        for c in (1, 2, 3):
            p, g = pred[idx] == c, gt[idx] == c
            if p.sum() + g.sum() == 0:
                vals.append(None)
            else:
                vals.append(2 * (p & g).sum() / (p.sum() + g.sum()))
        out[name] = vals
    return out


def _perturb(gt, rng):
    pred = gt.copy()
    s = gt.shape[0]
    pred = np.roll(pred, rng.integers(-3, 4), axis=2)  # shift
    pred[pred == 2] = np.where(rng.random((pred == 2).sum()) < 0.1, 3, 2)  # MYO/LV confusion
    pred = np.where(ndimage.binary_erosion(pred == 1, iterations=2), 1, np.where(pred == 1, 0, pred)).astype(np.uint8)
    pred[0, 10:30, 10:30] = 1  # false positive RV above the base
    pred[s // 2] = 0  # a missed mid slice
    return pred.astype(np.uint8)


def test_perfect_predictions_score_one(acdc_val, tmp_path):
    out = tmp_path / "rep"
    proc = subprocess.run([sys.executable, "-m", "cmrseg", "evaluate", "--pred", str(acdc_val), "--gt", str(acdc_val),
                           "-o", str(out)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    summary = json.loads((out / "summary.json").read_text())
    for lv in ("base", "mid", "apex", "volume"):
        for c in ("RV", "MYO", "LV", "avg"):
            assert summary["levels"][lv][c] == pytest.approx(1.0)
    assert summary["hd95_mm"]["LV"] == pytest.approx(0.0)
    assert summary["clinical"]["patients"] == 10
    assert summary["clinical"]["all"]["LVEF (%) MAE"] == pytest.approx(0.0)
    assert (out / "table.md").read_text().count("1.000") >= 16
    # every patient the same: the interval is that value
    assert summary["intervals"]["volume Dice"] == {"patients": 10, "mean": 1.0, "low": 1.0, "high": 1.0}
    assert "| apex Dice | 10 | 1.000 | 1.000 to 1.000 |" in (out / "table.md").read_text()
    assert (out / "per_volume.csv").read_text().count("\n") == 21


def test_imperfect_predictions_agree_with_independent_computation(acdc_val, tmp_path):
    rng = np.random.default_rng(0)
    pred_dir = tmp_path / "pred"
    pred_dir.mkdir()
    expected = {k: [[], [], []] for k in ("base", "mid", "apex", "volume")}
    frag = [0, 0]
    for f in sorted(acdc_val.glob("*.h5")):
        with h5py.File(f) as fh:
            gt = fh["label"][()]
        pred = _perturb(gt, rng)
        with h5py.File(pred_dir / f.name, "w") as fh:
            fh["label"] = pred
        for k, vals in _independent_level_dice(pred, gt).items():
            for i, v in enumerate(vals):
                if v is not None:
                    expected[k][i].append(v)
        for s in range(pred.shape[0]):
            for c in (1, 2, 3):
                m = pred[s] == c
                if m.any():
                    frag[1] += 1
                    frag[0] += ndimage.label(m, structure=np.ones((3, 3)))[1] > 1
    shutil.copy(acdc_val / "metadata.csv", pred_dir / "metadata.csv")
    out = tmp_path / "rep"
    proc = subprocess.run([sys.executable, "-m", "cmrseg", "evaluate", "--pred", str(pred_dir), "--gt", str(acdc_val),
                           "-o", str(out)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    summary = json.loads((out / "summary.json").read_text())
    for k, per_class in expected.items():
        means = [float(np.mean(v)) for v in per_class]
        for c, m in zip(("RV", "MYO", "LV"), means):
            assert summary["levels"][k][c] == pytest.approx(m, abs=1e-3), (k, c)
        assert summary["levels"][k]["avg"] == pytest.approx(np.mean(means), abs=1e-3)
        assert summary["levels"][k]["avg"] < 0.99
    assert summary["fragment_rate"] == pytest.approx(frag[0] / frag[1], abs=1e-3)
    # Bland-Altman limits of agreement from the per-patient errors of clinical.csv, and the pictures
    import csv

    import matplotlib.image

    rows = list(csv.DictReader((out / "clinical.csv").open()))
    errors = np.array([float(r["error LVM (g)"]) for r in rows])
    assert len(rows) == 10 and errors.std() > 0
    lo, hi = summary["clinical"]["all"]["LVM (g) LoA"]
    sd = errors.std(ddof=1)  # clinical.csv has three decimals
    assert (lo, hi) == pytest.approx((errors.mean() - 1.96 * sd, errors.mean() + 1.96 * sd), abs=0.01)
    assert f"{lo:+.2f} to {hi:+.2f}" in (out / "table.md").read_text()
    # the intervals: means over patients are the MAE and the bias; a bootstrap interval about as wide as t's
    mae, bias = summary["intervals"]["abs error LVM (g)"], summary["intervals"]["error LVM (g)"]
    assert mae["patients"] == bias["patients"] == 10
    assert mae["mean"] == pytest.approx(summary["clinical"]["all"]["LVM (g) MAE"], abs=1e-3)
    assert bias["mean"] == pytest.approx(errors.mean(), abs=1e-3)
    t_half = 2.262 * sd / np.sqrt(10)  # t(0.975, 9)
    assert bias["low"] < bias["mean"] < bias["high"] and 0.6 < (bias["high"] - bias["low"]) / (2 * t_half) < 1.2
    assert f"| error LVM (g) | 10 | {bias['mean']:.2f} | {bias['low']:.2f} to {bias['high']:.2f} |" in (
        out / "table.md").read_text()
    for picture in ("bland_altman.png", "dice_by_level.png"):
        assert matplotlib.image.imread(out / picture).shape[0] > 200


def test_fast_selection_dice_equals_the_protocol_implementation(acdc_val):
    from cmrseg.data.io import load_labelled_dataset
    from cmrseg.evaluation.evaluate import EvalVolume, evaluate_volumes
    from cmrseg.measures.metrics import level_dice_fast

    rng = np.random.default_rng(1)
    vols = load_labelled_dataset(acdc_val)[:8]
    pairs = [(_perturb(v.label, rng), v.label) for v in vols]
    _, summary = evaluate_volumes([EvalVolume(v.name, p, g) for v, (p, g) in zip(vols, pairs)], with_hd95=False)
    fast = level_dice_fast(pairs)
    for lv, row in summary["levels"].items():
        for c, v in row.items():
            assert fast[lv][c] == pytest.approx(v, abs=1e-6), (lv, c)  # MONAI computes in float32
