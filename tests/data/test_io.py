import numpy as np
import pytest
import torch

from cmrseg.data.io import load_labelled_dataset, read_volumes, write_mask
from cmrseg.data.io.acdc import read_acdc_patient
from cmrseg.data.io.dicom import write_dicom_series
from cmrseg.data.io.nifti import read_nifti, read_nifti_label, write_nifti_image
from cmrseg.data.orientation import reverse_affine, should_reverse
from cmrseg.data.preprocessing import PreprocessConfig, canvas_map, invert_to_input, preprocess_label
from cmrseg.errors import InputError
from cmrseg.measures.metrics import dice_per_class


def test_nifti_roundtrip_through_1p3mm_keeps_geometry_and_mask(phantom_dir, tmp_path):
    pdir = phantom_dir / "acdc" / "patient001"
    (vol,) = read_nifti(pdir / "patient001_frame01.nii.gz")
    label = read_nifti_label(pdir / "patient001_frame01_gt.nii.gz", vol)
    aff = vol.geometry.affine
    # the phantom affine is oblique and anisotropic
    assert np.abs(aff[:3, :3] / np.linalg.norm(aff[:3, :3], axis=0)).max() < 0.99
    assert len(set(np.round(vol.geometry.spacing, 3))) == 2
    cfg = PreprocessConfig(target_spacing=1.3, canvas=256)
    cmap = canvas_map(vol.image.shape[1:], vol.geometry.inplane_spacing, cfg)
    assert cmap.resampled_shape != tuple(vol.image.shape[1:])  # really resampled
    onehot = torch.nn.functional.one_hot(preprocess_label(label, cmap), 4).permute(0, 3, 1, 2).float()
    back = invert_to_input(onehot, cmap).argmax(1).to(torch.uint8).numpy()
    out = write_mask(back, vol, tmp_path)
    (again,) = read_nifti(out)
    np.testing.assert_allclose(again.geometry.affine, vol.geometry.affine, atol=1e-5)
    assert again.image.shape == vol.image.shape
    d = dice_per_class(again.image.astype(np.uint8), label)
    assert np.nanmin(d) >= 0.99, d


def test_4d_nifti_splits_into_frames(phantom_dir):
    frames = read_volumes(phantom_dir / "acdc" / "patient002" / "patient002_4d.nii.gz")
    assert len(frames) == 4
    assert all(f.meta["num_frames"] == 4 for f in frames)
    assert len({f.image.shape for f in frames}) == 1


def test_acdc_patient_folder_reads_frames_labels_and_phases(phantom_dir):
    study = read_acdc_patient(phantom_dir / "acdc" / "patient001")
    assert [f.meta["phase"] for f in study.frames] == ["ED", "ES"]
    assert study.ed == 0 and study.es == 1
    assert all(f.label is not None and f.label.max() == 3 for f in study.frames)
    assert study.info["group"] in ("NOR", "DCM", "HCM", "MINF", "RV")


def test_h5_layout_takes_spacing_and_phase_from_side_files(phantom_dir):
    vols = load_labelled_dataset(phantom_dir / "h5" / "train")
    assert len(vols) == 6
    v = vols[0]
    assert v.geometry.spacing_source == "metadata.csv"
    assert v.meta["phase"] == "ED" and v.meta["patient"] == "patient001"


def test_h5_without_metadata_is_in_pixel_units_unless_option(phantom_dir, tmp_path):
    import shutil

    src = phantom_dir / "h5" / "train" / "patient001_frame01.h5"
    shutil.copy(src, tmp_path / src.name)
    (v,) = read_volumes(tmp_path / src.name)
    assert v.geometry.spacing is None and v.geometry.units == "pixels"
    (v,) = read_volumes(tmp_path / src.name, spacing=(10.0, 1.5, 1.5))
    assert v.geometry.spacing_source == "option" and v.geometry.voxel_volume_ml == pytest.approx(0.0225)


def test_slice_order_is_base_to_apex_whatever_the_file_order(phantom_dir, tmp_path):
    (vol,) = read_nifti(phantom_dir / "acdc" / "patient001" / "patient001_frame01.nii.gz")
    assert not vol.geometry.slices_reversed
    flipped = reverse_affine(vol.geometry.affine, vol.num_slices)
    assert should_reverse(flipped)
    write_nifti_image(vol.image[::-1], flipped, tmp_path / "rev.nii.gz")
    (rev,) = read_nifti(tmp_path / "rev.nii.gz")
    assert rev.geometry.slices_reversed
    np.testing.assert_allclose(rev.image, vol.image, atol=1e-5)
    np.testing.assert_allclose(rev.geometry.affine, vol.geometry.affine, atol=1e-5)
    # masks are written back in the file's own order
    out = write_mask(np.zeros(vol.shape, np.uint8) + (np.arange(vol.num_slices) % 4)[:, None, None].astype(np.uint8),
                     rev, tmp_path / "out")
    (raw,) = read_nifti(out, slice_order="keep")
    assert raw.image[0, 0, 0] == (vol.num_slices - 1) % 4
    # the override wins
    (kept,) = read_nifti(tmp_path / "rev.nii.gz", slice_order="keep")
    np.testing.assert_allclose(kept.image, vol.image[::-1], atol=1e-5)


