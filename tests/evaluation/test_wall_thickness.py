"""cmrseg evaluate's wall-thickness agreement: rings of known thickness, a prediction that keeps,
thins or averages them."""

import numpy as np
import pytest

from cmrseg.evaluation.evaluate import EvalVolume, evaluate_volumes, wall_slope_table, wall_thickness_table
from cmrseg.measures.clinical import mean_wall_mm

PIXEL_MM = 1.5
TRUTH_PX = (4, 6, 8, 10, 12, 14, 16, 8, 12)  # one wall per slice, base -> apex: three levels of three


def _ring_stack(walls_px) -> np.ndarray:
    """``[S, 96, 96]``: an LV cavity of radius 18 px ringed by myocardium ``walls_px[s]`` px thick."""
    yy, xx = np.mgrid[:96, :96]
    r = np.hypot(yy - 47.5, xx - 47.5)
    stack = np.zeros((len(walls_px), 96, 96), np.uint8)
    for s, w in enumerate(walls_px):
        stack[s][r < 18 + w] = 2
        stack[s][r < 18] = 3
    return stack


def _agreement(pred_px, phase="ED"):
    case = EvalVolume("p1_" + phase, _ring_stack(pred_px), _ring_stack(TRUTH_PX), (8.0, PIXEL_MM, PIXEL_MM),
                    {"patient": "p1", "phase": phase})
    _, summary = evaluate_volumes([case], with_hd95=False)
    return summary["wall_thickness"]


def test_a_ring_measures_its_thickness():
    assert mean_wall_mm(_ring_stack([10])[0], PIXEL_MM) == pytest.approx(10 * PIXEL_MM, abs=0.1)


def test_kept_thinned_and_averaged_walls():
    kept = _agreement(TRUTH_PX)["ED"]["all"]
    assert kept["slices"] == 9 and kept["bias mm"] == pytest.approx(0) and kept["slope"] == pytest.approx(1)
    assert kept["truth mm"] == pytest.approx(np.mean(TRUTH_PX) * PIXEL_MM, abs=0.1)
    thinned = _agreement([w - 2 for w in TRUTH_PX])["ED"]["all"]  # every wall 2 px (3 mm) thinner
    assert thinned["bias mm"] == pytest.approx(-2 * PIXEL_MM, abs=0.1) and thinned["slope"] == pytest.approx(1, abs=0.02)
    mean = np.mean(TRUTH_PX)
    averaged = _agreement([round(mean + 0.5 * (w - mean)) for w in TRUTH_PX], phase="ES")  # halfway to the mean
    assert set(averaged) == {"ES"} and set(averaged["ES"]) == {"base", "mid", "apex", "all"}
    row = averaged["ES"]["all"]
    assert row["slope"] == pytest.approx(0.5, abs=0.05) and abs(row["bias mm"]) < 0.3
    assert row["SD prediction mm"] == pytest.approx(0.5 * row["SD truth mm"], rel=0.1)
    assert averaged["ES"]["base"]["slices"] == 3
    table = "\n".join(wall_thickness_table(averaged))
    slopes = wall_slope_table([("halfway", {"wall_thickness": averaged}), ("none", {})])
    assert f"| halfway |  |  | {row['bias mm']:+.2f} | {row['slope']:.2f} |" in slopes and "none" not in slopes
    assert f"| ES | all | 9 | {row['truth mm']:.2f} | {row['prediction mm']:.2f} |" in table


def test_slices_without_a_wall_in_either_mask_are_left_out():
    pred = _ring_stack(TRUTH_PX)
    pred[0][pred[0] == 2] = 0  # the basal slice's myocardium missed
    case = EvalVolume("p1_ED", pred, _ring_stack(TRUTH_PX), (8.0, PIXEL_MM, PIXEL_MM), {"phase": "ED"})
    _, summary = evaluate_volumes([case], with_hd95=False)
    assert summary["wall_thickness"]["ED"]["base"]["slices"] == 2
    _, no_spacing = evaluate_volumes([EvalVolume("p1_ED", pred, pred, None, {"phase": "ED"})], with_hd95=False)
    assert no_spacing["wall_thickness"] == {}


def test_the_report_writes_each_slice_and_the_picture(tmp_path):
    import csv

    import matplotlib.image

    from cmrseg.evaluation.evaluate import write_report

    mean = np.mean(TRUTH_PX)
    cases = [EvalVolume(f"p1_{ph}", _ring_stack([round(mean + 0.5 * (w - mean)) for w in TRUTH_PX]),
                      _ring_stack(TRUTH_PX), (8.0, PIXEL_MM, PIXEL_MM), {"patient": "p1", "phase": ph})
             for ph in ("ED", "ES")]
    results, summary = evaluate_volumes(cases, with_hd95=False)
    write_report(tmp_path, results, summary)
    rows = list(csv.DictReader((tmp_path / "wall_thickness.csv").open()))
    assert len(rows) == 18 and {r["phase"] for r in rows} == {"ED", "ES"}
    first = next(r for r in rows if r["phase"] == "ED" and r["slice"] == "0")
    assert first["level"] == "base" and float(first["truth wall (mm)"]) == pytest.approx(4 * PIXEL_MM, abs=0.1)
    assert matplotlib.image.imread(tmp_path / "wall_thickness.png").shape[0] > 200
    assert "wall_thickness.png" in (tmp_path / "table.md").read_text()
