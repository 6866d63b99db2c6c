"""The AHA segments of ``cmrseg segment`` (issue 37): oriented by the geometry the readers give
(NIfTI and DICOM, however the pixels are stored), written as aha.csv, aha_slices.csv, a
bull's-eye picture and measures.csv's maximal wall, and scored against the truth by
``cmrseg evaluate``."""

import csv
import io
import json

import numpy as np
import pytest

from cmrseg.data.io.dicom import write_dicom_series
from cmrseg.data.io.discovery import discover, load_study
from cmrseg.data.io.nifti import write_nifti_image
from cmrseg.data.phantom import regional_heart
from cmrseg.evaluation.aha_agreement import aha_agreement, aha_table, segment_pairs
from cmrseg.inference.report import aha_csv, aha_slices_csv, measures_csv, rebuild_reports
from cmrseg.inference.segment import study_measures

SEPTAL = {2, 3, 8, 9, 14}
THIN = {5, 11, 16}


def _stored(mask: np.ndarray, affine: np.ndarray, how: str) -> tuple[np.ndarray, np.ndarray]:
    """The cine ``[T, S, H, W]`` stored with rows reversed or rows and columns swapped, its
    affine changed to keep every voxel in place."""
    affine = affine.copy()
    if how == "flip_rows":
        affine[:, 3] += affine[:, 1] * (mask.shape[-2] - 1)
        affine[:, 1] *= -1
        return mask[..., ::-1, :], affine
    if how == "transpose":
        affine[:, [0, 1]] = affine[:, [1, 0]]
        return np.swapaxes(mask, -1, -2), affine
    if how == "oblique":  # a double-oblique short-axis stack: the plane tilted 30 degrees about the
        # anterior-posterior axis, then 20 about the left-right one (the heart's axis as planned)
        a, b = np.radians(30.0), np.radians(20.0)
        about_ap = np.array([[np.cos(a), 0, np.sin(a)], [0, 1, 0], [-np.sin(a), 0, np.cos(a)]])
        about_lr = np.array([[1, 0, 0], [0, np.cos(b), -np.sin(b)], [0, np.sin(b), np.cos(b)]])
        affine[:3] = about_lr @ about_ap @ affine[:3]
        return mask, affine
    return mask, affine


@pytest.mark.parametrize("fmt, how", [("nifti", "as_is"), ("nifti", "flip_rows"), ("nifti", "transpose"),
                                      ("nifti", "oblique"), ("dicom", "as_is"), ("dicom", "transpose"),
                                      ("dicom", "oblique")])
def test_segments_follow_the_patient_through_the_readers(tmp_path, fmt, how):
    ed, affine = regional_heart(size=120, pixel_mm=1.6)
    es, _ = regional_heart(size=120, pixel_mm=1.6, thickening=0.4)
    cine, affine = _stored(np.stack([ed, es]).astype(np.float32), affine, how)
    if fmt == "nifti":
        write_nifti_image(cine, affine, tmp_path / "cine.nii.gz")
    else:
        write_dicom_series(cine, affine, tmp_path / "cine")
    sources, _ = discover([tmp_path])
    study = load_study(sources[0])
    masks = [np.rint(v.image).astype(np.uint8) for v in study.frames]  # the labels stored as the image
    study.ed, study.es = 0, 1
    aha = study_measures(study, masks)["aha"]
    assert aha["orientation"] == "anterior from the image geometry"
    ed_wall = {n: r["ED (mm)"] for n, r in aha["segments"].items() if r["ED (mm)"] is not None}
    assert set(ed_wall) == set(range(1, 17))
    assert sorted(ed_wall, key=ed_wall.get)[-5:] and set(sorted(ed_wall, key=ed_wall.get)[-5:]) == SEPTAL, how
    assert set(sorted(ed_wall, key=ed_wall.get)[:3]) == THIN, how
    assert all(r["thickening (%)"] == pytest.approx(40.0, abs=8.0) for n, r in aha["segments"].items() if n != 17)
    assert study_measures(study, masks)["measures"]["max ED wall (mm)"] == pytest.approx(max(ed_wall.values()))


def test_a_single_frame_gives_its_wall_and_no_thickening(tmp_path):
    """One frame (a single ED volume): each segment's ED wall, nothing invented for ES."""
    ed, affine = regional_heart(size=120, pixel_mm=1.6)
    write_nifti_image(ed.astype(np.float32), affine, tmp_path / "ed.nii.gz")
    sources, _ = discover([tmp_path])
    study = load_study(sources[0])
    assert len(study.frames) == 1
    aha = study_measures(study, [np.rint(study.frames[0].image).astype(np.uint8)])["aha"]
    walls = {n: r["ED (mm)"] for n, r in aha["segments"].items() if n != 17}
    assert set(walls) == set(range(1, 17)) and all(w is not None and w > 0 for w in walls.values())
    assert set(sorted(walls, key=walls.get)[-5:]) == SEPTAL and set(sorted(walls, key=walls.get)[:3]) == THIN
    assert all(r.get("ES (mm)") is None and r.get("thickening (%)") is None for r in aha["segments"].values())


