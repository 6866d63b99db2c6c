"""``cmrseg segment --dicom-seg``: a DICOM study's ED and ES masks as DICOM SEG objects, every
frame holding the mask of the image it references; a series a SEG cannot reference keeps its
other outputs and says why."""

import json
import subprocess
import sys

import highdicom as hd  # a dependency of the project: a missing one fails here, never skips
import numpy as np
import pytest

from cmrseg.data.io import read_volumes
from cmrseg.data.io.dicom import write_dicom_series


def _segment(*args):
    return subprocess.run([sys.executable, "-m", "cmrseg", "segment", *map(str, args), "--workers", "1",
                           "--tta", "off"], capture_output=True, text=True)


def _seg_frames(path, frame) -> dict[int, np.ndarray]:
    """The SEG at ``path`` as labels ``{slice k in the file order: [H, W]}`` for the images of
    ``frame`` (a read DICOM frame) that it references."""
    import pydicom

    seg = hd.seg.segread(path)
    assert [s.SegmentLabel for s in seg.SegmentSequence] == ["RV", "MYO", "LV"]
    k_of = {pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID: k
            for k, f in enumerate(frame.meta["dicom_files"])}
    pixels = seg.get_pixels_by_source_instance(list(k_of), segment_numbers=[1, 2, 3],
                                               assert_missing_frames_are_empty=True)
    return {k: (pixels[i] > 0).astype(np.uint8) @ np.array([1, 2, 3], np.uint8) for i, k in enumerate(k_of.values())}


@pytest.mark.parametrize("reverse", [False, True])
def test_each_seg_frame_is_the_mask_of_the_image_it_references(phantom_dir, tmp_path, reverse):
    """Masks held base -> apex go back to the file's slice order: checked on a series stored
    the other way too (the same anatomy with its columns mirrored, so that the image normal, and
    the slice order along it, are reversed)."""
    from cmrseg.data.io.dicom_seg import new_series_uid, write_dicom_seg

    frames = read_volumes(phantom_dir / "dicom" / "patient003")
    if reverse:
        affine = frames[0].geometry.affine.copy()
        affine[:3, 3] += affine[:3, 0] * (frames[0].shape[2] - 1)
        affine[:3, 0] *= -1
        write_dicom_series(np.stack([f.image[..., ::-1] for f in frames]), affine, tmp_path / "reversed")
        frames = read_volumes(tmp_path / "reversed")
    assert frames[0].geometry.slices_reversed is reverse  # both orders are exercised
    rng = np.random.default_rng(0)
    mask = np.zeros(frames[1].shape, np.uint8)  # held base -> apex, as cmrseg holds it
    for k in range(mask.shape[0]):
        for c in (1, 2, 3):
            y, x = rng.integers(0, mask.shape[1] - 12, 2)
            mask[k, y:y + 10, x:x + 10] = c
    path = write_dicom_seg(mask, frames[1], tmp_path / "seg.dcm", "test model", "0.0", new_series_uid(), 2, "ES")
    got = _seg_frames(path, frames[1])
    in_file_order = mask[::-1] if frames[1].geometry.slices_reversed else mask
    assert sorted(got) == list(range(mask.shape[0]))
    for k, labels in got.items():
        assert np.array_equal(labels, in_file_order[k]), k
    assert hd.seg.segread(path).ContentDescription == "cmrseg ES"


def test_cmrseg_segment_writes_the_ed_and_es_segs_beside_the_mask(phantom_dir, smoke_model, tmp_path):
    import nibabel as nib

    src, out = phantom_dir / "dicom" / "patient003", tmp_path / "out"
    res = _segment("-i", src, "-o", out, "--model", smoke_model, "--dicom-seg")
    assert res.returncode == 0, res.stderr[-2000:]
    record = json.loads((out / "studies" / "patient003.json").read_text())
    ed, es = record["ed_frame"] - 1, record["es_frame"] - 1
    segs = {"ED": ed, "ES": es} if ed != es else {"": ed}
    names = [f"patient003_SAX_cine_seg{'_' + p if p else ''}.dcm" for p in segs]
    assert sorted(record["outputs"]) == sorted(["patient003_SAX_cine.nii.gz", *names])
    mask = np.asarray(nib.load(out / "patient003_SAX_cine.nii.gz").dataobj)  # [x, y, k, t]: the input's order
    frames = read_volumes(src)
    for name, t in zip(names, segs.values()):
        for k, labels in _seg_frames(out / name, frames[t]).items():
            assert np.array_equal(labels, mask[:, :, k, t].T), (name, k)


def test_an_enhanced_mr_study_keeps_its_mask_and_says_why_it_has_no_seg(phantom_dir, smoke_model, tmp_path):
    classic = read_volumes(phantom_dir / "dicom" / "patient003")
    folder = tmp_path / "enhanced"
    write_dicom_series(np.stack([f.image for f in classic]), classic[0].geometry.affine, folder, layout="enhanced")
    out = tmp_path / "out"
    res = _segment("-i", folder, "-o", out, "--model", smoke_model, "--dicom-seg")
    assert res.returncode == 0, res.stderr[-2000:]
    record = json.loads(next((out / "studies").glob("*.json")).read_text())
    assert record["status"] == "ok" and not any(o.endswith(".dcm") for o in record["outputs"])
    assert "no DICOM SEG: DICOM SEG is written for series of single-frame images only" in record["note"]
    assert not list(out.glob("*_seg*.dcm"))
