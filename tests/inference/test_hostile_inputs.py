"""The second hostile-input battery (issue 38) and the real files of issue 39, as small generated
fixtures: each case gives one clear line and a non-zero exit, or the correct result; never a
silent wrong volume, a traceback, a runaway, or a batch stopped by one file.

Each test here failed on the code before those issues (checked by reverting the source change).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest

from cmrseg.data.io import read_volumes
from cmrseg.data.io.acdc import read_acdc_patient
from cmrseg.data.io.discovery import discover, load_study
from cmrseg.data.io.nifti import read_nifti, read_nifti_label
from cmrseg.errors import CmrsegError, InputError
from cmrseg.measures.clinical import structure_volumes_ml


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "cmrseg", *map(str, args)], capture_output=True, text=True)


def _one_line(res, *fragments, code=2):
    err = res.stderr.strip()
    assert res.returncode == code, (res.returncode, res.stdout[-500:], err[-1500:])
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    for f in fragments:
        assert f in err, (f, err)


def _ed(phantom_dir, patient="patient001"):
    """The phantom's ED frame file and its expert mask, read."""
    folder = phantom_dir / "acdc" / patient
    (vol,) = read_nifti(folder / f"{patient}_frame01.nii.gz")
    return folder / f"{patient}_frame01.nii.gz", vol, read_nifti_label(folder / f"{patient}_frame01_gt.nii.gz", vol)


# ----------------------------------------------------------------------------- NIfTI geometry

def test_a_sheared_grid_measures_the_distance_between_slice_planes(phantom_dir, tmp_path):
    """Issue 38.1: the slice axis leaning along the rows, the planes as far apart as before. The
    slice spacing was the slice axis' length (volumes 11.8 % too high in the battery's case)."""
    path, vol, label = _ed(phantom_dir)
    img = nib.load(str(path))
    sheared = img.affine.copy()
    sheared[:3, 2] += 0.5 * img.affine[:3, 0] / np.linalg.norm(img.affine[:3, 0]) * np.linalg.norm(img.affine[:3, 2])
    nib.save(nib.Nifti1Image(np.asanyarray(img.dataobj), sheared), str(tmp_path / "sheared.nii.gz"))
    (read,) = read_volumes(tmp_path / "sheared.nii.gz")
    assert read.geometry.spacing[0] == pytest.approx(vol.geometry.spacing[0], rel=1e-4)
    assert read.geometry.voxel_volume_ml == pytest.approx(abs(np.linalg.det(sheared[:3, :3])) / 1000, rel=1e-4)
    assert any("sheared grid" in n for n in read.geometry.notes)
    truth = structure_volumes_ml(label, vol.geometry.voxel_volume_ml)
    assert structure_volumes_ml(label, read.geometry.voxel_volume_ml)["LV"] == pytest.approx(truth["LV"], rel=1e-4)
    assert not any("sheared" in n for n in vol.geometry.notes)


def _acdc_header_copy(src: Path, dst: Path, pixdim=(1.64, 1.64, 10.0)) -> None:
    """``src``'s array with the ACDC release's header: qform_code 0, sform_code 2 holding only the
    directions (diag(-1, -1, 1), unit voxels), the real voxel size only in pixdim."""
    data = np.asanyarray(nib.load(str(src)).dataobj)
    img = nib.Nifti1Image(data, None)
    hdr = img.header
    hdr.set_sform(np.diag([-1.0, -1.0, 1.0, 1.0]), code=2)
    hdr.set_qform(None, code=0)
    hdr["pixdim"][1:4] = pixdim
    hdr.set_xyzt_units("mm", "sec")
    nib.save(nib.Nifti1Image(data, None, hdr), str(dst))


