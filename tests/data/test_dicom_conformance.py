"""The DICOM reader against the field's reference converter, dcm2niix (issue 39).

For every series of ``../shared/data/dicom_qa/`` (real Siemens, Philips and GE files from
dcm2niix's own validation corpora) and for every kind of DICOM fixture this suite writes (a
classic cine, the same on disk in the other slice direction, an Enhanced MR file, a stack stored
one series per slice, a series with a lost slice position), dcm2niix converts the files and
every voxel of its NIfTI is looked up in cmrseg's volume at the same world point: the voxel
centres agree within 0.01 mm and the values are equal.

Where the two differ, the standard decides, and the test says so:

* values: both give the Modality LUT's values (Rescale Slope / Intercept, PS3.3 C.11.1):
  cmrseg applies it, dcm2niix stores it as the NIfTI's scl_slope / scl_inter, which nibabel
  applies. Philips' private "precise value" scaling (2005,100E) is applied by neither (dcm2niix
  reports it in its JSON);
* a lost slice position: dcm2niix stacks the images it has on a regular grid from the first
  spacing, so every slice after the gap sits one step away from the ImagePositionPatient its
  image states (PS3.3 C.7.6.2.1.1: the position of the image's first voxel centre); cmrseg
  keeps each slice at its stated position and the lost one empty, so it agrees with dcm2niix
  before the gap and with the images' own positions everywhere;
* a Siemens mosaic (the transfer-syntax images, an EPI volume of 35 slices tiled into one
  384 x 384 image): dcm2niix cuts the tiles apart using Siemens' private CSA header; the
  standard stores one 384 x 384 image, which cmrseg decodes (all nine transfer syntaxes to the
  same pixels, each tile equal to dcm2niix's slice) and refuses with its one line for a single
  image: a mosaic is EPI, never a cine.

The folder ``../shared/data/dicom_qa`` is read in place, never copied; the tests that need it
skip with a message where it is absent.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest

from cmrseg.data.io import read_volumes
from cmrseg.data.io.dicom import scan_series, write_dicom_series
from cmrseg.data.io.discovery import discover
from cmrseg.data.orientation import reverse_affine

QA = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "dicom_qa"
WORLD_MM = 0.01


def _dcm2niix() -> str:
    exe = shutil.which("dcm2niix") or str(Path(sys.executable).parent / "dcm2niix")
    if not Path(exe).is_file():
        pytest.fail("dcm2niix (the PyPI package, a dev dependency) is not installed")
    return exe


def _qa(folder: str) -> Path:
    path = QA / folder
    if not path.is_dir():
        pytest.skip(f"real vendor DICOM not present at {path}")
    return path


def convert(folder: Path, out: Path) -> list[Path]:
    """dcm2niix's NIfTI files of the DICOM files in ``folder`` (one per series it finds)."""
    out.mkdir(parents=True, exist_ok=True)
    res = subprocess.run([_dcm2niix(), "-z", "n", "-b", "n", "-f", "%s_%j", "-o", str(out), str(folder)],
                         capture_output=True, text=True)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    return sorted(out.glob("*.nii"))


def world_mismatch(frames, reference: Path) -> tuple[np.ndarray, int]:
    """Every voxel of dcm2niix's ``reference`` NIfTI looked up in cmrseg's ``frames`` at its world
    point. Returns the distance (mm) from each of the reference's slices to the nearest voxel
    centre of cmrseg's grid (the worst over the slice), and the number of voxels whose values
    agree, asserted for every slice whose centres agree."""
    img = nib.load(str(reference))
    ref = np.asanyarray(img.dataobj)  # through dcm2niix's scl_slope / scl_inter: the rescaled values
    ref = ref if ref.ndim == 4 else ref[..., None]
    ours = np.stack([f.image for f in frames])  # [T, S, H, W]; frames[0].geometry.affine maps (i, j, k)
    assert ref.shape[3] == ours.shape[0], f"{reference.name}: {ref.shape[3]} frames, cmrseg read {ours.shape[0]}"
    ours_affine, ref_affine = frames[0].geometry.affine, img.affine
    x, y, z = ref.shape[:3]
    ijk = np.stack(np.meshgrid(np.arange(x), np.arange(y), np.arange(z), indexing="ij"), -1).reshape(-1, 3)
    world = ijk @ ref_affine[:3, :3].T + ref_affine[:3, 3]
    index = np.round((world - ours_affine[:3, 3]) @ np.linalg.inv(ours_affine[:3, :3]).T)
    distance = np.linalg.norm(index @ ours_affine[:3, :3].T + ours_affine[:3, 3] - world, axis=1)
    per_slice = distance.reshape(x, y, z).max(axis=(0, 1))
    compared = 0
    for s in np.flatnonzero(per_slice < WORLD_MM):
        sel = ijk[:, 2] == s
        i, j, k = index[sel].astype(int).T
        assert (i >= 0).all() and (i < ours.shape[3]).all() and (j >= 0).all() and (j < ours.shape[2]).all()
        assert ((k >= 0) & (k < ours.shape[1])).all()
        for t in range(ours.shape[0]):
            want = ref[ijk[sel, 0], ijk[sel, 1], s, t].astype(np.float64)
            np.testing.assert_allclose(ours[t, k, j, i], want, rtol=1e-6, atol=1e-6 * np.abs(want).max(),
                                       err_msg=f"{reference.name}: slice {s}, frame {t}")
        compared += int(sel.sum()) * ours.shape[0]
    return per_slice, compared


