"""experiments/det_centres.py: where Det+Seg's crop goes, by rule, against the labelled heart."""

import numpy as np
import pytest


def test_a_stray_detection_moves_the_union_centre_but_not_the_largest_piece(load_script):
    mod = load_script("experiments/det_centres.py")
    label = np.zeros((2, 100, 100), dtype=np.uint8)
    label[:, 40:60, 30:50] = 3  # the heart: rows 40-59, columns 30-49
    detected = label > 0
    detected[1, 95:97, 95:97] = True  # one stray blob far away on one slice
    assert mod.centre("truth", detected, label) == (50, 40)
    assert mod.centre("largest", detected, label) == (50, 40)
    assert mod.centre("largest3d", detected, label) == (50, 40)
    assert mod.centre("union", detected, label) == ((40 + 96 + 1) // 2, (30 + 96 + 1) // 2)
    # nothing detected: the canvas centre
    assert mod.centre("largest", np.zeros_like(detected), label) == (50, 50)
    # a 30-px crop at the heart's centre holds it; moved 10 px down it leaves a quarter out
    assert mod.left_out(label, (50, 40), 30) == 0.0
    assert mod.left_out(label, (60, 40), 30) == pytest.approx(0.25)
    assert mod.left_out(label, (5, 5), 30) == 1.0
