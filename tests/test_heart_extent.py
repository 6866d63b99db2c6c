"""experiments/heart_extent.py: the labelled heart's size against the Det+Seg crop."""

import numpy as np
import pytest


def test_heart_side_is_the_larger_extent_over_all_slices_in_mm(load_script):
    mod = load_script("experiments/heart_extent.py")
    label = np.zeros((3, 40, 50), dtype=np.uint8)
    label[0, 10:20, 5:9] = 1  # RV on the basal slice: rows 10-19
    label[2, 12:15, 5:45] = 3  # LV on another slice: columns 5-44
    assert mod.heart_side_mm(label, (2.0, 1.5)) == pytest.approx(max(10 * 2.0, 40 * 1.5))
    assert mod.heart_side_mm(label, (5.0, 1.0)) == pytest.approx(max(10 * 5.0, 40 * 1.0))
    assert mod.heart_side_mm(np.zeros_like(label), (1.0, 1.0)) == 0.0
    # the protocols' Det+Seg crops: 104 px of 1.6 mm, 128 px of 1.3 mm
    assert mod.crop_mm("fast") == pytest.approx(166.4) and mod.crop_mm("paper") == pytest.approx(166.4)
