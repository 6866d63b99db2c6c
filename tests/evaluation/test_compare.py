"""``cmrseg compare``: paired differences between evaluations of the same patients, checked
against statistics written out here from their definitions, and end to end on real ACDC
masks through ``cmrseg evaluate``."""

import csv
import itertools
import json
import shutil
import subprocess
import sys

import h5py
import numpy as np
import pytest
from scipy import ndimage, stats

from cmrseg.evaluation.compare import (
    Evaluation,
    bootstrap_ci,
    compare_evaluations,
    compare_pair,
    per_patient,
    wilcoxon_p,
)


def _exact_signed_rank_p(d):
    """Two-sided exact Wilcoxon signed-rank p by enumerating every sign pattern (no ties)."""
    ranks = stats.rankdata(np.abs(d))
    observed = ranks[d > 0].sum()
    null = np.array([sum(r for r, s in zip(ranks, signs) if s) for signs in itertools.product((0, 1), repeat=len(d))])
    return min(1.0, 2 * min((null <= observed).mean(), (null >= observed).mean()))


def test_wilcoxon_p_is_the_exact_signed_rank_test():
    rng = np.random.default_rng(3)
    for shift in (0.0, 0.3, 1.0):
        d = rng.normal(shift, 1.0, size=9)
        assert wilcoxon_p(d) == pytest.approx(_exact_signed_rank_p(d), rel=1e-9), shift
    assert wilcoxon_p(np.zeros(6)) == 1.0  # no difference at all
    assert wilcoxon_p(np.full(8, 0.01)) == pytest.approx(2 / 2 ** 8)  # every patient better: the smallest p


def test_bootstrap_interval_of_the_mean_difference():
    rng = np.random.default_rng(4)
    d = rng.normal(0.02, 0.01, size=60)
    low, high = bootstrap_ci(d)
    half = stats.t.ppf(0.975, d.size - 1) * d.std(ddof=1) / np.sqrt(d.size)  # the t interval, for scale
    assert low < d.mean() < high
    assert low == pytest.approx(d.mean() - half, abs=0.25 * half) and high == pytest.approx(d.mean() + half, abs=0.25 * half)
    assert bootstrap_ci(d) == (low, high)  # seeded: the same reports give the same interval
    assert bootstrap_ci(np.full(5, 0.3)) == (0.3, 0.3)
    assert all(np.isnan(bootstrap_ci(np.array([0.1]))))


def test_patients_are_the_unit_and_levels_average_the_classes_they_scored():
    base = {f"{lv} {c} Dice": "0.8" for lv in ("base", "mid", "apex", "volume") for c in ("RV", "MYO", "LV")}
    rows = [{"volume": "p1_ED", "patient": "p1", **base, "apex RV Dice": ""},  # RV absent at the apex: skipped
            {"volume": "p1_ES", "patient": "p1", **base, "apex RV Dice": "0.2", "RV HD95": "4.0"},
            {"volume": "x9", "patient": "", **base}]
    clinical = [{"patient": "p1", "error LVEF (%)": "-3.0", "error LVM (g)": "2.5"}]
    got = per_patient(rows, clinical)
    assert set(got) == {"p1", "x9"}  # a volume without a patient is its own unit
    assert got["p1"]["apex Dice"] == pytest.approx((0.8 + (0.2 + 0.8 + 0.8) / 3) / 2)
    assert got["p1"]["volume Dice"] == pytest.approx(0.8) and got["p1"]["RV HD95"] == pytest.approx(4.0)
    assert got["p1"]["error LVEF (%)"] == -3.0 and got["p1"]["abs error LVEF (%)"] == 3.0
    assert np.isnan(got["p1"]["abs error RVEF (%)"])  # not in the clinical row: not scored


def test_verdicts_follow_the_direction_that_is_better():
    rng = np.random.default_rng(5)
    patients = [f"p{i}" for i in range(10)]
    ref = Evaluation("ref", {p: {"volume Dice": 0.9 + 0.01 * rng.random(), "abs error LVM (g)": 5 + rng.random(),
                                 "error LVM (g)": rng.normal()} for p in patients})
    better = Evaluation("better", {p: {"volume Dice": v["volume Dice"] + 0.01 + 0.002 * rng.random(),
                                       "abs error LVM (g)": v["abs error LVM (g)"] - 1 - rng.random(),
                                       "error LVM (g)": v["error LVM (g)"] + 2 + rng.random()}
                                   for p, v in ref.values.items()})
    rows = {r["metric"]: r for r in compare_pair(ref, better)}
    assert rows["volume Dice"]["verdict"] == "better" and rows["abs error LVM (g)"]["verdict"] == "better"
    assert rows["error LVM (g)"]["verdict"] == "higher"  # a signed error: which way it moved, not better or worse
    assert rows["volume Dice"]["ci low"] > 0 and rows["abs error LVM (g)"]["ci high"] < 0
    rows = {r["metric"]: r for r in compare_pair(better, ref)}
    assert rows["volume Dice"]["verdict"] == "worse" and rows["abs error LVM (g)"]["verdict"] == "worse"
    same = Evaluation("same", ref.values)
    assert {r["verdict"] for r in compare_pair(ref, same)} == {"not shown"}
    # patients missing from one evaluation are left out of every comparison, and said to be
    short = Evaluation("short", {p: v for p, v in better.values.items() if p != "p0"})
    result = compare_evaluations([ref, better, short])
    assert result["patients"] == 9 and result["left_out"] == {"ref": ["p0"], "better": ["p0"]}


