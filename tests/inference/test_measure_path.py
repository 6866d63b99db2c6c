"""The whole measuring path on a disc-and-ring phantom with analytic volumes (issue 11, item 2):
read -> preprocess -> predict (a stand-in network that labels by intensity: conftest's
``IntensityLabeller``) -> back to the input grid -> clean-up -> measures, within 2 % of the
analytic LV volume and mass, at input pixel sizes finer and coarser than the networks' canvas."""

import math

import numpy as np
import pytest

from cmrseg.data.io import read_volumes
from cmrseg.data.io.nifti import write_nifti_image
from cmrseg.data.volume import Study
from cmrseg.inference.segment import study_measures
from cmrseg.measures.clinical import MYOCARDIUM_DENSITY_G_PER_ML

R_CAVITY, R_WALL = 24.0, 32.0  # mm
SLICES, SLICE_MM = 10, 8.0


def _phantom(path, pixel_mm: float, size_mm: float = 260.0):
    n = int(round(size_mm / pixel_mm))
    c = (n - 1) / 2.0
    yy, xx = np.mgrid[0:n, 0:n]
    r = np.hypot(yy - c, xx - c) * pixel_mm
    sl = np.zeros((n, n), np.float32)
    sl[r < R_WALL] = 0.5
    sl[r < R_CAVITY] = 1.0
    stack = np.repeat(sl[None], SLICES, axis=0) * 1000.0
    affine = np.diag([pixel_mm, pixel_mm, SLICE_MM, 1.0])
    write_nifti_image(stack, affine, path)
    return path


@pytest.mark.parametrize("pixel_mm", [0.7, 1.37, 1.9])
@pytest.mark.parametrize("crop", [None, 128])
def test_disc_and_ring_come_back_with_their_analytic_volume_and_mass(tmp_path, pixel_mm, crop, intensity_predictor):
    (vol,) = read_volumes(_phantom(tmp_path / "disc.nii.gz", pixel_mm))
    predictor = intensity_predictor(crop=crop, postprocess="clean")
    mask = predictor.predict_volume(vol).mask
    out = study_measures(Study("disc", [vol], vol.path, "single"), [mask])["measures"]
    lv = math.pi * R_CAVITY ** 2 * SLICE_MM * SLICES / 1000.0
    myo = math.pi * (R_WALL ** 2 - R_CAVITY ** 2) * SLICE_MM * SLICES / 1000.0
    assert out["LV volume (mL)"] == pytest.approx(lv, rel=0.02)
    assert out["MYO mass (g)"] == pytest.approx(myo * MYOCARDIUM_DENSITY_G_PER_ML, rel=0.02)