def test_the_acdc_release_header_is_read_as_itk_reads_it(phantom_dir, tmp_path):
    """Issue 39.3: refused before ('header pixdim ... and affine voxel sizes [1.0, 1.0, 1.0]
    disagree'); read with the voxel size from pixdim and the directions from the sform, said
    in the notes, and the mask written with the file's own header untouched."""
    path, vol, _ = _ed(phantom_dir)
    _acdc_header_copy(path, tmp_path / "acdc.nii.gz")
    raw = nib.load(str(tmp_path / "acdc.nii.gz")).header
    assert (int(raw["qform_code"]), int(raw["sform_code"])) == (0, 2)
    (read,) = read_volumes(tmp_path / "acdc.nii.gz")
    assert read.geometry.spacing == pytest.approx((10.0, 1.64, 1.64), rel=1e-5)
    np.testing.assert_allclose(read.geometry.affine[:3, :3], np.diag([-1.64, -1.64, 10.0]), atol=1e-5)
    assert any("as ITK reads it" in n for n in read.geometry.notes)
    from cmrseg.data.io import write_mask

    out = write_mask(np.zeros(read.shape, np.uint8), read, tmp_path / "out")
    written = nib.load(str(out)).header
    assert (int(written["qform_code"]), int(written["sform_code"])) == (0, 2)
    np.testing.assert_allclose(written.get_sform(), raw.get_sform())
    np.testing.assert_allclose(written["pixdim"][1:4], raw["pixdim"][1:4])
    # truly ambiguous headers are still refused: sizes in both, disagreeing
    img = nib.load(str(path))
    other = nib.Nifti1Image(np.asanyarray(img.dataobj), img.affine)
    other.header["pixdim"][1:4] = [2.0, 2.0, 6.0]
    nib.save(other, str(tmp_path / "ambiguous.nii.gz"))
    with pytest.raises(InputError, match="disagree"):
        read_volumes(tmp_path / "ambiguous.nii.gz")


def _acdc_release(phantom_dir, dst: Path) -> Path:
    """The phantom's patient folders with every NIfTI's header made the ACDC release's."""
    for patient in ("patient001", "patient002"):
        src = phantom_dir / "acdc" / patient
        (dst / patient).mkdir(parents=True)
        shutil.copy(src / "Info.cfg", dst / patient / "Info.cfg")
        for f in src.glob("*.nii.gz"):
            if "_4d" not in f.name:
                _acdc_header_copy(f, dst / patient / f.name)
    return dst


def test_acdc_release_folders_segment_and_evaluate_without_options(phantom_dir, smoke_model, tmp_path):
    data = _acdc_release(phantom_dir, tmp_path / "training")
    out = tmp_path / "out"
    res = _cli("segment", "-i", data, "-o", out, "--model", smoke_model, "--workers", "0")
    assert res.returncode == 0, res.stderr[-2000:]
    cases = {c: json.loads((out / "studies" / f"{c}.json").read_text()) for c in ("patient001", "patient002")}
    assert all(c["status"] == "ok" and "as ITK reads it" in c["note"] for c in cases.values())
    assert cases["patient001"]["spacing_mm"] == pytest.approx([10.0, 1.64, 1.64], rel=1e-5)
    res = _cli("evaluate", "--pred", out, "--gt", data, "-o", tmp_path / "eval")
    assert res.returncode == 0, res.stderr[-2000:]
    summary = json.loads((tmp_path / "eval" / "summary.json").read_text())
    assert summary["n_volumes"] == 4 and summary["clinical"]["patients"] == 2
    # --spacing reaches ACDC patient folders too (issue 39.4: discovery read them without it)
    study = load_study(discover([data / "patient001"])[0][0], spacing=(8.0, 1.2, 1.2))
    assert study.frames[0].geometry.spacing == (8.0, 1.2, 1.2)
    assert read_acdc_patient(data / "patient001", spacing=(8.0, 1.2, 1.2)).frames[0].geometry.spacing_source == "option"


def test_the_acdc_release_trains_as_distributed(phantom_dir, tmp_path):
    """``make demo DATA=...`` / ``cmrseg train --data``: the release's ``training/`` and
    ``testing/`` folders are its train and val splits, its headers read without options."""
    from cmrseg.data.dataset import StackDataset
    from cmrseg.data.preprocessing import PreprocessConfig
    from cmrseg.training.run_folder import resolve_splits

    database = tmp_path / "database"
    _acdc_release(phantom_dir, database / "training")
    _acdc_release(phantom_dir, database / "testing")
    assert resolve_splits(database) == (database / "training", database / "testing")
    ds = StackDataset.from_folder(database / "training", PreprocessConfig(target_spacing=1.6, canvas=192),
                                  progress=False)
    assert len(ds.records) == 4 and all(r.label.max() == 3 for r in ds.records)