def _record(name: str, aha: dict | None) -> dict:
    return {"study": name, "status": "ok", "qc": "ok", "frames": 2, "ed_frame": 1, "es_frame": 2, "ed_es_source": "x",
            "measures": {"LVEF (%)": 60.0, "max ED wall (mm)": aha["max ED wall (mm)"] if aha else float("nan")},
            "flags": [], "aha": aha, "outputs": [], "lv_voxels": [0, 0]}


def test_the_tables_carry_every_segment_and_leave_the_unmeasured_empty(tmp_path):
    ed, affine = regional_heart()
    es, _ = regional_heart(thickening=0.4)
    from cmrseg.measures.aha import aha_analysis

    aha = json.loads(json.dumps(aha_analysis(ed, es, (1.5, 1.5), affine)))  # as read back from a record
    cases = [_record("a", aha), _record("b", None), {"study": "c", "status": "failed", "error": "x"}]
    rows = list(csv.DictReader(io.StringIO(aha_csv(cases))))
    assert [r["segment"] for r in rows] == [str(n) for n in range(1, 18)] and {r["study"] for r in rows} == {"a"}
    cap = rows[16]
    assert cap["present"] == "yes" and cap["ED wall (mm)"] == "" and cap["thickening (%)"] == ""  # never a zero
    assert float(rows[1]["ED wall (mm)"]) > float(rows[4]["ED wall (mm)"])  # septum thicker than the infarct
    slices = list(csv.DictReader(io.StringIO(aha_slices_csv(cases))))
    assert {r["phase"] for r in slices} == {"ED", "ES"} and all(r["slice k"].isdigit() for r in slices)
    m = list(csv.DictReader(io.StringIO(measures_csv(cases))))
    assert m[0]["max ED wall (mm)"] == f"{aha['max ED wall (mm)']:.2f}"
    assert m[0]["max ED wall segment"].startswith(str(aha["max ED wall segment"]) + " (")
    assert m[1]["max ED wall (mm)"] == "" and m[1]["max ED wall segment"] == ""
    (tmp_path / "studies").mkdir()
    for c in cases:
        (tmp_path / "studies" / f"{c['study']}.json").write_text(json.dumps(c))
    summary = rebuild_reports(tmp_path, {"shard": "1/1", "model": "x"})
    assert "slices" not in summary["studies"]["a"]["aha"] and summary["studies"]["a"]["aha"]["segments"]
    assert list(csv.reader(open(tmp_path / "aha.csv"))) == list(csv.reader(io.StringIO(aha_csv(cases))))
    assert "AHA segments: maximal ED wall" in (tmp_path / "report.html").read_text()


def test_evaluate_scores_each_segment_against_the_truth():
    ed, _ = regional_heart()
    thicker = regional_heart(thickening=0.1)[0]

    class Result:
        def __init__(self, pred, phase):
            self.aha_mm, self.meta = segment_pairs(pred, ed, (1.5, 1.5)), {"phase": phase}

    same = aha_agreement([Result(ed, "ED"), Result(ed, "ED")])["ED"]
    assert same["all"]["bias mm"] == 0.0 and same["all"]["n"] == 32 and same["1"]["n"] == 2
    off = aha_agreement([Result(thicker, "ED")])["ED"]
    assert 0.5 < off["all"]["bias mm"] < 1.2  # 10 % thicker walls of about 9 mm
    assert off["2"]["bias mm"] > off["5"]["bias mm"]  # the thick septum gains more than the thin wall
    lines = aha_table({"ED": same})
    assert any(line.startswith("| 2 basal anteroseptal | 2 |") for line in lines)


def test_a_rerun_replaces_the_pictures_it_wrote_the_bullseye_too(tmp_path):
    """A study's pictures, the AHA bull's-eye among them, are the run's own: a rerun into the
    folder (resuming, or ``--overwrite``) replaces them instead of refusing them as a user's files
    (the bull's-eye was missing from the files a record owns)."""
    from cmrseg.inference.output_folder import FIGURE_KEYS, owned_files, record_file
    from cmrseg.inference.study_outputs import StudyWriter

    ed, affine = regional_heart(size=120, pixel_mm=1.6)
    es, _ = regional_heart(size=120, pixel_mm=1.6, thickening=0.4)
    write_nifti_image(np.stack([ed, es]).astype(np.float32), affine, tmp_path / "in" / "cine.nii.gz")
    study = load_study(discover([tmp_path / "in"])[0][0])
    masks = [np.rint(v.image).astype(np.uint8) for v in study.frames]
    study.ed, study.es = 0, 1
    meas = {**study_measures(study, masks), "ed": 0, "es": 1}
    out = tmp_path / "out"
    figures = StudyWriter(out, out, owned=set(), taken=set()).figures(study, masks, meas, [])
    assert set(figures) == set(FIGURE_KEYS) and figures["bullseye"].is_file()
    record = {"study": study.name, "outputs": [],
              **{k: str(p.relative_to(out)) if p else None for k, p in figures.items()}}
    record_file(out, study.name).parent.mkdir()
    record_file(out, study.name).write_text(json.dumps(record))
    owned = owned_files(out)
    assert figures["bullseye"].resolve() in owned
    again = StudyWriter(out, out, owned=owned, taken=set()).figures(study, masks, meas, [])
    assert again["bullseye"] == figures["bullseye"]