def test_axis_aligned_affine_keeps_file_order():
    assert not should_reverse(np.diag([1.5, 1.5, 10.0, 1.0]))
    assert not should_reverse(np.diag([-1.5, -1.5, -10.0, 1.0]))


def test_dicom_series_loads_with_the_geometry_of_the_same_nifti(phantom_dir, tmp_path):
    (nii,) = read_volumes(phantom_dir / "acdc" / "patient001" / "patient001_frame01.nii.gz")
    frames = read_volumes(phantom_dir / "dicom" / "patient001")
    assert len(frames) == 4
    np.testing.assert_allclose(frames[0].geometry.affine, nii.geometry.affine, atol=1e-4)
    np.testing.assert_allclose(frames[0].geometry.spacing, nii.geometry.spacing, atol=1e-4)
    assert frames[0].image.shape == nii.image.shape
    # 12-bit storage with rescale: intensities match to quantisation
    rng = float(nii.image.max() - nii.image.min())
    assert np.abs(frames[0].image - nii.image).max() < rng / 4095 + 1e-4
    # a series written with shuffled file order and reversed slice direction loads the same way
    flipped = reverse_affine(nii.geometry.affine, nii.num_slices)
    write_dicom_series(nii.image[::-1], flipped, tmp_path / "rev")
    (rev,) = read_volumes(tmp_path / "rev")
    np.testing.assert_allclose(rev.geometry.affine, nii.geometry.affine, atol=1e-4)
    np.testing.assert_allclose(rev.image, nii.image, atol=rng / 4000)


def test_an_enhanced_multiframe_series_loads_like_the_same_classic_series(phantom_dir, tmp_path):
    """Philips and newer Siemens scanners can export a cine as one Enhanced MR file (geometry in
    functional groups, frames time-major); it must give the same frames, geometry and times."""
    classic = read_volumes(phantom_dir / "dicom" / "patient003")
    cine = np.stack([f.image for f in classic])[:, ::-1]  # on disk in the other slice direction
    affine = reverse_affine(classic[0].geometry.affine, classic[0].num_slices)
    write_dicom_series(cine, affine, tmp_path / "enh", trigger_step_ms=40.0, layout="enhanced")
    assert [f.name for f in (tmp_path / "enh").iterdir()] == ["IM_ENHANCED.dcm"]
    enhanced = read_volumes(tmp_path / "enh")
    assert len(enhanced) == len(classic)
    rng = float(cine.max() - cine.min())
    for a, b in zip(enhanced, classic):
        np.testing.assert_allclose(a.geometry.affine, b.geometry.affine, atol=1e-4)
        np.testing.assert_allclose(a.geometry.spacing, b.geometry.spacing, atol=1e-4)
        np.testing.assert_allclose(a.image, b.image, atol=rng / 2000)  # two 12-bit roundings
        assert a.meta["trigger_time_ms"] == b.meta["trigger_time_ms"]
        assert a.meta["missing_slices"] == []
    assert enhanced[0].meta["frame_interval_ms"] == 40.0
    assert enhanced[0].geometry.slices_reversed == classic[0].geometry.slices_reversed


def test_a_multiframe_file_without_a_description_per_frame_is_refused_naming_it(phantom_dir, tmp_path):
    import pydicom

    classic = read_volumes(phantom_dir / "dicom" / "patient003")
    write_dicom_series(np.stack([f.image for f in classic]), classic[0].geometry.affine, tmp_path, layout="enhanced")
    path = tmp_path / "IM_ENHANCED.dcm"
    ds = pydicom.dcmread(str(path))
    del ds.PerFrameFunctionalGroupsSequence[-1]
    ds.save_as(str(path))
    with pytest.raises(InputError, match="IM_ENHANCED.dcm.*frames but .* per-frame descriptions"):
        read_volumes(tmp_path)


@pytest.mark.parametrize("compressed", ["MR_small_jpeg_ls_lossless.dcm", "MR_small_jp2klossless.dcm",
                                        "MR_small_RLE.dcm"])
