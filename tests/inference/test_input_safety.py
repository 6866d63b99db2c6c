"""Never destroy input, never run the wrong model, never report wrong volumes in silence
(issue 13): each case of the hostile battery, made synthetically."""

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from cmrseg.data.io import read_volumes
from cmrseg.data.io.dicom import write_dicom_series
from cmrseg.errors import InputError


def _cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "cmrseg", *map(str, args)], capture_output=True, text=True, cwd=cwd)


def _segment(*args, cwd=None):
    return _cli("segment", *args, "--workers", "1", cwd=cwd)


def _one_line(res, *fragments):
    err = res.stderr.strip()
    assert res.returncode == 2, (res.returncode, res.stdout[-500:], err[-1500:])
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    for f in fragments:
        assert f in err, (f, err)


def _checksums(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def _cases(phantom_dir, dst: Path) -> Path:
    """A folder of inputs in every format: NIfTI frames, a 4D NIfTI, h5, a DICOM series."""
    dst.mkdir()
    shutil.copytree(phantom_dir / "acdc" / "patient001", dst / "patient001")
    shutil.copy(phantom_dir / "acdc" / "patient002" / "patient002_4d.nii.gz", dst / "cine_4d.nii.gz")
    shutil.copy(phantom_dir / "h5" / "val" / "patient004_frame01.h5", dst / "stack.h5")
    shutil.copytree(phantom_dir / "dicom" / "patient003", dst / "dicom_sax")
    return dst


def test_output_folder_that_is_or_holds_an_input_is_refused(phantom_dir, smoke_model, tmp_path):
    data = _cases(phantom_dir, tmp_path / "data")
    before = _checksums(data)
    _one_line(_segment("-i", data, "-o", data, "--model", smoke_model), "is the input")
    _one_line(_segment("-i", data, "-o", data / "masks", "--model", smoke_model), "inside the input folder")
    _one_line(_segment("-i", data / "cine_4d.nii.gz", "-o", data, "--model", smoke_model), "holds the input")
    _one_line(_segment("-i", data / "dicom_sax", "-o", data / "dicom_sax", "--model", smoke_model), "is the input")
    assert _checksums(data) == before and not (data / "masks").exists() and not (data / "studies").exists()


def test_whole_cli_over_a_read_only_copy_changes_no_input_byte(phantom_dir, smoke_model, tmp_path):
    data = _cases(phantom_dir, tmp_path / "data")
    for p in data.rglob("*"):
        p.chmod(0o555 if p.is_dir() else 0o444)
    data.chmod(0o555)
    before = _checksums(data)
    try:
        res = _segment("-i", data, "-o", tmp_path / "out", "--model", smoke_model)
        assert res.returncode == 0, res.stderr[-2000:]
        assert _cli("evaluate", "--pred", tmp_path / "out", "--gt", phantom_dir / "h5" / "val",
                    "-o", tmp_path / "ev").returncode in (0, 2)
        assert _checksums(data) == before
        assert len(json.loads((tmp_path / "out" / "summary.json").read_text())["studies"]) == 4
    finally:
        for p in [data, *data.rglob("*")]:
            p.chmod(0o755 if p.is_dir() else 0o644)


def test_a_file_cmrseg_did_not_write_is_never_replaced(phantom_dir, smoke_model, tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    shutil.copy(phantom_dir / "acdc" / "patient001" / "patient001_frame01.nii.gz", src / "stack.nii.gz")
    out = tmp_path / "out"
    out.mkdir()
    (out / "stack.nii.gz").write_bytes(b"someone else's file")
    res = _segment("-i", src, "-o", out, "--model", smoke_model)
    assert res.returncode == 1 and "was not written by cmrseg" in res.stderr
    assert (out / "stack.nii.gz").read_bytes() == b"someone else's file"
    # its own outputs are replaced on --overwrite
    (out / "stack.nii.gz").unlink()
    assert _segment("-i", src, "-o", out, "--model", smoke_model).returncode == 0
    assert _segment("-i", src, "-o", out, "--model", smoke_model, "--overwrite").returncode == 0


def test_a_failed_rerun_keeps_the_earlier_runs_files_its_own(phantom_dir, smoke_model, tmp_path):
    """A rerun that fails on a study (its input broken meanwhile) records the failure and keeps
    the earlier run's files of that study listed as the tool's, so the run after the input is
    mended replaces them instead of refusing them as a user's files."""
    src, out = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    good = (phantom_dir / "acdc" / "patient001" / "patient001_frame01.nii.gz").read_bytes()
    (src / "stack.nii.gz").write_bytes(good)
    assert _segment("-i", src, "-o", out, "--model", smoke_model).returncode == 0
    (src / "stack.nii.gz").write_bytes(good[: len(good) // 2])  # truncated
    res = _segment("-i", src, "-o", out, "--model", smoke_model, "--overwrite")
    assert res.returncode == 1 and "stack.nii.gz" in res.stderr
    record = json.loads((out / "studies" / "stack.json").read_text())
    assert record["status"] == "failed" and "stack.nii.gz" in record["kept"]
    assert any(k.startswith("figures/") for k in record["kept"])
    (src / "stack.nii.gz").write_bytes(good)
    res = _segment("-i", src, "-o", out, "--model", smoke_model)
    assert res.returncode == 0, res.stderr[-800:]
    assert json.loads((out / "studies" / "stack.json").read_text())["status"] == "ok"


_KILLED_WHILE_DRAWING = """
import os, sys
from cmrseg.inference import study_outputs

def killed(self, *args, **kwargs):  # the masks are written; the process dies as SIGKILL kills it
    os._exit(137)

study_outputs.StudyWriter.figures = killed
from cmrseg.cli import main
sys.exit(main())
"""


def test_a_run_killed_mid_study_leaves_files_the_next_run_replaces(phantom_dir, smoke_model, tmp_path):
    """A run killed between a study's first file and its record (SIGKILL, out of memory) has
    listed each file in the study's journal before writing it: the rerun replaces them instead of
    refusing them as a user's files, and removes the journal with the study's record."""
    src, out = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    shutil.copy(phantom_dir / "acdc" / "patient001" / "patient001_frame01.nii.gz", src / "stack.nii.gz")
    killed = subprocess.run([sys.executable, "-c", _KILLED_WHILE_DRAWING, "segment", "-i", str(src), "-o", str(out),
                             "--model", str(smoke_model), "--workers", "1"], capture_output=True, text=True)
    assert killed.returncode == 137 and (out / "stack.nii.gz").is_file(), killed.stderr[-800:]
    assert not (out / "studies" / "stack.json").exists()
    assert json.loads((out / "studies" / ".writing" / "stack.json").read_text())["writing"] == ["stack.nii.gz"]
    # a rerun that fails on the study (its input broken meanwhile) keeps what the killed run left listed
    good = (src / "stack.nii.gz").read_bytes()
    (src / "stack.nii.gz").write_bytes(good[: len(good) // 2])
    res = _segment("-i", src, "-o", out, "--model", smoke_model)
    assert res.returncode == 1 and json.loads((out / "studies" / "stack.json").read_text())["kept"] == ["stack.nii.gz"]
    (src / "stack.nii.gz").write_bytes(good)
    res = _segment("-i", src, "-o", out, "--model", smoke_model)
    assert res.returncode == 0, res.stderr[-800:]
    assert json.loads((out / "studies" / "stack.json").read_text())["status"] == "ok"
    assert not (out / "studies" / ".writing").exists()  # the journals' folder goes once empty
    # a file no run listed is still refused
    (out / "studies" / "stack.json").unlink()
    res = _segment("-i", src, "-o", out, "--model", smoke_model)
    assert res.returncode == 1 and "was not written by cmrseg" in res.stderr


def test_a_folder_with_someone_elses_measures_csv_is_refused(phantom_dir, smoke_model, tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "measures.csv").write_text("my spreadsheet")
    _one_line(_segment("-i", phantom_dir / "acdc" / "patient001", "-o", out, "--model", smoke_model),
              "not written by cmrseg segment")
    assert (out / "measures.csv").read_text() == "my spreadsheet"


def test_bad_output_paths_give_one_line(phantom_dir, smoke_model, tmp_path):
    src = phantom_dir / "acdc" / "patient001"
    afile = tmp_path / "afile"
    afile.write_text("x")
    _one_line(_segment("-i", src, "-o", afile, "--model", smoke_model), "existing file")
    _one_line(_segment("-i", src, "-o", afile / "sub", "--model", smoke_model), "cannot write to the output folder")


def test_a_folder_named_like_the_shipped_model_does_not_replace_it(phantom_dir, smoke_model, tmp_path):
    from cmrseg.inference.predictor import DEFAULT_MODEL, resolve_model

    work = tmp_path / "cwd"
    work.mkdir()
    shutil.copytree(smoke_model, work / DEFAULT_MODEL)
    shutil.copytree(smoke_model, work / "myrun")
    cwd = os.getcwd()
    os.chdir(work)
    try:
        assert resolve_model(None)[1] == "shipped" and resolve_model(DEFAULT_MODEL)[1] == "shipped"
        assert resolve_model(f"./{DEFAULT_MODEL}") == (Path(f"./{DEFAULT_MODEL}"), "folder")
        assert resolve_model("myrun") == (Path("myrun"), "folder")
        with pytest.raises(Exception, match="neither a shipped model nor a model folder"):
            resolve_model("nothing_here")
    finally:
        os.chdir(cwd)
    out = tmp_path / "out"
    res = _segment("-i", phantom_dir / "h5" / "val" / "patient004_frame01.h5", "-o", out, cwd=work)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "(shipped:" in res.stdout
    summary = json.loads((out / "summary.json").read_text())
    assert summary["model_source"] == "shipped" and "cmrseg/weights" in summary["model_path"]


def _dicom_stack(folder: Path, slices: int = 8, spacing: float = 10.0) -> None:
    """A double-oblique short-axis series: 2 frames of ``slices`` slices, 1.5 mm pixels."""
    rng = np.random.default_rng(3)
    apex = np.array([-1.0, 1.0, -1.0]) / np.sqrt(3.0)
    u = np.cross([0.0, 0.0, 1.0], apex)
    u /= np.linalg.norm(u)
    affine = np.eye(4)
    affine[:3, 0], affine[:3, 1], affine[:3, 2] = u * 1.5, np.cross(apex, u) * 1.5, apex * spacing
    frames = np.cumsum(rng.random((2, slices, 48, 48)), axis=1).astype(np.float32) * 10
    write_dicom_series(frames, affine, folder)


def test_dicom_series_with_a_missing_slice_keeps_its_geometry(tmp_path):
    full, gap = tmp_path / "full", tmp_path / "gap"
    _dicom_stack(full)
    shutil.copytree(full, gap)
    for f in gap.glob("IM_003_*.dcm"):  # slice position 3 lost
        f.unlink()
    a, b = read_volumes(full), read_volumes(gap)
    np.testing.assert_allclose(b[0].geometry.affine, a[0].geometry.affine, atol=1e-4)
    assert b[0].shape == a[0].shape
    k = b[0].meta["missing_slices"]
    assert len(k) == 1
    present = [s for s in range(a[0].shape[0]) if s != k[0]]
    np.testing.assert_allclose(b[0].image[present], a[0].image[present], rtol=1e-3, atol=0.05)
    # a position off the regular grid is refused with one line
    odd = tmp_path / "odd"
    shutil.copytree(full, odd)
    import pydicom

    for f in odd.glob("IM_007_*.dcm"):
        ds = pydicom.dcmread(str(f))
        pos = np.array([float(v) for v in ds.ImagePositionPatient])
        ds.ImagePositionPatient = [f"{v:.6f}" for v in pos + 4.0 * np.cross(
            [float(v) for v in ds.ImageOrientationPatient[:3]], [float(v) for v in ds.ImageOrientationPatient[3:]])]
        ds.save_as(str(f))
    with pytest.raises(InputError, match="irregular slice positions"):
        read_volumes(odd)


def test_missing_slice_is_flagged_at_its_voxel_index_and_volumes_interpolate_it(phantom_dir, smoke_model, tmp_path):
    src = tmp_path / "sax"
    shutil.copytree(phantom_dir / "dicom" / "patient003", src)
    files = sorted(src.glob("IM_004_*.dcm"))
    assert files
    for f in files:
        f.unlink()
    out = tmp_path / "out"
    res = _segment("-i", src, "-o", out, "--model", smoke_model)
    assert res.returncode == 0, res.stderr[-2000:]
    case = json.loads(next((out / "studies").glob("*.json")).read_text())
    flags = [f for f in case["flags"] if f["flag"] == "missing_slice"]
    assert len(flags) == 1, case["flags"]
    import nibabel as nib

    mask = np.asanyarray(nib.load(str(out / case["outputs"][0])).dataobj)  # [X, Y, Z(, T)]
    full = read_volumes(phantom_dir / "dicom" / "patient003")
    assert mask.shape[2] == full[0].shape[0]  # the slice stays in the stack, in its place
    k = flags[0]["slice"]
    assert mask[:, :, k].max() == 0 and mask[:, :, [j for j in range(mask.shape[2]) if j != k]].max() > 0
    # the written mask's slice k is the file's position 4 (IM_004): geometry of the full series
    np.testing.assert_allclose(nib.load(str(out / case["outputs"][0])).affine, full[0].geometry.affine, atol=1e-4)


def _nifti(path, pixdim, affine_sizes, shape=(48, 48, 6)):
    import nibabel as nib

    img = nib.Nifti1Image(np.random.default_rng(0).random(shape).astype(np.float32) * 100,
                          np.diag([*affine_sizes, 1.0]))
    img.header["pixdim"][1:4] = pixdim
    nib.save(img, str(path))
    return path


@pytest.mark.parametrize("pixdim, fragment", [((0.0, 0.0, 0.0), "voxel size is unknown"),
                                              ((1.5, 1.5, 0.1), "outside 0.5-30 mm"),
                                              ((50.0, 50.0, 8.0), "outside 0.1-5 mm"),
                                              ((1.5, 1.5, float("nan")), "voxel size is unknown")])
def test_implausible_nifti_spacing_is_refused(tmp_path, pixdim, fragment):
    plausible = all(np.isfinite(v) and v > 0 for v in pixdim)
    p = _nifti(tmp_path / "bad.nii.gz", pixdim, affine_sizes=pixdim if plausible else (1.5, 1.5, 8.0))
    with pytest.raises(InputError) as err:
        read_volumes(p)
    assert str(p) in str(err.value) and fragment in str(err.value) and "--spacing" in str(err.value)
    # the way out works: an explicit, plausible voxel size
    (vol,) = read_volumes(p, spacing=(8.0, 1.5, 1.5))
    assert vol.geometry.spacing == (8.0, 1.5, 1.5) and vol.geometry.spacing_source == "option"


def test_pixdim_and_affine_that_disagree_are_refused(tmp_path):
    p = _nifti(tmp_path / "mixed.nii.gz", (1.0, 1.0, 1.0), affine_sizes=(1.5, 1.5, 8.0))
    with pytest.raises(InputError, match="disagree"):
        read_volumes(p)


@pytest.mark.parametrize("value", ["0", "-1.5", "nan"])
def test_bad_spacing_in_metadata_csv_is_refused(phantom_dir, tmp_path, value):
    src = tmp_path / "h5"
    src.mkdir()
    shutil.copy(phantom_dir / "h5" / "val" / "patient004_frame01.h5", src)
    (src / "metadata.csv").write_text(f"patient,pixel_mm,slice_spacing_mm\npatient004,1.5,{value}\n")
    with pytest.raises(InputError) as err:
        read_volumes(src / "patient004_frame01.h5")
    assert "metadata.csv" in str(err.value) and "patient004" in str(err.value)


def test_bad_spacing_option_gives_one_line(phantom_dir, tmp_path):
    for values in (["nan", "1", "8"], ["0", "1", "8"], ["1.5", "1.5", "0.1"]):
        res = _segment("-i", phantom_dir / "h5" / "val", "-o", tmp_path / "o", "--spacing", *values)
        _one_line(res, "spacing")
        assert not (tmp_path / "o").exists()


def test_working_set_is_bounded(tmp_path):
    from cmrseg.data.preprocessing import PreprocessConfig, preprocess_image
    from cmrseg.data.validation import MAX_STACK_VOXELS

    # 4.9 mm pixels (plausible) on a large matrix: resampled to 1.6 mm it would not fit
    image = np.zeros((30, 800, 800), dtype=np.float32)
    assert 30 * (800 * 4.9 / 1.6) ** 2 > MAX_STACK_VOXELS
    with pytest.raises(InputError, match="larger than"):
        preprocess_image(image, (4.9, 4.9), PreprocessConfig(1.6, 192), where=tmp_path / "big.nii.gz")
    import nibabel as nib

    big = tmp_path / "huge.nii"
    img = nib.Nifti1Image(np.zeros((2, 2, 2), np.uint8), np.eye(4))
    img.header.set_data_shape((1000, 1000, 20, 10))  # 200 M voxels announced by the header
    with open(big, "wb") as fh:
        fh.write(img.header.binaryblock)
    with pytest.raises(InputError, match="voxels"):
        read_volumes(big)


def test_killed_segment_leaves_no_reader_processes(phantom_dir, smoke_model, tmp_path):
    src = tmp_path / "many"
    src.mkdir()
    for i in range(12):
        shutil.copy(phantom_dir / "acdc" / "patient002" / "patient002_4d.nii.gz", src / f"cine{i}_4d.nii.gz")
    marker = tmp_path / f"orphan-check-{os.getpid()}"
    for sig in (signal.SIGTERM, signal.SIGKILL):
        proc = subprocess.Popen([sys.executable, "-m", "cmrseg", "segment", "-i", str(src), "-o", str(marker),
                                 "--model", str(smoke_model), "--workers", "2"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.time() + 120  # kill once the readers are busy: the first study is done
        while proc.poll() is None and time.time() < deadline and not list(marker.glob("studies/*.json")):
            time.sleep(0.1)
        assert proc.poll() is None, proc.stderr.read()[-1000:]
        proc.send_signal(sig)
        proc.wait(timeout=60)
        time.sleep(1.0)  # PR_SET_PDEATHSIG acts at once; torch's own watchdog would take up to 5 s
        left = subprocess.run(["pgrep", "-f", str(marker)], capture_output=True, text=True).stdout.split()
        assert left == [], (sig, left)


def test_broken_records_and_temporary_files_do_not_break_a_folder(phantom_dir, smoke_model, tmp_path):
    out = tmp_path / "out"
    inputs = [phantom_dir / "acdc" / p for p in ("patient001", "patient002")]
    assert _segment("-i", inputs[0], "-o", out, "--model", smoke_model, "--shard", "1/1").returncode == 0
    (out / "studies" / ".tmp-1234abcd-patient009.json").write_text('{"study": "patient009", "sta')
    (out / "studies" / "broken.json").write_text("{not json")
    r1 = _segment("-i", *inputs, "-o", out, "--model", smoke_model, "--shard", "1/2")
    r2 = _segment("-i", *inputs, "-o", out, "--model", smoke_model, "--shard", "2/2")
    assert r1.returncode == r2.returncode == 0, r1.stderr[-1000:] + r2.stderr[-1000:]
    assert "unreadable record skipped" in r1.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert sorted(summary["studies"]) == ["patient001", "patient002"]
    assert summary["shards"] == ["1/1", "1/2", "2/2"]


def test_training_values_and_yaml_tags_are_checked_before_anything_is_written(phantom_dir, tmp_path):
    run = tmp_path / "run"
    res = _cli("train", "--model", "seg_ss", "--protocol", "smoke", "--data", phantom_dir / "h5", "--out", run,
               "--epochs", "-3")
    _one_line(res, "'epochs' must be a whole number >= 1")
    res = _cli("train", "--model", "seg_ss", "--protocol", "smoke", "--data", phantom_dir / "h5", "--out", run,
               "--set", "lr=!!python/object/apply:os.system [echo hi]")
    _one_line(res, "invalid value")
    res = _cli("train", "--model", "seg_ss", "--protocol", "smoke", "--data", tmp_path / "nodata", "--out", run)
    _one_line(res, "nodata")
    assert not run.exists()  # no config.yaml left behind by a failed start


def test_invalid_onnx_model_gives_one_line(phantom_dir, smoke_model, tmp_path):
    folder = tmp_path / "onnx"
    folder.mkdir()
    shutil.copy(smoke_model / "model.json", folder / "model.json")
    (folder / "model.onnx").write_bytes(b"not a graph")
    res = _segment("-i", phantom_dir / "h5" / "val", "-o", tmp_path / "out", "--model", folder, "--backend", "onnx")
    _one_line(res, "model.onnx", "cannot load the ONNX model")


def test_atomic_writes_are_flushed_to_disk(tmp_path, monkeypatch):
    from cmrseg import atomic

    synced = []
    real = os.fsync
    monkeypatch.setattr(atomic.os, "fsync", lambda fd: (synced.append(fd), real(fd)))
    atomic.write_json(tmp_path / "a.json", {"x": 1})
    assert len(synced) == 2  # the file, then its folder
    assert json.loads((tmp_path / "a.json").read_text()) == {"x": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["a.json"]


def test_a_clean_up_stuck_on_a_lock_after_sigterm_or_ctrl_c_still_ends_the_process(tmp_path):
    """A signal's exception can land while a lock is held and never released (inside a
    ``with``'s ``__enter__``); a clean-up that then waits on that lock, as the DataLoader's
    shutdown of its readers did once (a ``cmrseg segment`` still waiting 85 minutes after SIGTERM),
    must not hang the process: it ends after ``TERM_GRACE_S`` with the signal's exit code."""
    script = tmp_path / "stuck.py"
    script.write_text(
        "import argparse, os, signal, sys, threading, time\n"
        "from cmrseg import cli\n"
        "cli.TERM_GRACE_S = 1.0\n"
        "lock = threading.Lock()\n"
        "def stuck(args):\n"
        "    lock.acquire()  # held when the signal lands, as the reader queue's was\n"
        "    try:\n"
        "        os.kill(os.getpid(), getattr(signal, sys.argv[1]))\n"
        "        time.sleep(30)\n"
        "    finally:\n"
        "        lock.acquire()  # the clean-up waits on it\n"
        "def parser():\n"
        "    p = argparse.ArgumentParser()\n"
        "    p.set_defaults(func=stuck)\n"
        "    return p\n"
        "cli.build_parser = parser\n"
        "sys.exit(cli.main([]))\n")
    for sig, code in (("SIGTERM", 143), ("SIGINT", 130)):
        t0 = time.time()
        res = subprocess.run([sys.executable, str(script), sig], capture_output=True, text=True, timeout=60)
        assert res.returncode == code and time.time() - t0 < 20, (sig, res.returncode, res.stderr[-1000:])
        assert "clean-up did not finish in time" in res.stderr


def test_a_reader_busy_when_its_parent_is_killed_dies_with_it(tmp_path):
    """The mechanism itself, with a reader that would otherwise sleep for a minute."""
    script = tmp_path / "parent.py"
    script.write_text(
        "import multiprocessing as mp, sys, time\n"
        "from cmrseg.inference.segment import _DieWithParent\n"
        "def child(init):\n"
        "    init(0)\n"
        "    time.sleep(60)\n"
        "if __name__ == '__main__':\n"
        "    mp.set_start_method('fork')\n"
        "    p = mp.Process(target=child, args=(_DieWithParent(),))\n"
        "    p.start()\n"
        "    print(p.pid, flush=True)\n"
        "    time.sleep(60)\n")
    parent = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
    child = int(parent.stdout.readline())
    time.sleep(0.5)  # the child has called prctl
    parent.kill()
    parent.wait()
    time.sleep(0.5)
    assert _state(child) in (None, "Z"), _state(child)  # gone, or dead and not yet reaped


def _state(pid: int) -> str | None:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return None