def agrees(frames, references: list[Path]) -> int:
    """Every reference slice at one of cmrseg's voxel centres (within ``WORLD_MM``), with equal
    values; returns the voxels compared."""
    total = 0
    for reference in references:
        per_slice, compared = world_mismatch(frames, reference)
        assert per_slice.max() < WORLD_MM, f"{reference.name}: slices off by {np.round(per_slice, 3).tolist()} mm"
        total += compared
    return total


# ----------------------------------------------------------------------------- real vendors' files

@pytest.mark.parametrize("export", ["classic", "enhanced"])
def test_philips_classic_and_enhanced_exports_agree_with_dcm2niix(export, tmp_path):
    """One Philips acquisition exported as 40 classic images and as one Enhanced MR file of 40
    frames: both read to dcm2niix's voxels and values (Philips' RescaleSlope 0.1 applied)."""
    folder = _qa("philips_classic_enhanced") / "In" / export
    frames = read_volumes(folder)
    assert len(frames) == 1 and frames[0].shape == (40, 96, 96)
    compared = agrees(frames, convert(folder, tmp_path))
    assert compared == 40 * 96 * 96
    # and the reference dcm2niix output stored with the corpus
    ref = {"classic": "1901_WIP_3DpCASL_cl.nii.gz", "enhanced": "1901_WIP_3DpCASL_enh_real.nii.gz"}[export]
    assert agrees(frames, [folder.parents[1] / "Ref" / ref]) == compared


@pytest.mark.slow
def test_ge_classic_images_without_a_dcm_extension_agree_with_dcm2niix(tmp_path):
    """GE's export: 130 classic images named iNNN.MRDC.N (no .dcm), found by content; an
    oblique 3D series whose file order runs against its slice direction."""
    folder = next(p for p in (_qa("ge_classic") / "In").iterdir() if p.is_dir())
    frames = read_volumes(folder)
    assert len(frames) == 1 and frames[0].shape == (130, 256, 256)
    assert agrees(frames, convert(folder, tmp_path)) == 130 * 256 * 256
    # cmrseg segment lists it as what it is (an inversion-prepared single-phase series), not a cine
    sources, skipped = discover([folder])
    assert sources == [] and "inversion time" in skipped[0].reason


def test_nine_transfer_syntaxes_decode_to_the_same_pixels_as_dcm2niix():
    """One Siemens image in nine transfer syntaxes (explicit / implicit little endian, big
    endian, RLE, JPEG lossless process 14, JPEG-LS, JPEG 2000): the same pixels from every one,
    and each 64 x 64 tile of the mosaic equal to dcm2niix's slice of it (dcm2niix writes a
    slice's rows bottom-up: its slice s is the tile transposed and flipped)."""
    from cmrseg.data.io.dicom import image_values

    base = _qa("transfer_syntax")
    pixels = []
    for n in range(1, 10):
        path = base / "In" / f"{n}.dcm"
        series, unreadable = scan_series([path], pixels=True)
        assert unreadable == []
        ((_, [(_, ds)]),) = series.items()
        pixels.append(image_values(ds, path))
        ref = np.asanyarray(nib.load(str(base / "Ref" / f"{n}.nii")).dataobj)
        tiles = [pixels[-1][r * 64:(r + 1) * 64, c * 64:(c + 1) * 64] for r in range(6) for c in range(6)]
        for s in range(ref.shape[2]):
            np.testing.assert_array_equal(tiles[s].T[:, ::-1], ref[:, :, s], err_msg=f"{n}.dcm tile {s}")
    assert all(np.array_equal(p, pixels[0]) for p in pixels)
    # the mosaic is one image at one position: refused as cmrseg segment refuses a single slice
    sources, skipped = discover([base / "In"])
    assert sources == [] and skipped[0].reason.startswith("one slice position")