def test_a_compressed_dicom_stack_reads_as_the_uncompressed_one(tmp_path, compressed):
    """PACS exports are often compressed (JPEG-LS, JPEG 2000, RLE; JPEG lossless, which pydicom
    cannot write, is decoded by the same pylibjpeg plugins the project installs). pydicom's own
    sample MR image, as stored and as compressed losslessly, made into a 3-slice stack."""
    import pydicom
    from pydicom.data import get_testdata_file

    stacks = []
    for source in ("MR_small.dcm", compressed):
        folder = tmp_path / source
        folder.mkdir()
        for k in range(3):
            ds = pydicom.dcmread(get_testdata_file(source))
            ds.ImagePositionPatient = [-83.9, -91.2, 6.6 + 8.0 * k]
            ds.PixelSpacing, ds.InstanceNumber = [1.25, 1.25], k + 1
            ds.save_as(str(folder / f"IM{k}.dcm"))
        (stack,) = read_volumes(folder)
        stacks.append(stack.image)
    assert stacks[0].shape == (3, 64, 64) and stacks[0].std() > 0
    np.testing.assert_array_equal(stacks[1], stacks[0])


def test_float_noise_in_a_slice_position_does_not_split_the_slice(tmp_path):
    """Frames of one slice whose positions differ by 0.002 mm across a rounding boundary
    (10.004 and 10.006 mm) stay one slice."""
    import pydicom

    affine = np.diag([1.5, 1.5, 8.0, 1.0])
    affine[:3, 3] = [0.0, 0.0, 10.004]
    cine = np.random.default_rng(0).random((4, 6, 64, 64)).astype(np.float32)
    write_dicom_series(cine, affine, tmp_path)
    for f in sorted(tmp_path.iterdir()):
        if int(f.stem[-3:]) % 2:  # odd frames
            ds = pydicom.dcmread(str(f))
            ds.ImagePositionPatient[2] = f"{float(ds.ImagePositionPatient[2]) + 0.002:.6f}"
            ds.save_as(str(f))
    frames = read_volumes(tmp_path)
    assert len(frames) == 4 and frames[0].image.shape == (6, 64, 64)
    assert all(f.meta["missing_slices"] == [] for f in frames)


def _small_cine_series(folder):
    affine = np.diag([1.5, 1.5, 8.0, 1.0])
    cine = np.random.default_rng(1).random((4, 6, 32, 32)).astype(np.float32)
    write_dicom_series(cine, affine, folder)
    return sorted(folder.iterdir())


def test_a_folder_holding_each_image_twice_reads_as_the_series_once(tmp_path):
    """A study exported twice into one folder: the second copy of an instance (same
    SOPInstanceUID, another file name) is skipped, not read as more frames."""
    import shutil

    files = _small_cine_series(tmp_path / "once")
    shutil.copytree(tmp_path / "once", tmp_path / "twice")
    for f in files:
        shutil.copy(f, tmp_path / "twice" / f"copy_{f.name}")
    once, twice = read_volumes(tmp_path / "once"), read_volumes(tmp_path / "twice")
    assert len(twice) == len(once) == 4
    for a, b in zip(once, twice):
        np.testing.assert_array_equal(a.image, b.image)
        assert b.meta["missing_slices"] == []


def test_a_slice_acquired_twice_in_one_series_is_refused_naming_the_folder(tmp_path):
    import pydicom
    from pydicom.uid import generate_uid

    files = _small_cine_series(tmp_path)
    for f in files:
        if f.name.startswith("IM_002_"):  # the third slice's images again, as new instances
            ds = pydicom.dcmread(str(f))
            ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
            ds.save_as(str(tmp_path / f"again_{f.name}"))
    with pytest.raises(InputError, match="acquired twice in one series") as err:
        read_volumes(tmp_path)
    assert str(tmp_path) in str(err.value)


def test_a_series_whose_trigger_times_are_all_zero_is_ordered_by_instance_number(tmp_path):
    import pydicom

    files = _small_cine_series(tmp_path / "timed")
    (tmp_path / "zero").mkdir()
    for f in files:
        ds = pydicom.dcmread(str(f))
        ds.TriggerTime = "0"
        ds.save_as(str(tmp_path / "zero" / f.name))
    timed, zero = read_volumes(tmp_path / "timed"), read_volumes(tmp_path / "zero")
    assert len(zero) == 4
    for a, b in zip(timed, zero):
        np.testing.assert_array_equal(a.image, b.image)


def test_dicom_mask_is_written_as_nifti_in_the_series_geometry(phantom_dir, tmp_path):
    frames = read_volumes(phantom_dir / "dicom" / "patient003")
    masks = np.stack([(f.image > np.median(f.image)).astype(np.uint8) for f in frames])
    out = write_mask(masks, frames[0], tmp_path)
    assert out.name.endswith(".nii.gz")
    back = read_volumes(out)
    assert len(back) == len(frames)
    np.testing.assert_allclose(back[0].geometry.affine, frames[0].geometry.affine, atol=1e-4)
    np.testing.assert_array_equal(back[1].image.astype(np.uint8), masks[1])
