"""``cmrseg segment`` on phantom inputs in every format: geometry, measures, failures,
shards and skipping, ONNX parity, and the HTML report in a real headless browser."""

import csv
import json
import shutil
import subprocess
import sys

import numpy as np
import pytest

from cmrseg.data.io import read_volumes
from cmrseg.data.io.acdc import read_acdc_patient
from cmrseg.inference.options import InferenceOptions
from cmrseg.measures.metrics import dice_per_class


def _segment(*args):
    return subprocess.run([sys.executable, "-m", "cmrseg", "segment", *map(str, args), "--workers", "1"],
                          capture_output=True, text=True)


def test_every_format_keeps_its_geometry(phantom_dir, smoke_model, tmp_path):
    out = tmp_path / "out"
    acdc, dicom = phantom_dir / "acdc", phantom_dir / "dicom"
    single = tmp_path / "single"
    single.mkdir()
    shutil.copy(acdc / "patient003" / "patient003_frame01.nii.gz", single / "stack.nii.gz")
    res = _segment("-i", acdc / "patient001", acdc / "patient002" / "patient002_4d.nii.gz", dicom / "patient003",
                   phantom_dir / "h5" / "val", single / "stack.nii.gz", "-o", out, "--model", smoke_model)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "quality control: " in res.stdout
    pairs = [(acdc / "patient001" / "patient001_frame01.nii.gz", out / "patient001_frame01.nii.gz"),
             (acdc / "patient002" / "patient002_4d.nii.gz", out / "patient002_4d.nii.gz"),
             (dicom / "patient003", out / "patient003_SAX_cine.nii.gz"),
             (single / "stack.nii.gz", out / "stack.nii.gz"),
             (phantom_dir / "h5" / "val" / "patient004_frame01.h5", out / "patient004_frame01.h5")]
    import h5py
    import nibabel as nib

    for src, dst in pairs:
        assert dst.exists(), (dst, sorted(p.name for p in out.iterdir()))
        frames = read_volumes(src)
        if dst.suffix == ".h5":
            with h5py.File(dst) as fh:
                assert fh["label"].shape == frames[0].shape and fh["label"].dtype == np.uint8
            continue
        img = nib.load(str(dst))
        assert img.get_data_dtype() == np.uint8
        np.testing.assert_allclose(img.affine, frames[0].geometry.affine, atol=1e-4)
        expected = frames[0].shape[::-1] + ((len(frames),) if len(frames) > 1 else ())
        assert img.shape == expected, (dst, img.shape, expected)

    assert nib.load(str(out / "patient002_4d.nii.gz")).shape == nib.load(str(acdc / "patient002" / "patient002_4d.nii.gz")).shape
    summary = json.loads((out / "summary.json").read_text())
    assert summary["label_map"] == {"0": "background", "1": "RV", "2": "MYO", "3": "LV"}
    assert summary["failed"] == [] and sorted(summary["studies"]) == ["patient001", "patient002_4d", "patient003", "patient004", "stack"]
    rows = {r["study"]: r for r in csv.DictReader(open(out / "measures.csv"))}
    assert rows["patient001"]["ED/ES from"] == "Info.cfg" and rows["patient001"]["LVEF (%)"] != ""
    assert rows["patient002_4d"]["ED/ES from"] == "largest / smallest LV volume"
    assert rows["stack"]["LV volume (mL)"] != "" and rows["stack"]["LVEF (%)"] == ""
    for name, case in summary["studies"].items():  # which frames each mask file holds, which QC checked
        assert sorted(case["output_frames"]) == sorted(case["outputs"])
        assert set(case["qc_frames"]) <= {label for labels in case["output_frames"].values() for label in labels}
    frames_4d = summary["studies"]["patient002_4d"]["output_frames"]["patient002_4d.nii.gz"]
    n_frames = len(read_volumes(acdc / "patient002" / "patient002_4d.nii.gz"))
    assert frames_4d == [f"frame {t + 1}" for t in range(n_frames)]
    cine = summary["studies"]["patient002_4d"]  # QC checks the cine's ED and ES frames
    assert cine["qc_frames"] == sorted({f"frame {cine['ed_frame']}", f"frame {cine['es_frame']}"})
    for name, case in summary["studies"].items():  # the share of its masks the model expects wrong
        assert 0.0 <= case["uncertainty"] <= 1.0 and float(rows[name]["uncertainty (%)"]) == pytest.approx(
            100 * case["uncertainty"], abs=0.05)
    assert (out / "figures" / "patient002_4d_volumes.png").exists()
    assert (out / "figures" / "patient001_montage.png").exists()
    assert "data:image/png;base64" in (out / "report.html").read_text()


