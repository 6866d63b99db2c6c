"""Label cines (the M&Ms layout: a 4D short-axis cine beside a 4D label map that labels only
ED and ES, in M&Ms values) train and score as the same frames stored one file each."""

import subprocess
import sys

import h5py
import numpy as np
import pytest

from cmrseg.data.io import load_labelled_dataset
from cmrseg.data.io.nifti import write_nifti_image
from cmrseg.errors import InputError
from cmrseg.labels import cine_phases

MNMS = "LV=1,MYO=2,RV=3"


@pytest.fixture(scope="module")
def mnms(phantom_dir, tmp_path_factory, load_script):
    """The phantom's training split (3 patients) in the M&Ms layout: 5 frames, ES at frame 3."""
    out = tmp_path_factory.mktemp("mnms")
    load_script("experiments/mnms_layout.py").write_layout(phantom_dir / "h5" / "train", out, frames=5, es_frame=3)
    return out


def test_a_label_cine_gives_its_labelled_frames_as_the_h5_split_does(phantom_dir, mnms):
    ours = load_labelled_dataset(phantom_dir / "h5" / "train")
    theirs = load_labelled_dataset(mnms, labels=MNMS)
    assert [v.name for v in theirs] == [f"patient00{i}_sa_frame{t:02d}" for i in (1, 2, 3) for t in (1, 3)]
    assert [v.meta["phase"] for v in theirs] == [v.meta["phase"] for v in ours] == ["ED", "ES"] * 3
    for a, b in zip(ours, theirs):
        assert np.array_equal(a.label, b.label) and np.allclose(a.image, b.image)
        assert b.meta["patient"] == a.meta["patient"] + "_sa"


def test_cine_phases_are_told_by_the_lv_cavity():
    lv = [np.full((2, 4, 4), 3) * (np.arange(16).reshape(4, 4) < n) for n in (6, 10, 3)]
    assert cine_phases(lv) == [None, "ED", "ES"]
    assert cine_phases(lv[:1]) == [None]
    assert cine_phases([lv[0], lv[0]]) == [None, None]


def _predictions(phantom_dir, mnms, tmp_path):
    """The same predicted masks (the truth with every slice's first MYO row made LV) as h5
    files beside the h5 truth, and as 4D NIfTI cines named as `cmrseg segment` names them."""
    h5_pred, cine_pred = tmp_path / "pred_h5", tmp_path / "pred_cine"
    h5_pred.mkdir(), cine_pred.mkdir()
    masks = {}
    for vol in load_labelled_dataset(phantom_dir / "h5" / "train"):
        mask = vol.label.copy()
        rows = np.argmax((mask == 2).any(axis=2), axis=1)
        for s, r in enumerate(rows):
            mask[s, r][mask[s, r] == 2] = 3
        with h5py.File(h5_pred / f"{vol.name}.h5", "w") as f:
            f["label"] = mask
        masks.setdefault(vol.meta["patient"], {})[vol.meta["phase"]] = mask
    for patient, m in masks.items():
        cine = np.stack([m["ED"], m["ED"], m["ES"], m["ES"], m["ED"]]).astype(np.uint8)
        write_nifti_image(cine, np.diag([*load_labelled_dataset(mnms, labels=MNMS)[0].geometry.spacing[::-1], 1.0]),
                          cine_pred / f"{patient}_sa.nii.gz")
    return h5_pred, cine_pred


def _evaluate(pred, gt, out, *extra):
    return subprocess.run([sys.executable, "-m", "cmrseg", "evaluate", "--pred", str(pred), "--gt", str(gt),
                           "-o", str(out), *extra], capture_output=True, text=True)


@pytest.mark.slow
def test_cmrseg_evaluate_scores_a_label_cine_as_its_labelled_frames(phantom_dir, mnms, tmp_path):
    import json

    h5_pred, cine_pred = _predictions(phantom_dir, mnms, tmp_path)
    files = _evaluate(h5_pred, phantom_dir / "h5" / "train", tmp_path / "r_h5")
    cines = _evaluate(cine_pred, mnms, tmp_path / "r_cine", "--labels", MNMS)
    assert files.returncode == 0 and cines.returncode == 0, files.stderr[-2000:] + cines.stderr[-2000:]
    a, b = (json.loads((tmp_path / r / "summary.json").read_text()) for r in ("r_h5", "r_cine"))
    assert b["n_volumes"] == a["n_volumes"] == 6 and a["levels"]["volume"]["avg"] < 0.999
    for level in ("base", "mid", "apex", "volume"):
        for k, v in a["levels"][level].items():
            assert b["levels"][level][k] == pytest.approx(v, abs=1e-9)
    assert b["clinical"]["patients"] == 3
    for k, v in a["clinical"]["all"].items():
        assert b["clinical"]["all"][k] == pytest.approx(v, rel=1e-5, abs=1e-6), k


def test_a_cine_whose_frames_do_not_match_is_one_line(mnms, tmp_path):
    image, gt = mnms / "patient001_sa.nii.gz", mnms / "patient001_sa_gt.nii.gz"
    frames = load_labelled_dataset(mnms, labels=MNMS)
    label = frames[0].label  # patient001, ED
    bad, truth, pred = tmp_path / "bad", tmp_path / "truth", tmp_path / "pred"
    for d in (bad, truth, pred):
        d.mkdir()
    (bad / image.name).write_bytes(image.read_bytes())
    write_nifti_image(np.stack([label, label, label]), np.eye(4), bad / gt.name)  # 3 frames for 5
    with pytest.raises(InputError, match=r"patient001_sa_gt.nii.gz: 3 label frame\(s\) for an image of 5"):
        load_labelled_dataset(bad, labels=MNMS)
    (truth / gt.name).write_bytes(gt.read_bytes())
    write_nifti_image(label, np.eye(4), pred / image.name)  # one 3D mask for a 5-frame truth
    res = _evaluate(pred, truth, tmp_path / "r", "--labels", MNMS)
    assert res.returncode == 2 and len(res.stderr.strip().splitlines()) == 1
    assert "patient001_sa.nii.gz: prediction has 1 frame(s), its truth 5" in res.stderr
