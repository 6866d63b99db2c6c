"""Inputs as they come (issue 12): folder trees, several DICOM series in one folder, a single
.dcm, ED/ES files, a lost image, 2D and long-axis inputs, and base/apex from the anatomy."""

import csv
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest

from cmrseg.data.io import read_volumes
from cmrseg.data.io.dicom import write_dicom_series
from cmrseg.data.io.discovery import StudySource, discover, load_study, unique_names
from cmrseg.data.io.nifti import write_nifti_image
from cmrseg.data.orientation import reverse_affine
from cmrseg.errors import InputError


def _segment(*args):
    return subprocess.run([sys.executable, "-m", "cmrseg", "segment", *map(str, args), "--workers", "1"],
                          capture_output=True, text=True)


def _plane(normal_like: np.ndarray, spacing=(1.5, 1.5, 8.0)) -> np.ndarray:
    """An affine whose slice normal is ``normal_like``."""
    n = normal_like / np.linalg.norm(normal_like)
    u = np.cross([0.0, 0.0, 1.0], n)
    u = u / np.linalg.norm(u) if np.linalg.norm(u) > 1e-6 else np.array([1.0, 0.0, 0.0])
    a = np.eye(4)
    a[:3, 0], a[:3, 1], a[:3, 2] = u * spacing[0], np.cross(n, u) * spacing[1], n * spacing[2]
    return a


def _series(folder: Path, frames: np.ndarray, affine: np.ndarray, prefix: str, uid: str | None = None,
            description: str = "series") -> None:
    tmp = folder.parent / f".tmp_{prefix}"
    write_dicom_series(frames, affine, tmp, description=description)
    folder.mkdir(parents=True, exist_ok=True)
    for f in sorted(tmp.iterdir()):
        if uid is not None:
            ds = pydicom.dcmread(str(f))
            ds.SeriesInstanceUID = uid
            ds.save_as(str(f))
        shutil.move(str(f), folder / f"{prefix}_{f.name}")
    tmp.rmdir()


def _mixed_tree(phantom_dir, root: Path) -> Path:
    """root/exam/2024/series: the phantom's SAX cine, a 3-plane localiser and a long-axis cine."""
    folder = root / "exam" / "2024" / "dicom"
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True)
    for f in (phantom_dir / "dicom" / "patient003").iterdir():
        shutil.copy(f, folder / f"sax_{f.name}")
    uid = pydicom.uid.generate_uid()
    for i, axis in enumerate(np.eye(3)):  # localiser: three orthogonal single images, one series
        _series(folder, rng.random((1, 1, 64, 64)).astype(np.float32), _plane(axis), f"loc{i}", uid, "localiser")
    sax_normal = np.array([-1.0, 1.0, -1.0])
    lax_normal = np.cross(sax_normal, [1.0, 1.0, 0.0])  # contains the long axis
    _series(folder, rng.random((12, 1, 64, 64)).astype(np.float32), _plane(lax_normal), "lax", None, "4ch cine")
    return root


def test_a_tree_with_a_cine_a_localiser_and_a_long_axis_series(phantom_dir, smoke_model, tmp_path):
    root = _mixed_tree(phantom_dir, tmp_path / "study")
    sources, skipped = discover([root])
    assert [s.kind for s in sources] == ["dicom"]
    reasons = {str(k.path): k.reason for k in skipped}
    assert len(skipped) == 2, reasons
    assert any("localiser" in r for r in reasons.values()) and any("one slice position" in r for r in reasons.values())
    out = tmp_path / "out"
    res = _segment("-i", root, "-o", out, "--model", smoke_model)
    assert res.returncode == 0, res.stderr[-2000:]
    assert res.stdout.count("skipped") >= 2
    summary = json.loads((out / "summary.json").read_text())
    assert len(summary["studies"]) == 1 and len(summary["skipped"]) == 2
    assert "Skipped inputs" in (out / "report.html").read_text()


def test_a_single_dcm_file_stands_for_its_series(phantom_dir):
    folder = phantom_dir / "dicom" / "patient003"
    one = sorted(folder.iterdir())[5]
    sources, _ = discover([one])
    assert len(sources) == 1 and len(sources[0].paths) == len(list(folder.iterdir()))
    a, b = read_volumes(one), read_volumes(folder)
    assert len(a) == len(b) and np.array_equal(a[0].image, b[0].image)