def _thin_myocardium(label):
    """The truth with its myocardium one pixel thinner on the cavity side (given to the cavity)."""
    out = label.copy()
    for s in range(label.shape[0]):
        cavity = ndimage.binary_dilation(label[s] == 3) & (label[s] == 2)
        out[s][cavity] = 3
    return out


@pytest.mark.slow
def test_cmrseg_compare_end_to_end_on_real_masks(acdc_val, tmp_path):
    patients = sorted({f.name.split("_")[0] for f in acdc_val.glob("*.h5")})[:8]
    gt, thin = tmp_path / "gt", tmp_path / "thin"
    for folder in (gt, thin):
        folder.mkdir()
        for name in ("metadata.csv", "manifest.json"):
            shutil.copy(acdc_val / name, folder / name)
    for f in sorted(acdc_val.glob("*.h5")):
        if f.name.split("_")[0] in patients:
            shutil.copy(f, gt / f.name)
            with h5py.File(f) as src, h5py.File(thin / f.name, "w") as dst:
                dst["label"] = _thin_myocardium(src["label"][()])
    for pred, rep in ((gt, "R_truth"), (thin, "R_thin")):
        res = subprocess.run([sys.executable, "-m", "cmrseg", "evaluate", "--pred", str(pred), "--gt", str(gt), "-o",
                              str(tmp_path / rep)], capture_output=True, text=True)
        assert res.returncode == 0, res.stderr[-2000:]
    out = tmp_path / "cmp"
    res = subprocess.run([sys.executable, "-m", "cmrseg", "compare", str(tmp_path / "R_thin"), str(tmp_path / "R_truth"),
                          "-o", str(out), "--names", "thin", "truth"], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-2000:]
    rows = {r["metric"]: r for r in csv.DictReader((out / "compare.csv").open())}
    assert all(r["patients"] == "8" for r in rows.values())
    # the truth beats the thinned myocardium on it, on the whole volume and on LV mass, for every patient
    for metric in ("volume MYO Dice", "volume Dice", "mid Dice", "abs error LVM (g)", "abs error ED wall (mm)",
                   "abs error ES wall (mm)"):
        assert rows[metric]["verdict"] == "better", rows[metric]
        assert float(rows[metric]["p"]) == pytest.approx(2 / 2 ** 8)
    assert rows["error LVM (g)"]["verdict"] == "higher"  # the thinned wall weighed less
    assert rows["error ED wall (mm)"]["verdict"] == "higher" and float(rows["error ED wall (mm)"]["reference mean"]) < 0
    assert float(rows["volume RV Dice"]["difference"]) == 0 and rows["volume RV Dice"]["verdict"] == "not shown"
    # the means are the evaluations' own per-patient values: LV mass from clinical.csv
    clinical = list(csv.DictReader((tmp_path / "R_thin" / "clinical.csv").open()))
    mean_abs = np.mean([abs(float(r["error LVM (g)"])) for r in clinical])
    assert float(rows["abs error LVM (g)"]["reference mean"]) == pytest.approx(mean_abs, abs=1e-3)
    md = (out / "compare.md").read_text()
    assert "## truth" in md and "| volume Dice | higher |" in res.stdout
    table = [line for line in md.splitlines() if line.startswith("|")]
    assert len(table) == 2 + len(rows) and len({line.count("|") for line in table}) == 1  # every row has its 8 cells
    assert json.loads((out / "compare.json").read_text())["reference"] == "thin"
    import matplotlib.image

    assert matplotlib.image.imread(out / "compare.png").shape[0] > 200
    # one clear line when a folder is not a report, or the names do not fit
    res = subprocess.run([sys.executable, "-m", "cmrseg", "compare", str(gt), str(tmp_path / "R_truth"), "-o",
                          str(tmp_path / "x")], capture_output=True, text=True)
    assert res.returncode == 2 and "per_volume.csv" in res.stderr and len(res.stderr.strip().splitlines()) == 1
    res = subprocess.run([sys.executable, "-m", "cmrseg", "compare", str(tmp_path / "R_thin"), str(tmp_path / "R_truth"),
                          "-o", str(tmp_path / "y"), "--names", "a"], capture_output=True, text=True)
    assert res.returncode == 2 and "--names" in res.stderr and not (tmp_path / "y").exists()
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "per_volume.csv").write_text("case,dice\na,0.9\n")  # some other tool's table
    res = subprocess.run([sys.executable, "-m", "cmrseg", "compare", str(bad), str(tmp_path / "R_truth"), "-o",
                          str(tmp_path / "z")], capture_output=True, text=True)
    assert res.returncode == 2 and len(res.stderr.strip().splitlines()) == 1, res.stderr
    assert "per_volume.csv: no 'volume' column" in res.stderr and not (tmp_path / "z").exists()