def test_measures_of_phantom_masks_match_the_analytic_volumes(phantom_dir):
    from cmrseg.inference.segment import study_measures

    truth = {(r["patient"], r["phase"]): r for r in csv.DictReader(open(phantom_dir / "truth.csv"))}
    for pid in ("patient001", "patient002", "patient003"):
        study = read_acdc_patient(phantom_dir / "acdc" / pid)
        m = study_measures(study, [f.label for f in study.frames])
        ed, es = truth[(pid, "ED")], truth[(pid, "ES")]
        checks = {"LVEDV (mL)": float(ed["LV (mL)"]), "LVESV (mL)": float(es["LV (mL)"]),
                  "RVEDV (mL)": float(ed["RV (mL)"]), "RVESV (mL)": float(es["RV (mL)"]),
                  "LVM (g)": float(ed["MYO (mL)"]) * 1.05}
        for key, want in checks.items():
            assert m["measures"][key] == pytest.approx(want, rel=0.03), (pid, key)
        lvef = (checks["LVEDV (mL)"] - checks["LVESV (mL)"]) / checks["LVEDV (mL)"] * 100
        assert m["measures"]["LVEF (%)"] == pytest.approx(lvef, abs=2.0)


def test_measures_indexed_to_body_surface_area_and_the_cardiac_output(phantom_dir, tmp_path):
    """Height and weight from Info.cfg or the DICOM header give BSA (Mosteller) and the indexed
    measures; a heart rate (HeartRate, or 60000 / NominalInterval) gives the LV cardiac output;
    a height given in the wrong unit is not used."""
    import pydicom

    from cmrseg.data.volume import Study
    from cmrseg.inference.segment import study_measures

    study = read_acdc_patient(phantom_dir / "acdc" / "patient001")
    info = dict(line.split(": ") for line in (phantom_dir / "acdc" / "patient001" / "Info.cfg").read_text().splitlines())
    m = study_measures(study, [f.label for f in study.frames])["measures"]
    bsa = np.sqrt(float(info["Height"]) * float(info["Weight"]) / 3600)
    assert m["BSA (m2)"] == pytest.approx(bsa)
    assert m["LVEDVi (mL/m2)"] == pytest.approx(m["LVEDV (mL)"] / bsa) and m["LVMi (g/m2)"] == pytest.approx(m["LVM (g)"] / bsa)
    assert "heart rate (bpm)" not in m and "LVCO (L/min)" not in m

    src = tmp_path / "sax"
    shutil.copytree(phantom_dir / "dicom" / "patient003", src)

    def measures_with(**tags):
        for f in src.glob("*.dcm"):
            ds = pydicom.dcmread(f)
            for tag, value in tags.items():
                setattr(ds, tag, value)
            ds.save_as(f)
        frames = read_volumes(src)
        masks = [np.zeros(v.shape, np.uint8) for v in frames]
        for t, mask in enumerate(masks):
            mask[2:5, 20:40, 20:40 - 2 * t] = 3  # the LV shrinks frame by frame
        return study_measures(Study("s", frames, src, "cine"), masks)["measures"]

    m = measures_with(PatientSize=1.80, PatientWeight=80, NominalInterval=1000)
    assert m["BSA (m2)"] == pytest.approx(2.0) and m["RVEDVi (mL/m2)"] == pytest.approx(m["RVEDV (mL)"] / 2.0)
    assert m["heart rate (bpm)"] == pytest.approx(60.0)
    assert m["LVCO (L/min)"] == pytest.approx(m["LVSV (mL)"] * 60 / 1000) and m["LVSV (mL)"] > 0
    m = measures_with(PatientSize=180, HeartRate=75)  # height in cm where metres belong: 18,000 cm
    assert "BSA (m2)" not in m and m["heart rate (bpm)"] == pytest.approx(75.0)


def test_the_montage_frames_the_slices_of_its_frames_that_flags_name(phantom_dir):
    from cmrseg.inference.study_outputs import montage_flags

    study = read_acdc_patient(phantom_dir / "acdc" / "patient001")
    ed, es = study.ed, study.es
    flags = [{"frame": study.frame_label(es), "slice": 2, "flag": "hole"},
             {"frame": "", "slice": 4, "flag": "missing_slice"},  # every frame
             {"frame": study.frame_label(ed), "slice": None, "flag": "no_heart"},  # no slice to frame
             {"frame": "frame 99", "slice": 1, "flag": "hole"}]  # a frame the montage does not show
    assert montage_flags(study, [ed, es], flags) == {(1, 2), (0, 4), (1, 4)}


