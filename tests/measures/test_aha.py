"""The AHA 17-segment analysis (issue 37) on a phantom whose wall thickness is known at every
angle: each segment's thickness within 0.5 mm, its number right whatever way the image is
turned or mirrored, RV insertion points carried to slices without RV, thickening, and what is
absent reported as absent."""

import numpy as np
import pytest

from cmrseg.data.phantom import regional_heart, regional_wall
from cmrseg.labels import RV
from cmrseg.measures.aha import SEGMENT_NAMES, aha_analysis, segment_of, slice_rings

RAYS = np.arange(120) * 3.0
#: each segment's display angles on the phantom (anterior up, septum left, viewed from the apex),
#: written out by hand from the AHA figure rather than from the code under test
SECTORS = {1: (60, 120), 2: (120, 180), 3: (180, 240), 4: (240, 300), 5: (300, 360), 6: (0, 60),
           13: (45, 135), 14: (135, 225), 15: (225, 315), 16: (315, 45)}


def _truth(n: int, thickening: float = 0.0) -> float:
    lo, hi = SECTORS[n if n < 7 or n > 12 else n - 6]
    angles = RAYS[((RAYS - lo) % 360) < ((hi - lo) % 360 or 360)]
    return float(regional_wall(angles, thickening).mean())


def _moved(mask: np.ndarray, affine: np.ndarray, op: str) -> tuple[np.ndarray, np.ndarray]:
    """The same heart stored another way: rows or columns reversed, or the two swapped, with the
    affine changed so that every voxel keeps its place in the patient."""
    affine = affine.copy()
    if op == "flip_rows":
        affine[:, 3] += affine[:, 1] * (mask.shape[1] - 1)
        affine[:, 1] *= -1
        return mask[:, ::-1], affine
    if op == "flip_cols":
        affine[:, 3] += affine[:, 0] * (mask.shape[2] - 1)
        affine[:, 0] *= -1
        return mask[:, :, ::-1], affine
    if op == "transpose":
        affine[:, [0, 1]] = affine[:, [1, 0]]
        return mask.transpose(0, 2, 1), affine
    raise ValueError(op)


@pytest.mark.parametrize("ops", [(), ("flip_rows",), ("flip_cols",), ("transpose",), ("transpose", "flip_rows"),
                                 ("flip_rows", "flip_cols")])
def test_each_segment_has_the_phantoms_thickness_and_its_number_whatever_the_storage(ops):
    ed, affine = regional_heart(pixel_mm=1.5)
    es, _ = regional_heart(pixel_mm=1.5, thickening=0.4)
    es_affine = affine
    for op in ops:
        ed, affine = _moved(ed, affine, op)
        es, es_affine = _moved(es, es_affine, op)
    result = aha_analysis(ed, es, (1.5, 1.5), affine)
    assert result["orientation"] == "anterior from the image geometry" and result["notes"] == []
    for n in range(1, 17):
        row = result["segments"][n]
        assert row["name"] == SEGMENT_NAMES[n]
        assert row["ED (mm)"] == pytest.approx(_truth(n), abs=0.5), (n, ops)
        assert row["ES (mm)"] == pytest.approx(_truth(n, 0.4), abs=0.5), (n, ops)
        assert row["thickening (mm)"] == pytest.approx(row["ES (mm)"] - row["ED (mm)"])
        assert row["thickening (%)"] == pytest.approx(40.0, abs=6.0)
    # the thick septum and the thin inferolateral wall where the AHA model puts them
    assert result["max ED wall segment"] in (2, 3, 8, 9, 14)
    assert min(range(1, 17), key=lambda n: result["segments"][n]["ED (mm)"]) in (5, 11, 16)
    # the apical cap is there, without a radial thickness: absent data, never a zero
    assert result["segments"][17]["present"] and result["segments"][17]["ED (mm)"] is None


def test_without_a_geometry_the_slices_are_read_as_the_standard_view_and_it_says_so():
    ed, _ = regional_heart()
    result = aha_analysis(ed, None, (1.5, 1.5), None)
    assert result["orientation"].startswith("no image geometry")
    assert result["segments"][2]["ED (mm)"] == pytest.approx(_truth(2), abs=0.5)
    assert result["segments"][2]["ES (mm)"] is None and "thickening (mm)" not in result["segments"][2]
    # mirrored with no geometry to say so, anterior and inferior swap: the stated assumption
    mirrored = aha_analysis(ed[:, ::-1], None, (1.5, 1.5), None)
    assert mirrored["segments"][1]["ED (mm)"] == pytest.approx(_truth(4), abs=0.5)


def test_slices_without_rv_take_the_nearest_insertion_points_and_no_rv_at_all_numbers_nothing():
    ed, affine = regional_heart()
    rings = slice_rings(ed)
    # ten cavity slices in thirds along the long axis (4, 3, 3), then the cap, then nothing
    assert rings == ["basal"] * 4 + ["mid"] * 3 + ["apical"] * 3 + ["apex", None]
    no_apical_rv = ed.copy()
    for s in range(7, 10):
        no_apical_rv[s][no_apical_rv[s] == RV] = 0
    result = aha_analysis(no_apical_rv, None, (1.5, 1.5), affine)
    carried = [r for r in result["slices"] if r["ring"] == "apical"]
    assert carried and all(r["insertion from slice"] == 6 for r in carried)
    assert result["segments"][14]["ED (mm)"] == pytest.approx(_truth(14), abs=0.5)
    no_rv = ed.copy()
    no_rv[no_rv == RV] = 0
    result = aha_analysis(no_rv, None, (1.5, 1.5), affine)
    assert all(not result["segments"][n]["present"] for n in range(1, 17))
    assert result["notes"] == ["ED: the RV touches the myocardium on no slice, so the segments cannot be numbered"]


def test_segment_of_follows_the_turn_from_anterior_through_the_septum():
    # septum centre at 180 degrees, anterior -> septum -> inferior counterclockwise
    assert segment_of(np.array([150.0, 210.0, 270.0, 90.0, 330.0, 30.0]), "basal", 180.0, 1).tolist() == [2, 3, 4, 1, 5, 6]
    assert segment_of(np.array([150.0, 210.0]), "mid", 180.0, -1).tolist() == [9, 8]  # mirrored: the other way round
    assert segment_of(np.array([180.0, 270.0, 0.0, 90.0]), "apical", 180.0, 1).tolist() == [14, 15, 16, 13]
