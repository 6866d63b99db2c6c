"""``experiments/histogram_standardisation.py``: a stack's foreground percentiles mapped onto the
training stacks' mean ones, so that a monotonic intensity curve (another sequence's contrast)
gives the networks the same input as the clean image (issue 35)."""

import numpy as np


def test_a_monotonic_curve_is_undone_and_the_landmarks_land_on_the_standard(load_script):
    script = load_script("experiments/histogram_standardisation.py")
    rng = np.random.default_rng(0)
    image = rng.gamma(2.0, 50.0, size=(6, 64, 64)).astype(np.float32)
    curved = 1000.0 * (image / image.max()) ** 0.6  # brighter mid-tones, another scale
    standard = np.linspace(0.2, 0.75, len(script.LANDMARKS))
    normalise = script.standardiser(standard)
    without = np.abs(script.shipped_normalisation(curved) - script.shipped_normalisation(image)).mean()
    clean, shifted = normalise(image), normalise(curved)
    # the curve shows in the shipped normalisation, and a third as much once standardised (not
    # nothing: the foreground, the voxels above the mean, moves a little with the curve)
    assert without > 0.05 and np.abs(shifted - clean).mean() < without / 3
    # the stack's own foreground (above its mean before) now has the standard's percentiles
    plain = script.shipped_normalisation(image)
    assert np.allclose(np.percentile(clean[plain > plain.mean()], script.LANDMARKS), standard, atol=0.01)


def test_a_flat_stack_is_left_as_the_shipped_normalisation_makes_it(load_script):
    script = load_script("experiments/histogram_standardisation.py")
    flat = np.full((2, 8, 8), 7.0, np.float32)
    assert np.array_equal(script.standardiser(np.linspace(0.2, 0.7, 10))(flat), script.shipped_normalisation(flat))


def test_landmarks_in_a_central_window_do_not_see_a_wider_field_of_view(load_script):
    script = load_script("experiments/histogram_standardisation.py")
    x = np.arange(2 * 10 * 20, dtype=np.float32).reshape(2, 10, 20)
    assert script.central(x, (2.0, 1.0), 8.0).shape == (2, 4, 8)  # 8 mm: 4 rows of 2 mm, 8 columns of 1 mm
    assert script.central(x, None, 8.0) is x and script.central(x, (1.0, 1.0), None) is x
    rng = np.random.default_rng(1)
    image = (10.0 + rng.gamma(2.0, 50.0, size=(4, 48, 48))).astype(np.float32)
    wide = np.pad(image, ((0, 0), (16, 16), (16, 16)))  # the same slices in a field of view 5/3 as wide
    standard = np.linspace(0.2, 0.75, len(script.LANDMARKS))
    window, whole = script.standardiser(standard, (1.0, 1.0), 40.0), script.standardiser(standard)
    inside = (slice(None), slice(16, 64), slice(16, 64))
    # the whole slice's landmarks move with the background (0.20 on average here); the window's
    # barely (what remains: the 99.5th-percentile clip moves with the padding)
    moved, kept = np.abs(whole(wide)[inside] - whole(image)).mean(), np.abs(window(wide)[inside] - window(image)).mean()
    assert moved > 0.1 and kept < moved / 10