def test_no_spacing_says_so_instead_of_inventing_ml(phantom_dir, smoke_model, tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    shutil.copy(phantom_dir / "h5" / "val" / "patient004_frame01.h5", src / "case_frame01.h5")
    shutil.copy(phantom_dir / "h5" / "val" / "patient004_frame02.h5", src / "case_frame02.h5")
    res = _segment("-i", src, "-o", tmp_path / "out", "--model", smoke_model, "--tta", "fast")
    assert res.returncode == 0, res.stderr
    row = next(csv.DictReader(open(tmp_path / "out" / "measures.csv")))
    assert row["LVEDV (mL)"] == "" and "no voxel spacing" in row["note"] and "no_spacing" in row["flags"]
    assert json.loads((tmp_path / "out" / "summary.json").read_text())["tta"] == "fast"  # recorded


def test_a_corrupt_file_fails_alone_and_leaves_nothing(phantom_dir, smoke_model, tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    for pid in ("patient001", "patient002"):
        shutil.copy(phantom_dir / "acdc" / pid / f"{pid}_frame01.nii.gz", src / f"{pid}.nii.gz")
    bad = src / "broken.nii.gz"
    data = (phantom_dir / "acdc" / "patient003" / "patient003_frame01.nii.gz").read_bytes()
    bad.write_bytes(data[: len(data) // 2])
    out = tmp_path / "out"
    res = _segment("-i", src, "-o", out, "--model", smoke_model)
    assert res.returncode == 1
    assert "broken.nii.gz" in res.stderr and "cannot read NIfTI" in res.stderr
    assert (out / "patient001.nii.gz").exists() and (out / "patient002.nii.gz").exists()
    assert not any("broken" in p.name for p in out.rglob("*") if p.suffix in (".gz", ".png"))
    summary = json.loads((out / "summary.json").read_text())
    assert summary["failed"] == ["broken"]
    assert "broken" in (out / "report.html").read_text()


@pytest.mark.slow
def test_shards_partition_and_finished_studies_are_skipped(phantom_dir, smoke_model, tmp_path):
    out = tmp_path / "out"
    inputs = [phantom_dir / "acdc" / p for p in ("patient001", "patient002", "patient003")]
    r1 = _segment("-i", *inputs, "-o", out, "--model", smoke_model, "--shard", "1/2")
    r2 = _segment("-i", *inputs, "-o", out, "--model", smoke_model, "--shard", "2/2")
    assert r1.returncode == r2.returncode == 0
    assert "3 studies" not in r1.stdout and len(json.loads((out / "summary.json").read_text())["studies"]) == 3
    stamp = (out / "patient001_frame01.nii.gz").stat().st_mtime_ns
    r3 = _segment("-i", *inputs, "-o", out, "--model", smoke_model)
    assert "3 already done" in r3.stdout
    assert (out / "patient001_frame01.nii.gz").stat().st_mtime_ns == stamp
    _segment("-i", inputs[0], "-o", out, "--model", smoke_model, "--overwrite")
    assert (out / "patient001_frame01.nii.gz").stat().st_mtime_ns != stamp
    # asking for an optional output the finished studies lack redoes them, and only once
    r4 = _segment("-i", *inputs[:2], "-o", out, "--model", smoke_model, "--save-probabilities")
    assert "0 already done" in r4.stdout and (out / "patient002_frame01_probabilities.npz").is_file()
    r5 = _segment("-i", *inputs[:2], "-o", out, "--model", smoke_model, "--save-probabilities")
    assert "2 already done" in r5.stdout


def test_onnx_runtime_masks_match_pytorch(phantom_dir, smoke_model, tmp_path):
    from cmrseg.data.io import load_labelled_dataset
    from cmrseg.inference.predictor import Predictor

    res = subprocess.run([sys.executable, "-m", "cmrseg", "export-onnx", "--model", str(smoke_model), "-o",
                          str(tmp_path / "onnx")], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-2000:]
    torch_p = Predictor.from_path(smoke_model, InferenceOptions(device="cpu", precision="fp32"))  # onnxruntime runs float32
    onnx_p = Predictor.from_path(tmp_path / "onnx", InferenceOptions(backend="onnx"))
    for vol in load_labelled_dataset(phantom_dir / "h5" / "train")[:3]:
        a, b = torch_p.predict_volume(vol).mask, onnx_p.predict_volume(vol).mask
        d = dice_per_class(b, a)
        assert np.nanmin(np.nan_to_num(d, nan=1.0)) >= 0.999, d
        assert (a == b).mean() > 0.999


def test_report_renders_in_headless_chromium(phantom_dir, smoke_model, tmp_path):
    browser = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    if browser is None:
        pytest.skip("no headless browser installed (CI installs chromium)")
    out = tmp_path / "out"
    assert _segment("-i", phantom_dir / "acdc" / "patient001", "-o", out, "--model", smoke_model).returncode == 0
    shot = tmp_path / "shot.png"
    res = subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                          "--disable-component-update", "--no-first-run", f"--user-data-dir={tmp_path / 'profile'}",
                          f"--screenshot={shot}", "--window-size=1200,900", (out / "report.html").as_uri()],
                         capture_output=True, text=True, timeout=120)
    assert shot.exists() and shot.stat().st_size > 10_000, res.stderr[-2000:]
    from PIL import Image

    img = np.asarray(Image.open(shot).convert("RGB")).astype(float)
    assert img.std() > 10  # not a blank page
    dom = subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                          f"--user-data-dir={tmp_path / 'profile2'}", "--dump-dom", (out / "report.html").as_uri()],
                         capture_output=True, text=True, timeout=120).stdout
    assert "patient001" in dom and "LVEF" in dom