# ----------------------------------------------------------------------------- the suite's own fixtures

def _phantom_cine(phantom_dir):
    frames = read_volumes(phantom_dir / "dicom" / "patient001")
    return np.stack([f.image for f in frames]), frames[0].geometry.affine


@pytest.mark.parametrize("layout", ["classic", "reversed", "enhanced", "series_per_slice"])
def test_every_dicom_layout_the_suite_writes_agrees_with_dcm2niix(layout, phantom_dir, tmp_path):
    """The oblique phantom cine as the suite writes it: classic images, the same with the slices
    on disk in the other direction, one Enhanced MR file, one series per slice position (which
    dcm2niix converts to one file per position)."""
    cine, affine = _phantom_cine(phantom_dir)
    folder = tmp_path / "dicom"
    if layout == "reversed":
        write_dicom_series(cine[:, ::-1], reverse_affine(affine, cine.shape[1]), folder)
    else:
        write_dicom_series(cine, affine, folder, layout=layout)
    frames = read_volumes(folder) if layout != "series_per_slice" else _slice_series(folder)
    references = convert(folder, tmp_path / "nifti")
    assert len(references) == (cine.shape[1] if layout == "series_per_slice" else 1)
    assert agrees(frames, references) == cine.size


def _slice_series(folder: Path):
    from cmrseg.data.io.discovery import load_study

    (source,), _ = discover([folder])
    assert source.kind == "dicom_slices"
    return load_study(source).frames


def test_a_lost_slice_position_keeps_its_place_where_dcm2niix_closes_the_gap(phantom_dir, tmp_path):
    cine, affine = _phantom_cine(phantom_dir)
    folder = tmp_path / "dicom"
    write_dicom_series(cine, affine, folder)
    lost = 4
    for path in folder.glob(f"IM_{lost:03d}_*.dcm"):
        path.unlink()
    frames = read_volumes(folder)
    assert frames[0].meta["missing_slices"] == [lost] and frames[0].num_slices == cine.shape[1]
    (reference,) = convert(folder, tmp_path / "nifti")
    img = nib.load(str(reference))
    assert img.shape[2] == cine.shape[1] - 1  # dcm2niix: the images it has, on a regular grid
    # before the gap the two agree voxel for voxel at the same world points
    before = nib.Nifti1Image(np.asanyarray(img.dataobj)[:, :, :lost], img.affine)
    nib.save(before, tmp_path / "before.nii")
    assert agrees(frames, [tmp_path / "before.nii"]) == lost * cine.shape[0] * cine.shape[2] * cine.shape[3]
    # after it dcm2niix puts the image of position k + 1 at position k: its slice k holds what
    # cmrseg has one slice further on, at the place the image's own header states
    ours = np.stack([f.image for f in frames])
    step = img.affine[:3, 2]
    for k in range(lost, img.shape[2]):
        shifted = nib.Nifti1Image(np.asanyarray(img.dataobj)[:, :, k:k + 1], img.affine.copy())
        shifted.affine[:3, 3] += step * (k + 1)
        nib.save(shifted, tmp_path / f"after{k}.nii")
        assert agrees(frames, [tmp_path / f"after{k}.nii"]) == ours.shape[0] * ours.shape[2] * ours.shape[3]
    # the standard: every image's own ImagePositionPatient is its first voxel's centre, and
    # cmrseg's grid puts each image there (LPS -> RAS)
    for path in sorted(folder.glob("IM_*.dcm")):
        ds = pydicom.dcmread(str(path), stop_before_pixels=True)
        k = int(path.stem.split("_")[1])
        lps = np.array([float(v) for v in ds.ImagePositionPatient])
        ras = frames[0].geometry.affine @ np.array([0.0, 0.0, k, 1.0])
        np.testing.assert_allclose(ras[:3], lps * [-1, -1, 1], atol=WORLD_MM)
