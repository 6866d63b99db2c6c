"""``cmrseg evaluate`` checks ``cmrseg segment``'s quality control against the truth: each flag
lands on the slice it names (the mask file's k, also when the reader reverses the slices), and
the counts, verdicts and uncertainty shares come out as built."""

import json
import subprocess
import sys

import numpy as np

from cmrseg.data.io.nifti import write_nifti_image
from cmrseg.data.orientation import APEX_DIRECTION_RAS
from cmrseg.evaluation.evaluate import evaluate_folders, paired_volumes
from cmrseg.evaluation.quality_check import slice_dice
from cmrseg.labels import LV, MYO, RV


def _heart(n=48, r_lv=6.0):
    yy, xx = np.mgrid[0:n, 0:n]
    sl = np.zeros((n, n), np.uint8)
    sl[np.hypot(yy - 24, xx - 13) < 6] = RV
    sl[np.hypot(yy - 24, xx - 28) < r_lv + 4] = MYO
    sl[np.hypot(yy - 24, xx - 28) < r_lv] = LV
    return sl


def _oblique_affine():
    """Slices stepping from apex to base (the reader reverses them), 1.5 mm pixels, 8 mm slices."""
    z = -APEX_DIRECTION_RAS
    x = np.cross(z, [0.0, 0.0, 1.0])
    x /= np.linalg.norm(x)
    y = np.cross(z, x)
    affine = np.eye(4)
    affine[:3, :3] = np.stack([1.5 * x, 1.5 * y, 8.0 * z], axis=1)
    return affine


def test_flags_are_checked_on_the_slice_they_name(tmp_path):
    truth = np.stack([_heart(r_lv=r) for r in (8, 7, 6, 5, 4)] + [np.zeros((48, 48), np.uint8)])  # file order
    pred = truth.copy()
    pred[1][pred[1] == LV] = MYO  # file k=1: the cavity missed, a bad slice
    gt_dir, pred_dir = tmp_path / "gt", tmp_path / "pred"
    affine = _oblique_affine()
    write_nifti_image(truth, affine, gt_dir.mkdir() or gt_dir / "case.nii.gz")
    write_nifti_image(pred, affine, pred_dir.mkdir() or pred_dir / "case.nii.gz")
    flags = [{"frame": "frame 1", "slice": 1, "flag": "uncertain_slice", "detail": ""},
             {"frame": "frame 1", "slice": 3, "flag": "classifier_mask_disagree", "detail": ""},
             {"frame": "", "slice": None, "flag": "outside_normal_range", "detail": ""}]
    record = {"status": "ok", "qc": "review", "uncertainty": 0.25, "outputs": ["case.nii.gz"],
              "output_frames": {"case.nii.gz": ["frame 1"]}, "qc_frames": ["frame 1"], "flags": flags}
    (pred_dir / "summary.json").write_text(json.dumps({"studies": {"case": record}}))

    (case,) = paired_volumes(pred_dir, gt_dir)
    assert case.source == ("case.nii.gz", 0, True)  # read apex -> base reversed: file k=1 is index 4
    assert slice_dice(case.pred[4], case.gt[4]) < 0.7 and slice_dice(case.pred[1], case.gt[1]) == 1.0
    qc = evaluate_folders(pred_dir, gt_dir, tmp_path / "report", progress=False)["quality_control"]
    assert qc["flags"] == {"classifier_mask_disagree": {"slices": 1, "bad": 0},
                           "uncertain_slice": {"slices": 1, "bad": 1}}
    assert (qc["slices"], qc["bad_slices"], qc["bad_slices_flagged"]) == (5, 1, 1)
    assert list(qc["verdicts"]) == ["review"] and qc["verdicts"]["review"]["studies"] == 1
    wrong, area = int((pred != truth).sum()), int((pred > 0).sum())
    assert qc["uncertainty"] == {"studies": 1, "expected": 0.25, "actual": wrong / area}
    table = (tmp_path / "report" / "table.md").read_text()
    assert "| uncertain_slice | 1 | 1 |" in table and "Bad slices any flag names: 1 of 1" in table
    res = subprocess.run([sys.executable, "-m", "cmrseg", "evaluate", "--pred", str(pred_dir), "--gt", str(gt_dir),
                          "-o", str(tmp_path / "report2")], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-2000:]
    assert ("quality control: 1 of 1 bad slices (Dice < 0.7) flagged; classifier_mask_disagree 0 of 1 on bad "
            "slices, uncertain_slice 1 of 1 on bad slices") in res.stdout


def test_a_folder_without_segment_records_has_no_quality_section(tmp_path):
    truth = np.stack([_heart(r_lv=r) for r in (8, 7, 6, 5)])
    for d in ("gt", "pred"):
        (tmp_path / d).mkdir()
        write_nifti_image(truth, np.diag([1.5, 1.5, 8.0, 1.0]), tmp_path / d / "case.nii.gz")
    summary = evaluate_folders(tmp_path / "pred", tmp_path / "gt", tmp_path / "report", progress=False)
    assert "quality_control" not in summary
    assert "Quality control against the truth" not in (tmp_path / "report" / "table.md").read_text()