@pytest.mark.parametrize("stored_apex_first", [True, False])
def test_saved_probabilities_are_the_masks_in_the_mask_files_voxel_order(phantom_dir, tmp_path, intensity_predictor,
                                                                           stored_apex_first):
    """``--save-probabilities`` on a cine in an oblique plane whose affine says its slices run
    apex -> base (the reader turns it round; the stand-in's masks leave the anatomy rule
    undecided or agreeing, whichever way the images are stored): the argmax of the saved
    probabilities is the written mask, voxel for voxel (a stand-in network that labels by
    intensity, so every slice's mask differs). The turn by the anatomy alone:
    ``test_discovery.py``'s ``test_base_and_apex_come_from_the_anatomy_in_either_file_order``."""
    import nibabel as nib

    from cmrseg.data.io.discovery import discover, load_study
    from cmrseg.data.orientation import APEX_DIRECTION_RAS
    from cmrseg.inference.options import SegmentOptions
    from cmrseg.inference.segment import Batch, process_study

    img = nib.load(str(phantom_dir / "acdc" / "patient002" / "patient002_4d.nii.gz"))
    z = -APEX_DIRECTION_RAS
    x = np.cross(z, [0.0, 0.0, 1.0])
    x /= np.linalg.norm(x)
    affine = np.eye(4)
    affine[:3, :3] = np.stack([x, np.cross(z, x), z], axis=1) * np.asarray(img.header.get_zooms()[:3])
    src, out = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    out.mkdir()
    data = np.asanyarray(img.dataobj)  # the phantom's slices run base -> apex
    nib.save(nib.Nifti1Image(np.ascontiguousarray(data[:, :, ::-1] if stored_apex_first else data), affine),
             str(src / "cine.nii.gz"))
    record = process_study(load_study(discover([src])[0][0]),
                           Batch(out, SegmentOptions(save_probabilities=True), intensity_predictor(postprocess="none")))
    saved = np.load(out / "cine_probabilities.npz")
    probs, mask = saved["probabilities"], np.asanyarray(nib.load(str(out / "cine.nii.gz")).dataobj)
    assert record["base_slice_k"] == mask.shape[2] - 1  # held reversed (the base is the last k): writers turn it back
    assert len({int((mask[:, :, k, 0] > 0).sum()) for k in range(mask.shape[2])}) > 3  # the slices differ
    assert probs.dtype == np.float16 and probs.shape == (mask.shape[3], 4, *mask.shape[2::-1])
    assert list(saved["frames"]) == [f"frame {t + 1}" for t in range(mask.shape[3])]
    np.testing.assert_allclose(probs.astype(np.float32).sum(axis=1), 1.0, atol=5e-3)
    agree = (probs.argmax(axis=1) == mask.transpose(3, 2, 1, 0)).mean()
    assert agree > 0.999, agree  # float16 rounding may break a near-tie
    assert "cine_probabilities.npz" in record["outputs"]
