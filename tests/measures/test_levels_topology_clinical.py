import numpy as np
import pytest

from cmrseg.measures.clinical import cardiac_measures, structure_volumes_ml
from cmrseg.measures.levels import level_indices, slice_levels
from cmrseg.measures.topology import topology_counts


def _stack(heart_slices, above=0, below=0):
    s = above + heart_slices + below
    gt = np.zeros((s, 8, 8), np.uint8)
    gt[above:above + heart_slices, 2:5, 2:5] = 3
    return gt


def test_ten_heart_slices_split_4_3_3():
    levels = slice_levels(_stack(10))
    assert levels == ["base"] * 4 + ["mid"] * 3 + ["apex"] * 3


def test_slices_outside_the_heart_join_base_and_apex():
    levels = slice_levels(_stack(7, above=2, below=1))
    assert levels[:2] == ["base", "base"] and levels[-1] == "apex"
    idx = level_indices(_stack(7, above=2, below=1))
    assert idx["base"].tolist() == [0, 1, 2, 3, 4] and idx["mid"].tolist() == [5, 6] and idx["apex"].tolist() == [7, 8, 9]


def test_no_heart_gives_no_level():
    assert slice_levels(np.zeros((3, 4, 4), np.uint8)) == [None] * 3


def test_fragments_and_holes():
    pred = np.zeros((3, 20, 20), np.uint8)
    pred[0, 2:5, 2:5] = 1
    pred[0, 10:12, 10:12] = 1  # RV in two pieces
    pred[1, 5:15, 5:15] = 2
    pred[1, 8:12, 8:12] = 3  # a proper ring: no hole
    pred[2, 5:15, 5:15] = 3
    pred[2, 9, 9] = 0  # hole in the LV cavity
    pred[0, 15, 15] = 2
    pred[0, 16, 16] = 2  # diagonal neighbours: one 8-connected component
    t = topology_counts(pred)
    assert (t.fragmented_pairs, t.predicted_pairs) == (1, 5)
    assert (t.slices_with_holes, t.slices_with_lv_or_myo) == (1, 3)
    assert t.fragment_rate == pytest.approx(0.2) and t.hole_rate == pytest.approx(1 / 3)


def test_gap_between_myo_and_cavity_is_a_hole_of_the_union():
    pred = np.zeros((1, 20, 20), np.uint8)
    pred[0, 4:16, 4:16] = 2
    pred[0, 6:14, 6:14] = 0
    pred[0, 8:12, 8:12] = 3
    assert topology_counts(pred).slices_with_holes == 1


def test_clinical_measures():
    ed = np.zeros((2, 10, 10), np.uint8)
    ed[:, :5, :5] = 3  # 50 voxels
    ed[:, 5:, 5:] = 1  # 50 voxels
    ed[:, 5:, :2] = 2  # 20 voxels
    es = ed.copy()
    es[:, :5, :2] = 0  # LV 30 voxels
    v_ed = structure_volumes_ml(ed, 2.0)
    v_es = structure_volumes_ml(es, 2.0)
    m = cardiac_measures(v_ed, v_es)
    assert m["LVEDV (mL)"] == 100 and m["LVESV (mL)"] == 60 and m["LVEF (%)"] == pytest.approx(40)
    assert m["LVM (g)"] == pytest.approx(20 * 2 * 1.05) and m["RVEF (%)"] == 0


def test_volume_error_by_level_puts_each_error_on_its_level(tmp_path):
    from cmrseg.evaluation.evaluate import EvalVolume, evaluate_volumes, write_report

    gt = np.zeros((6, 20, 20), np.uint8)
    gt[:, 2:8, 2:8] = 1  # RV
    gt[:, 8:16, 8:16] = 2  # MYO
    gt[:, 10:14, 10:14] = 3  # LV
    ed = gt.copy()
    ed[0, 0:2, 0:5] = 1  # +10 RV pixels on the most basal slice
    ed[5, 8, 8:12] = 0  # -4 MYO pixels on the most apical slice
    es = gt.copy()
    es[2, 10:12, 10:12] = 2  # mid: 4 LV pixels become MYO
    spacing = (2.0, 2.0, 5.0)  # 0.02 mL per voxel
    meta = {"patient": "p1"}
    cases = [EvalVolume("p1_ED", ed, gt, spacing, {**meta, "phase": "ED"}),
             EvalVolume("p1_ES", es, gt, spacing, {**meta, "phase": "ES"})]
    results, summary = evaluate_volumes(cases, with_hd95=False)
    by = summary["volume_error_by_level"]
    assert by["ED"]["RV"] == pytest.approx({"base": 0.2, "mid": 0.0, "apex": 0.0, "all": 0.2})
    assert by["ED"]["MYO"] == pytest.approx({"base": 0.0, "mid": 0.0, "apex": -0.08, "all": -0.08})
    assert by["ES"]["MYO"]["mid"] == pytest.approx(0.08) and by["ES"]["LV"]["mid"] == pytest.approx(-0.08)
    # "all" is the volume bias cmrseg evaluate reports for the clinical measures
    assert by["ED"]["LV"]["all"] == pytest.approx(summary["clinical"]["all"]["LVEDV (mL) bias"])
    assert by["ES"]["LV"]["all"] == pytest.approx(summary["clinical"]["all"]["LVESV (mL) bias"])
    write_report(tmp_path, results, summary)
    table = (tmp_path / "table.md").read_text()
    assert "Signed volume error by slice level" in table and "| ED | RV | +0.20 | +0.00 | +0.00 | +0.20 |" in table


def test_limits_of_agreement_are_the_bias_and_1_96_sample_sds():
    from cmrseg.evaluation.figures import limits_of_agreement

    assert limits_of_agreement([1.0, 3.0, 5.0]) == pytest.approx((3.0, 3.0 - 1.96 * 2.0, 3.0 + 1.96 * 2.0))
    bias, lo, hi = limits_of_agreement([2.0, float("nan")])
    assert bias == 2.0 and np.isnan(lo) and np.isnan(hi)