def test_an_enhanced_multiframe_cine_is_one_study_beside_classic_series(phantom_dir, smoke_model, tmp_path):
    """One Enhanced MR file (every frame of the cine) in a folder with a classic localiser: found
    as one short-axis study of 4 frames, given alone or as its folder, and segmented."""
    classic = read_volumes(phantom_dir / "dicom" / "patient003")
    folder = tmp_path / "exam"
    write_dicom_series(np.stack([f.image for f in classic]), classic[0].geometry.affine, folder, layout="enhanced")
    _series(folder, np.random.default_rng(0).random((1, 1, 64, 64)).astype(np.float32), _plane(np.eye(3)[0]),
            "loc", None, "localiser")
    enhanced = folder / "IM_ENHANCED.dcm"
    for given in (folder, enhanced):
        sources, skipped = discover([given])
        assert [(s.kind, s.paths) for s in sources] == [("dicom", [enhanced])]
        assert len(load_study(sources[0]).frames) == len(classic)
    assert [k.reason for k in skipped] == [] and len(discover([folder])[1]) == 1
    out = tmp_path / "out"
    res = _segment("-i", folder, "-o", out, "--model", smoke_model)
    assert res.returncode == 0, res.stderr[-2000:]
    case = json.loads(next((out / "studies").glob("*.json")).read_text())
    assert case["frames"] == len(classic) and case["status"] == "ok"
    geometry = classic[0].geometry  # the mask is written in the file's slice order and geometry
    on_disk = reverse_affine(geometry.affine, classic[0].num_slices) if geometry.slices_reversed else geometry.affine
    mask = nib.load(str(out / case["outputs"][0]))
    assert mask.shape[:3] == classic[0].image.shape[::-1] and mask.shape[3] == len(classic)
    np.testing.assert_allclose(mask.affine, on_disk, atol=1e-4)


def _slice_series_tree(phantom_dir, root: Path, subfolders: bool) -> list:
    """The phantom's cine stored one slice position per series (one breath-hold each), in one
    folder or one subfolder per series; returns the phantom's frames read from its own series."""
    classic = read_volumes(phantom_dir / "dicom" / "patient003")
    write_dicom_series(np.stack([f.image for f in classic]), classic[0].geometry.affine, root, "sa cine",
                       layout="series_per_slice")
    if subfolders:
        for f in sorted(root.glob("IM_*.dcm")):
            (root / f"series_{f.name[3:6]}").mkdir(exist_ok=True)
            f.rename(root / f"series_{f.name[3:6]}" / f.name)
    return classic


@pytest.mark.parametrize("subfolders", [False, True])
def test_a_stack_stored_one_slice_per_series_is_one_study(phantom_dir, tmp_path, subfolders):
    classic = _slice_series_tree(phantom_dir, tmp_path / "exam", subfolders)
    sources, skipped = discover([tmp_path / "exam"])
    assert skipped == [] and [(s.name, s.kind) for s in sources] == [("exam_sa_cine", "dicom_slices")]
    study = load_study(sources[0])
    assert len(study.frames) == len(classic)
    rng = float(classic[0].image.max() - classic[0].image.min())
    for a, b in zip(study.frames, classic):
        np.testing.assert_allclose(a.geometry.affine, b.geometry.affine, atol=1e-4)
        np.testing.assert_allclose(a.image, b.image, atol=rng / 2000)
        assert a.meta["missing_slices"] == [] and a.name == "sa_cine"


