"""The phantom's reference volumes, which the demo and the measure tests score against."""

import numpy as np

from cmrseg.data import phantom


def _rv_on_the_whole_image(p, phase: float, ss: int) -> float:
    """The RV's reference volume (mL) supersampled over every pixel of the image."""
    hx, hy, _, _ = phantom._grid(p, ss)
    total = 0.0
    for k in range(p.num_slices):
        s = phantom._slice_shapes(p, k, phase)
        if s is not None and s["rv"] is not None:
            m = phantom._inside(hx, hy, s["rv"]) & ~phantom._inside(hx, hy, phantom._dilate(s["epi"], 1.5))
            total += m.sum() * (p.pixel_mm / ss) ** 2 * p.slice_mm
    return total / 1000.0


def test_rv_reference_volume_counts_every_subpixel_of_the_rv():
    """Supersampling only the RV's own pixels counts exactly the subpixels the whole image
    holds, whatever the heart's pose and place, the RV cut off by the image's edge included."""
    rng = np.random.default_rng(3)
    for i in range(6):
        p = phantom.random_params(rng, (96, 104))
        if i % 2:  # turned far and pushed to an edge
            p.pose_deg, p.center_mm = float(rng.uniform(-90, 90)), (float(rng.uniform(-45, 45)), 40.0)
        for phase in (0.0, 1.0):
            ref = phantom.reference_volumes(p, phase, ss=8)
            assert ref["RV"] > 0 and ref["RV"] == _rv_on_the_whole_image(p, phase, 8), (i, phase)
