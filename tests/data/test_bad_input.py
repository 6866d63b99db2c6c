"""Every kind of bad input gives one clear error line naming the file, a non-zero exit and
nothing half-written."""

import shutil
import subprocess
import sys

import h5py
import numpy as np
import pytest

from cmrseg.data.io import load_labelled_dataset, read_volumes
from cmrseg.data.io.h5 import write_h5_volume
from cmrseg.data.io.nifti import write_nifti_image
from cmrseg.errors import InputError


def _img(shape=(4, 32, 32)):
    return np.random.default_rng(0).random(shape).astype(np.float32)


def _expect(path, fragment, fn=read_volumes):
    with pytest.raises(InputError) as err:
        fn(path)
    msg = str(err.value)
    assert str(path) in msg and fragment in msg, msg
    assert "\n" not in msg


def test_missing_file(tmp_path):
    _expect(tmp_path / "nope.nii.gz", "file not found")


def test_corrupt_gzip(tmp_path):
    p = write_nifti_image(_img(), np.eye(4), tmp_path / "a.nii.gz")
    data = p.read_bytes()
    p.write_bytes(data[: len(data) // 2])
    _expect(p, "cannot read NIfTI")
    p.write_bytes(b"\x1f\x8b" + b"garbage" * 20)
    _expect(p, "cannot read NIfTI")


def test_truncated_h5(tmp_path):
    p = write_h5_volume(tmp_path / "a.h5", _img((4, 64, 64)) * 1000)
    data = p.read_bytes()
    p.write_bytes(data[: len(data) // 3])
    _expect(p, "cannot read HDF5")


def test_2d_and_5d_images(tmp_path):
    import nibabel as nib

    p2 = tmp_path / "flat.nii.gz"
    nib.save(nib.Nifti1Image(_img((32, 32))[0] if False else _img((1, 32, 32))[0], np.eye(4)), str(p2))
    _expect(p2, "2D image")
    p5 = tmp_path / "five.nii.gz"
    nib.save(nib.Nifti1Image(np.random.rand(16, 16, 3, 2, 2).astype(np.float32), np.eye(4)), str(p5))
    _expect(p5, "5D image")


def test_a_singular_affine_is_refused_even_with_spacing_given(tmp_path):
    """A broken sform (two voxel axes along one direction) leaves the slice order and the
    output geometry unknown: one line, whatever --spacing says."""
    import nibabel as nib

    r = 1.5 / np.sqrt(2)  # voxel sizes as in pixdim, so only the axes' directions are wrong
    affine = np.array([[r, r, 0.0, 0.0], [r, r, 0.0, 0.0], [0.0, 0.0, 8.0, 0.0], [0, 0, 0, 1]])
    p = tmp_path / "singular.nii.gz"
    img = nib.Nifti1Image(_img((32, 32, 6)), np.diag([1.5, 1.5, 8.0, 1.0]))
    img.set_sform(affine, code=2)  # i and j both along x + y: the axes span a plane
    nib.save(img, str(p))
    _expect(p, "affine (sform/qform) is singular")
    _expect(p, "affine (sform/qform) is singular", lambda q: read_volumes(q, spacing=(8.0, 1.5, 1.5)))
    nib.save(nib.Nifti1Image(_img((32, 32, 6)), np.diag([1.5, 1.5, 8.0, 1.0])), str(p))
    assert read_volumes(p)[0].shape == (6, 32, 32)
    img.set_sform(np.diag([1.5, 1.5, 0.0, 1.0]), code=2)  # a slice axis of length 0: an unknown
    nib.save(img, str(p))  # voxel size, which --spacing supplies, as before
    assert read_volumes(p, spacing=(8.0, 1.5, 1.5))[0].geometry.spacing == (8.0, 1.5, 1.5)


def test_nan_and_constant(tmp_path):
    img = _img()
    img[1, 2, 3] = np.nan
    _expect(write_h5_volume(tmp_path / "nan.h5", img), "NaN")
    _expect(write_h5_volume(tmp_path / "const.h5", np.full((4, 32, 32), 7.0)), "constant intensity")


def test_label_out_of_range_and_shape_mismatch(tmp_path):
    lab = np.zeros((4, 32, 32), np.uint8)
    lab[0, 0, 0] = 7
    d = tmp_path / "ds1"
    write_h5_volume(d / "a.h5", _img(), lab)
    _expect(d, "outside 0..3", load_labelled_dataset)
    d2 = tmp_path / "ds2"
    with h5py.File(d2.mkdir() or d2 / "b.h5", "w") as fh:
        fh["image"] = _img()
        fh["label"] = np.zeros((3, 32, 32), np.uint8)
    with pytest.raises(InputError, match="does not match image shape"):
        load_labelled_dataset(d2)


def test_h5_without_image(tmp_path):
    p = tmp_path / "x.h5"
    with h5py.File(p, "w") as fh:
        fh["label"] = np.zeros((2, 32, 32), np.uint8)
    _expect(p, "no dataset 'image'")


def test_cli_gives_one_line_and_writes_nothing(acdc_val, tmp_path):
    pred = tmp_path / "pred"
    pred.mkdir()
    names = sorted(p.name for p in acdc_val.glob("*.h5"))
    for n in names:
        shutil.copy(acdc_val / n, pred / n)
    broken = pred / names[3]
    broken.write_bytes(broken.read_bytes()[:5000])
    out = tmp_path / "report"
    proc = subprocess.run([sys.executable, "-m", "cmrseg", "evaluate", "--pred", str(pred), "--gt", str(acdc_val),
                           "-o", str(out)], capture_output=True, text=True)
    assert proc.returncode != 0
    lines = [l for l in proc.stderr.splitlines() if l.strip()]
    assert len(lines) == 1 and names[3] in lines[0] and lines[0].startswith("cmrseg: error:"), proc.stderr
    assert not out.exists() or not any(out.iterdir())