def test_a_repeated_slice_keeps_the_later_series_and_says_so(phantom_dir, smoke_model, tmp_path):
    root = tmp_path / "exam"
    classic = _slice_series_tree(phantom_dir, root, subfolders=True)
    uid = pydicom.uid.generate_uid()
    (root / "series_002_again").mkdir()
    for f in sorted((root / "series_002").iterdir()):  # slice 3 acquired again, as series 99
        ds = pydicom.dcmread(str(f))
        ds.SeriesInstanceUID, ds.SeriesNumber, ds.SeriesDescription = uid, 99, "sa cine 3 repeat"
        ds.PixelData = (ds.pixel_array // 2).astype(np.uint16).tobytes()
        ds.save_as(str(root / "series_002_again" / f.name))
    sources, skipped = discover([root])
    assert [k.path.name for k in skipped] == ["series_002"]
    assert re.fullmatch(r"slice position -?[\d.]+ mm acquired again in series 99, which is used", skipped[0].reason)
    study = load_study(sources[0])
    k = 2 if not classic[0].geometry.slices_reversed else classic[0].num_slices - 3
    np.testing.assert_allclose(study.frames[1].image[k], classic[1].image[k] / 2, atol=0.05 * classic[1].image[k].max())
    out = tmp_path / "out"
    res = _segment("-i", root, "-o", out, "--model", smoke_model)
    assert res.returncode == 0, res.stderr[-2000:]
    summary = json.loads((out / "summary.json").read_text())
    assert len(summary["studies"]) == 1 and len(summary["skipped"]) == 1
    case = json.loads(next((out / "studies").glob("*.json")).read_text())
    assert case["frames"] == len(classic) and case["kind"] == "cine"


@pytest.mark.parametrize("sequence_names", [True, False])
def test_another_sequence_in_the_same_plane_is_not_taken_for_a_slice(tmp_path, sequence_names):
    """The sixth position's series is a T1 map's, not the cine's: told apart by the sequence
    name where the scanner writes one (then a cine slice with a frame less, as prospective
    triggering gives, still belongs), else by the number of frames."""
    frames = np.random.default_rng(0).random((6, 6, 64, 64)).astype(np.float32)
    write_dicom_series(frames, _plane(np.array([-1.0, 1.0, -1.0])), tmp_path / "exam", "cine",
                       layout="series_per_slice")
    for f in sorted((tmp_path / "exam").iterdir()):
        ds = pydicom.dcmread(str(f))
        if f.name.startswith("IM_005_"):
            ds.SeriesDescription = "T1 map"
            if sequence_names:
                ds.SequenceName = "tfl2d1"
            elif f.name.endswith("_005.dcm"):
                f.unlink()  # the map has 5 images, the cine's slices 6
                continue
        elif sequence_names:
            ds.SequenceName = "tfi2d1_12"
            if f.name == "IM_001_005.dcm":
                f.unlink()
                continue
        ds.save_as(str(f))
    sources, skipped = discover([tmp_path / "exam"])
    assert [(s.kind, len(s.paths)) for s in sources] == [("dicom_slices", 5 * 6 - sequence_names)]
    assert len(skipped) == 1 and str(skipped[0].path).endswith("series T1 map")
    assert skipped[0].reason.startswith("one slice position")
    if sequence_names:
        assert load_study(sources[0]).frames[-1].meta["missing_slices"]  # slice 2's lost last frame


def test_a_mapping_set_of_three_short_axis_slices_is_not_made_a_stack(tmp_path):
    """T1 mapping as often acquired: base, mid and apex, one series each, a few images each."""
    images = np.random.default_rng(0).random((8, 3, 64, 64)).astype(np.float32)
    write_dicom_series(images, _plane(np.array([-1.0, 1.0, -1.0]), (1.5, 1.5, 20.0)), tmp_path / "t1", "MOLLI",
                       layout="series_per_slice")
    sources, skipped = discover([tmp_path / "t1"])
    assert sources == [] and [k.reason.startswith("one slice position") for k in skipped] == [True] * 3


@pytest.mark.parametrize("kind", ["t1_mapping", "t2_mapping", "late_enhancement", "cine_without_times",
                                  "real_time_cine", "single_phase"])
def test_an_exam_folder_keeps_the_cine_and_skips_other_short_axis_sequences(tmp_path, kind):
    """A whole exam holds short-axis series of other sequences: images of one position at one
    trigger time that differ in inversion or echo time (T1, T2 mapping), or one image per
    position with an inversion time (late enhancement), are skipped with the reason; a cine
    whose files carry no trigger times, an ungated real-time cine (every trigger time 0), and a
    single phase without an inversion time are still segmented."""
    frames = 1 if kind in ("late_enhancement", "single_phase") else 8
    images = np.random.default_rng(0).random((frames, 6, 64, 64)).astype(np.float32)
    write_dicom_series(images, _plane(np.array([-1.0, 1.0, -1.0])), tmp_path / "series", kind)
    for f in sorted((tmp_path / "series").iterdir()):
        ds = pydicom.dcmread(str(f))
        if kind == "t1_mapping":
            ds.TriggerTime, ds.InversionTime = "410.0", str(100 + 80 * int(f.stem[-3:]))
        elif kind == "t2_mapping":
            ds.TriggerTime, ds.EchoTime = "410.0", str(10 + 15 * int(f.stem[-3:]))
        elif kind == "real_time_cine":
            ds.TriggerTime = "0"
        elif kind == "late_enhancement":
            ds.InversionTime = "300"
        elif kind == "cine_without_times":
            del ds.TriggerTime
        ds.save_as(str(f))
    sources, skipped = discover([tmp_path / "series"])
    mapping = "8 images per slice position at one trigger time, differing in {} time: a mapping series, not a cine"
    reasons = {"t1_mapping": mapping.format("inversion"), "t2_mapping": mapping.format("echo"),
               "late_enhancement": "one image per slice position, inversion time 300 ms: late enhancement, not a cine"}
    assert [k.reason for k in skipped] == ([reasons[kind]] if kind in reasons else [])
    assert len(sources) == (0 if kind in reasons else 1)


def test_an_enhanced_mapping_file_is_skipped_by_its_per_frame_inversion_times(tmp_path):
    """Enhanced MR keeps inversion times per frame (MRModifierSequence): a T1 mapping file of
    6 slices x 8 inversions at one trigger delay is skipped, not segmented as a cine."""
    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence

    images = np.random.default_rng(0).random((8, 6, 64, 64)).astype(np.float32)
    write_dicom_series(images, _plane(np.array([-1.0, 1.0, -1.0])), tmp_path / "t1", "MOLLI", layout="enhanced")
    path = tmp_path / "t1" / "IM_ENHANCED.dcm"
    ds = pydicom.dcmread(str(path))
    for i, frame in enumerate(ds.PerFrameFunctionalGroupsSequence):  # time-major: frame i is inversion i // 6
        frame.CardiacSynchronizationSequence[0].NominalCardiacTriggerDelayTime = 410.0
        modifier = Dataset()
        modifier.InversionTimes = [100.0 + 80.0 * (i // 6)]
        frame.MRModifierSequence = Sequence([modifier])
    ds.save_as(str(path))
    sources, skipped = discover([tmp_path / "t1"])
    assert sources == [] and [k.reason for k in skipped] == [
        "8 images per slice position at one trigger time, differing in inversion time: a mapping series, not a cine"]


def test_parallel_long_axis_cines_one_per_series_are_not_made_a_stack(tmp_path):
    lax_normal = np.cross([-1.0, 1.0, -1.0], [1.0, 1.0, 0.0])  # a plane that contains the long axis
    frames = np.random.default_rng(0).random((6, 5, 64, 64)).astype(np.float32)
    write_dicom_series(frames, _plane(lax_normal), tmp_path / "lax", "lax cine", layout="series_per_slice")
    sources, skipped = discover([tmp_path / "lax"])
    assert sources == [] and len(skipped) == 5
    assert all(k.reason.startswith("one slice position: a 2D cine of 6 frames") for k in skipped)


def test_ed_and_es_files_pair_into_one_study_with_ef(phantom_dir, smoke_model, tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    pdir = phantom_dir / "acdc" / "patient001"
    shutil.copy(pdir / "patient001_frame01.nii.gz", src / "subjectA_ED.nii.gz")
    shutil.copy(pdir / "patient001_frame01.nii.gz", src / "subjectB-ed.nii.gz")
    es = sorted(p for p in pdir.glob("patient001_frame*.nii.gz") if "_gt" not in p.name)[-1]
    shutil.copy(es, src / "subjectA_ES.nii.gz")
    shutil.copy(es, src / "subjectB-es.nii.gz")
    sources, _ = discover([src])
    assert [(s.name, s.phases) for s in sources] == [("subjectA", ["ED", "ES"]), ("subjectB", ["ED", "ES"])]
    study = load_study(sources[0])
    assert (study.ed, study.es) == (0, 1)
    out = tmp_path / "out"
    assert _segment("-i", src, "-o", out, "--model", smoke_model).returncode == 0
    rows = list(csv.DictReader(open(out / "measures.csv")))
    assert len(rows) == 2
    # the phases come from the names, and say so (issue 39: "header (Info.cfg / side files)" and
    # empty frame columns before)
    assert [(r["ED frame"], r["ES frame"], r["ED/ES from"]) for r in rows] == [
        ("subjectA_ED", "subjectA_ES", "file names (_ED / _ES)"), ("subjectB-ed", "subjectB-es", "file names (_ED / _ES)")]
    assert all(r["LVEF (%)"] for r in rows)


def test_a_lost_image_is_flagged_and_the_rest_segmented(phantom_dir, smoke_model, tmp_path):
    src = tmp_path / "sax"
    shutil.copytree(phantom_dir / "dicom" / "patient003", src)
    lost = sorted(src.glob("IM_003_*.dcm"))[2]  # slice position 3, third frame
    lost.unlink()
    frames = read_volumes(src)
    assert frames[2].meta["missing_slices"] != [] and frames[0].meta["missing_slices"] == []
    out = tmp_path / "out"
    res = _segment("-i", src, "-o", out, "--model", smoke_model)
    assert res.returncode == 0, res.stderr[-2000:]
    case = json.loads(next((out / "studies").glob("*.json")).read_text())
    assert [(f["frame"], f["slice"]) for f in case["flags"] if f["flag"] == "missing_image"] == [("frame 3", 3)]
    assert case["qc"] in ("review", "fail")


def test_2d_inputs_are_refused_with_one_line(tmp_path):
    lax = tmp_path / "lax_4d.nii.gz"
    write_nifti_image(np.random.default_rng(0).random((12, 1, 64, 64)).astype(np.float32) * 100,
                      np.diag([1.5, 1.5, 8.0, 1.0]), lax)
    sources, _ = discover([lax])
    with pytest.raises(InputError, match="one slice per frame"):
        load_study(sources[0])


@pytest.mark.parametrize("reverse", [False, True])
def test_the_anatomy_checks_the_order_read_and_flags_a_stack_stored_the_other_way(phantom_dir, tmp_path, reverse):
    """An axis-aligned stack (no geometry to go by: the file's order is kept when it is read)
    written base->apex or apex->base. The order is decided once, at reading; after segmentation
    the anatomy (LV and myocardium larger at the base) agrees, or says the base is at the other
    end and the study is flagged for review (``base_apex_unsure``) with the way out, never
    reordered; ``--slice-order reverse`` reads it the right way round."""
    pdir = phantom_dir / "acdc" / "patient001"  # the phantom's files run base -> apex
    img = nib.load(str(pdir / "patient001_frame01.nii.gz"))
    label = np.asanyarray(nib.load(str(pdir / "patient001_frame01_gt.nii.gz")).dataobj)
    data = np.asanyarray(img.dataobj)
    if reverse:
        data, label = data[:, :, ::-1], label[:, :, ::-1]
    zooms = img.header.get_zooms()
    src = tmp_path / "in"
    src.mkdir()
    nib.save(nib.Nifti1Image(np.ascontiguousarray(data), np.diag([*zooms[:3], 1.0])), str(src / "stack.nii.gz"))
    # a stand-in "model" that returns the truth, so the test is about the ordering alone
    from cmrseg.inference.predictor import Prediction
    from cmrseg.inference.segment import check_base_apex

    def said(slice_order):
        study = load_study(discover([src])[0][0], slice_order=slice_order)
        truth = np.ascontiguousarray(label.transpose(2, 1, 0))
        if study.frames[0].geometry.slices_reversed:
            truth = np.ascontiguousarray(truth[::-1])
        return study, check_base_apex(study, [Prediction(truth, None, 0.0)], slice_order)

    study, (how, flags) = said("auto")
    assert not study.frames[0].geometry.slices_reversed  # read in the file's order, whatever the anatomy
    if reverse:
        assert how == "geometry (the anatomy disagrees: flagged)" and [f["flag"] for f in flags] == ["base_apex_unsure"]
        n = study.frames[0].num_slices
        assert f"larger at k={n - 1}" in flags[0]["detail"] and "--slice-order reverse" in flags[0]["detail"]
        study, (how, flags) = said("reverse")
        assert study.frames[0].geometry.slices_reversed and how == "--slice-order reverse" and flags == []
    else:
        assert how == "geometry (the anatomy agrees)" and flags == []


def test_nifti_masks_made_from_dicom_have_units_and_the_frame_interval(phantom_dir, smoke_model, tmp_path):
    out = tmp_path / "out"
    assert _segment("-i", phantom_dir / "dicom" / "patient003", "-o", out, "--model", smoke_model).returncode == 0
    case = json.loads(next((out / "studies").glob("*.json")).read_text())
    img = nib.load(str(out / case["outputs"][0]))
    assert img.header.get_xyzt_units() == ("mm", "msec")
    assert img.header.get_zooms()[3] == pytest.approx(40.0)  # the phantom's trigger-time step
    assert "1 study segmented in this run" in _segment("-i", phantom_dir / "h5" / "val" / "patient004_frame01.h5",
                                                       "-o", tmp_path / "one", "--model", smoke_model).stdout


def test_non_conformant_dicom_values_do_not_flood_the_console(phantom_dir, tmp_path, capfd):
    import warnings

    src = tmp_path / "sax"
    shutil.copytree(phantom_dir / "dicom" / "patient003", src)
    for f in src.iterdir():  # as some scanners write them: a UI value with letters
        ds = pydicom.dcmread(str(f))
        ds.SeriesInstanceUID = "1.2.840.abc_1"  # read by discovery and the reader
        ds.save_as(str(f))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        frames = read_volumes(src)
    assert frames and not [w for w in caught if "pydicom" in str(w.filename) or "VR UI" in str(w.message)]
    assert "Invalid value" not in capfd.readouterr().err


def test_studies_sharing_a_file_name_keep_their_own_masks_across_shards(phantom_dir, smoke_model, tmp_path):
    """UK Biobank's layout: every subject's folder holds ``sa.nii.gz``. Each study is named after
    its folder too and writes into its own folder, decided alike in every shard, so one subject's
    mask never takes another's place (two shards each took the flat ``sa.nii.gz``, and the
    second replaced the first's)."""
    src = tmp_path / "ukb"
    for subject, f in (("1001", "patient001/patient001_4d.nii.gz"), ("1002", "patient002/patient002_frame01.nii.gz")):
        (src / subject).mkdir(parents=True)
        shutil.copy(phantom_dir / "acdc" / f, src / subject / "sa.nii.gz")
    out = tmp_path / "out"
    for shard in ("1/2", "2/2"):
        res = _segment("-i", src, "-o", out, "--model", smoke_model, "--shard", shard)
        assert res.returncode == 0, res.stderr[-2000:]
    cases = [json.loads(f.read_text()) for f in sorted((out / "studies").glob("*.json"))]
    assert len(cases) == 2 and all(c["status"] == "ok" for c in cases)
    assert len({c["outputs"][0] for c in cases}) == 2  # each study its own mask file ...
    for case in cases:  # ... in the geometry of its own input (a 4D cine and a 3D stack here)
        assert nib.load(out / case["outputs"][0]).shape == nib.load(case["source"]).shape, case
    assert sorted(c["study"] for c in cases) == ["1001_sa", "1002_sa"]
    assert sorted(c["outputs"][0] for c in cases) == ["1001_sa/sa.nii.gz", "1002_sa/sa.nii.gz"]


def test_names_that_still_collide_after_their_folder_is_added_are_numbered():
    sources = [StudySource("sa", "file", [Path(f"/data/{site}/x/sa.nii.gz")]) for site in ("A", "B")]
    sources.append(StudySource("sb", "file", [Path("/data/A/x/sb.nii.gz")]))
    sources.append(StudySource("p1", "dicom", [Path("/data/A/exam/p1/IM_1.dcm"), Path("/data/A/exam/p1/IM_2.dcm")]))
    sources.append(StudySource("p1", "dicom", [Path("/data/B/scan/p1/IM_1.dcm")]))
    unique_names(sources)
    assert [(s.name, s.own_folder) for s in sources] == [("x_sa", True), ("x_sa_2", True), ("sb", False),
                                                          ("exam_p1", True), ("scan_p1", True)]