def test_a_blank_slice_inside_a_stack_is_a_lost_slice_not_a_slice_without_heart(phantom_dir, tmp_path):
    """Issue 38.5: an all-zero slice was segmented as a slice without heart (LV 134.7 mL
    against 156.5 in the battery); now it is marked missing, filled, and its area interpolated."""
    path, vol, label = _ed(phantom_dir)
    heart = np.flatnonzero(label.reshape(label.shape[0], -1).any(1))
    k = int(heart[len(heart) // 2])
    img = nib.load(str(path))
    data = np.asanyarray(img.dataobj).copy()
    data[:, :, k] = 0
    nib.save(nib.Nifti1Image(data, img.affine, img.header), str(tmp_path / "blank.nii.gz"))
    (source,), _ = discover([tmp_path / "blank.nii.gz"])
    study = load_study(source)
    frame = study.frames[0]
    assert frame.meta["missing_slices"] == [k]
    assert frame.image[k].max() > frame.image[k].min()  # filled from its neighbours for the networks
    assert any(f"blank slice k={k}" in n for n in frame.geometry.notes)
    # the areas are interpolated there: the truth with that slice erased measures close to the truth
    erased = label.copy()
    erased[k] = 0
    full = structure_volumes_ml(label, vol.geometry.voxel_volume_ml)["LV"]
    assert abs(structure_volumes_ml(erased, vol.geometry.voxel_volume_ml, [k])["LV"] - full) < 0.05 * full
    assert structure_volumes_ml(erased, vol.geometry.voxel_volume_ml)["LV"] < 0.95 * full  # as it was counted


# ----------------------------------------------------------------------------- DICOM files that stopped batches

def _series(phantom_dir, dst: Path, patient="patient003") -> Path:
    shutil.copytree(phantom_dir / "dicom" / patient, dst)
    return dst


def test_a_classic_image_with_a_stray_per_frame_sequence_reads_as_the_classic_image(phantom_dir, tmp_path):
    """Issue 39.1: GE Signa and Philips Intera exports, classic MR Image Storage files that also
    carry a one-item PerFrameFunctionalGroupsSequence, were taken for Enhanced MR files and
    stopped the batch ('multi-frame DICOM with 0 frames but 1 per-frame descriptions')."""
    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence

    folder = _series(phantom_dir, tmp_path / "ge")
    for f in folder.glob("*.dcm"):
        ds = pydicom.dcmread(str(f))
        ds.PerFrameFunctionalGroupsSequence = Sequence([Dataset()])
        ds.save_as(str(f))
    plain = read_volumes(phantom_dir / "dicom" / "patient003")
    frames = read_volumes(folder)
    assert len(frames) == len(plain)
    np.testing.assert_array_equal(frames[1].image, plain[1].image)
    (source,), skipped = discover([folder])
    assert skipped == [] and source.kind == "dicom"


def test_one_unreadable_file_is_skipped_naming_it_and_the_rest_of_its_series_kept(phantom_dir, smoke_model, tmp_path):
    """Issues 38.3 and 39.1: a zero-byte .dcm refused the whole batch; an image without
    ImagePositionPatient crashed discovery (AttributeError). Each is now skipped with one line
    naming it, its series read with that image lost (flagged), and the batch goes on."""
    data = tmp_path / "data"
    folder = _series(phantom_dir, data / "sax")
    (folder / "empty.dcm").write_bytes(b"")
    placeless = sorted(folder.glob("IM_002_*.dcm"))[1]
    ds = pydicom.dcmread(str(placeless))
    del ds.ImagePositionPatient
    ds.save_as(str(placeless))
    shutil.copytree(phantom_dir / "acdc" / "patient001", data / "patient001")
    sources, skipped = discover([data])
    assert sorted(s.name for s in sources) == ["patient001", "sax"]
    reasons = {k.path.name: k.reason for k in skipped}
    assert "cannot read DICOM header" in reasons["empty.dcm"]
    assert "lacks ImagePositionPatient" in reasons[placeless.name]
    out = tmp_path / "out"
    res = _cli("segment", "-i", data, "-o", out, "--model", smoke_model, "--workers", "0")
    assert res.returncode == 0, res.stderr[-2000:]
    assert f"skipped {folder / 'empty.dcm'}: cannot read DICOM header" in res.stdout
    case = json.loads((out / "studies" / "sax.json").read_text())
    assert [f["flag"] for f in case["flags"]].count("missing_image") == 1


def test_a_series_with_too_few_readable_images_is_refused_and_the_batch_goes_on(phantom_dir, tmp_path):
    folder = _series(phantom_dir, tmp_path / "sax")
    for f in sorted(folder.glob("*.dcm"))[1:]:
        f.write_bytes(b"DICM but not really")
    sources, skipped = discover([folder])
    assert sources == []
    assert sum("cannot read DICOM header" in k.reason for k in skipped) == len(list(folder.glob("*.dcm"))) - 1
    assert any(k.reason.startswith("one slice position: a single image") for k in skipped)


def test_monochrome1_images_are_inverted_to_bright_blood(phantom_dir, tmp_path):
    """Issue 38.4: MONOCHROME1 (smallest value shown white) was read as MONOCHROME2: an inverted
    image, segmented to an LV of 8 mL. Read through the photometric interpretation, the series is
    the MONOCHROME2 one up to an offset."""
    folder = _series(phantom_dir, tmp_path / "m1")
    for f in folder.glob("*.dcm"):
        ds = pydicom.dcmread(str(f))
        stored = ds.pixel_array
        ds.PhotometricInterpretation = "MONOCHROME1"
        ds.PixelData = (4095 - stored).astype(stored.dtype).tobytes()
        ds.save_as(str(f))
    plain = np.stack([v.image for v in read_volumes(phantom_dir / "dicom" / "patient003")])
    inverted = np.stack([v.image for v in read_volumes(folder)])
    offset = inverted - plain
    assert np.ptp(offset) < 1e-4 * np.ptp(plain)


def test_two_subjects_under_one_series_uid_are_refused_naming_them(phantom_dir, smoke_model, tmp_path):
    """Issue 38.6: images of two patients sharing a SeriesInstanceUID were merged into one cine."""
    data = tmp_path / "data"
    folder = _series(phantom_dir, data / "merged")
    for f in sorted(folder.glob("IM_00[0-3]_*.dcm")):
        ds = pydicom.dcmread(str(f))
        ds.PatientID = "OTHER-PATIENT"
        ds.save_as(str(f))
    with pytest.raises(InputError, match="PatientIDs .*OTHER-PATIENT"):
        read_volumes(folder)
    shutil.copytree(phantom_dir / "acdc" / "patient001", data / "patient001")
    res = _cli("segment", "-i", data, "-o", tmp_path / "out", "--model", smoke_model, "--workers", "0")
    assert res.returncode == 1 and "merged: " in res.stderr and "different PatientIDs" in res.stderr
    assert json.loads((tmp_path / "out" / "studies" / "patient001.json").read_text())["status"] == "ok"


def test_a_series_description_never_names_a_hidden_or_outside_file(phantom_dir, tmp_path):
    """Issue 38.10: ``../../x`` became ``.._.._x.nii.gz``, a hidden file."""
    folder = _series(phantom_dir, tmp_path / "sax")
    for f in folder.glob("*.dcm"):
        ds = pydicom.dcmread(str(f))
        ds.SeriesDescription = "../../x"
        ds.save_as(str(f))
    frames = read_volumes(folder)
    assert frames[0].name == "x"


# ----------------------------------------------------------------------------- walking and writing

def test_a_symbolic_link_loop_is_walked_once(phantom_dir, tmp_path):
    """Issue 38.2: a link back up the tree found the same series under every looped path (233
    'studies' in the battery)."""
    data = tmp_path / "data"
    _series(phantom_dir, data / "exam" / "sax")
    (data / "exam" / "loop").symlink_to(data, target_is_directory=True)
    shutil.copy(phantom_dir / "acdc" / "patient002" / "patient002_4d.nii.gz", data / "cine.nii.gz")
    (data / "exam" / "again.nii.gz").symlink_to(data / "cine.nii.gz")
    sources, _ = discover([data])
    assert sorted(s.name for s in sources) == ["cine", "sax"]


def test_a_second_writer_of_one_output_folder_is_refused_naming_it(phantom_dir, smoke_model, tmp_path):
    """Issue 38.9: two runs into one folder failed with a misleading 'not written by cmrseg'.
    Shards of one split (a job array) still write side by side."""
    from cmrseg.inference.output_folder import writer_lock

    out = tmp_path / "out"
    out.mkdir()
    with writer_lock(out, (0, 1)):
        res = _cli("segment", "-i", phantom_dir / "acdc" / "patient001", "-o", out, "--model", smoke_model)
        _one_line(res, "another cmrseg segment is writing here", f"pid {os.getpid()}", "shard 1/1")
        with pytest.raises(CmrsegError, match="another cmrseg segment"):
            with writer_lock(out, (1, 2)):  # another split's shard overlaps this one's studies
                pass
    with writer_lock(out, (0, 2)):
        with writer_lock(out, (1, 2)):  # the other shard of the same split
            pass
        with pytest.raises(CmrsegError, match=r"shard 1/2"):
            with writer_lock(out, (0, 2)):
                pass
    assert _cli("segment", "-i", phantom_dir / "acdc" / "patient001", "-o", out, "--model",
                smoke_model).returncode == 0


def test_nonsense_options_and_paths_give_one_line(phantom_dir, smoke_model, tmp_path):
    """Issue 38.8: tracebacks for ``--workers -1`` and for an output path longer than the file
    system allows."""
    study = phantom_dir / "acdc" / "patient001"
    res = _cli("segment", "-i", study, "-o", tmp_path / "o", "--workers", "-1")
    assert res.returncode == 2 and "--workers: must be 0 or more" in res.stderr and "Traceback" not in res.stderr
    _one_line(_cli("segment", "-i", study, "-o", tmp_path / ("x" * 300), "--model", smoke_model), "File name too long")


def test_a_damaged_model_description_is_refused_before_anything_is_built(phantom_dir, smoke_model, tmp_path):
    """Issue 38.8: a model.json with an absurd layer width tried to allocate 23 GB before failing.
    It is checked on the meta device against a parameter bound and the weights' shapes."""
    study = phantom_dir / "acdc" / "patient001"
    for widths, fragment in (([100000, 200000, 300000, 400000], "M parameters"), ([8, 8, 16, 32], "do not fit model.json")):
        model = tmp_path / f"model_{widths[0]}"
        shutil.copytree(smoke_model, model)
        meta = json.loads((model / "model.json").read_text())
        meta["model_kwargs"]["widths"] = widths
        (model / "model.json").write_text(json.dumps(meta))
        _one_line(_cli("segment", "-i", study, "-o", tmp_path / "out", "--model", model), fragment)


# ----------------------------------------------------------------------------- evaluation

def test_predictions_without_truth_are_named_and_fail_unless_pairs_only(phantom_dir, tmp_path):
    """Issue 38.7: predictions with no truth were dropped in silence (exit 0)."""
    pred, gt = tmp_path / "pred", tmp_path / "gt"
    for d in (pred, gt):
        d.mkdir()
    for name in ("patient001_frame01", "patient002_frame01"):
        patient = name.split("_")[0]
        shutil.copy(phantom_dir / "acdc" / patient / f"{name}_gt.nii.gz", pred / f"{name}.nii.gz")
    shutil.copy(phantom_dir / "acdc" / "patient001" / "patient001_frame01_gt.nii.gz", gt)
    res = _cli("evaluate", "--pred", pred, "--gt", gt, "-o", tmp_path / "r")
    assert res.returncode == 1 and "1 prediction(s)" in res.stderr and "patient002_frame01" in res.stderr
    summary = json.loads((tmp_path / "r" / "summary.json").read_text())
    assert summary["predictions_without_truth"] == ["patient002_frame01"] and summary["n_volumes"] == 1
    assert "patient002_frame01" in (tmp_path / "r" / "table.md").read_text()
    assert _cli("evaluate", "--pred", pred, "--gt", gt, "-o", tmp_path / "r2", "--pairs-only").returncode == 0


def test_ed_and_es_files_are_scored_as_one_patients_pair(phantom_dir, tmp_path):
    """Issue 39.4: ``<case>_ED`` / ``<case>_ES`` truth files were scored as volumes without a
    phase, so no EF, volume or mass error was reported."""
    pred, gt = tmp_path / "pred", tmp_path / "gt"
    for d in (pred, gt):
        d.mkdir()
    folder = phantom_dir / "acdc" / "patient001"
    es = sorted(p for p in folder.glob("patient001_frame*_gt.nii.gz"))[-1]
    for phase, src in (("ED", folder / "patient001_frame01_gt.nii.gz"), ("ES", es)):
        shutil.copy(src, gt / f"subject7_{phase}_gt.nii.gz")
        shutil.copy(src, pred / f"subject7_{phase}.nii.gz")
    res = _cli("evaluate", "--pred", pred, "--gt", gt, "-o", tmp_path / "r")
    assert res.returncode == 0, res.stderr
    summary = json.loads((tmp_path / "r" / "summary.json").read_text())
    assert summary["clinical"]["patients"] == 1
    assert summary["clinical"]["all"]["LVEF (%) MAE"] == 0.0


def test_an_output_folder_of_a_run_before_the_renaming_resumes(phantom_dir, smoke_model, tmp_path):
    """Runs before issue 40 kept their study records in ``OUT/cases/`` and listed them under
    ``cases`` in summary.json: such a folder is still ours, its finished studies are skipped, and
    cmrseg evaluate still reads its quality-control records."""
    import os

    out = tmp_path / "out"
    study = phantom_dir / "acdc" / "patient001"
    assert _cli("segment", "-i", study, "-o", out, "--model", smoke_model).returncode == 0
    os.rename(out / "studies", out / "cases")
    summary = json.loads((out / "summary.json").read_text())
    (out / "summary.json").write_text(json.dumps({**summary, "cases": summary.pop("studies")}))
    again = _cli("segment", "-i", study, "-o", out, "--model", smoke_model)
    assert again.returncode == 0 and "1 already done" in again.stdout
    res = _cli("evaluate", "--pred", out, "--gt", study, "-o", tmp_path / "eval")
    assert res.returncode == 0 and "quality control:" in res.stdout
