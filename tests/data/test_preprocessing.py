import numpy as np
import torch

from cmrseg.data.augmentation import AugmentConfig, StackAugmenter, gaussian_blur
from cmrseg.data.preprocessing import (
    PreprocessConfig,
    canvas_map,
    invert_to_input,
    normalize_intensity,
    preprocess_image,
    preprocess_label,
)


def test_normalisation_is_robust_to_outliers():
    rng = np.random.default_rng(0)
    img = rng.normal(100, 10, (4, 64, 64)).astype(np.float32)
    spiked = img.copy()
    spiked[0, 0, :5] = 1e6  # a few hot pixels must not squash the rest
    a, b = normalize_intensity(img), normalize_intensity(spiked)
    assert a.min() >= 0 and a.max() <= 1
    assert np.abs(a[1:] - b[1:]).mean() < 0.01


def test_canvas_crop_and_pad_invert_exactly_without_resampling():
    cfg = PreprocessConfig(target_spacing=None, canvas=64)
    for shape in ((50, 80), (64, 64), (90, 40)):
        cmap = canvas_map(shape, None, cfg)
        probs = torch.rand(2, 4, *shape)
        probs = probs / probs.sum(1, keepdim=True)
        x = torch.zeros(2, 4, 64, 64)
        (sy0, sy1), (sx0, sx1) = cmap.src
        (dy0, dy1), (dx0, dx1) = cmap.dst
        x[..., dy0:dy1, dx0:dx1] = probs[..., sy0:sy1, sx0:sx1]
        back = invert_to_input(x, cmap)
        torch.testing.assert_close(back[..., sy0:sy1, sx0:sx1], probs[..., sy0:sy1, sx0:sx1])
        outside = torch.ones(shape, dtype=torch.bool)
        outside[sy0:sy1, sx0:sx1] = False
        assert torch.all(back[:, 0][:, outside] == 1)


def test_resampling_to_1p3mm_gives_the_physical_size():
    cfg = PreprocessConfig(target_spacing=1.3, canvas=256)
    img = np.random.default_rng(0).random((3, 200, 150)).astype(np.float32)
    x, cmap = preprocess_image(img, (1.95, 0.65), cfg)
    assert x.shape == (3, 1, 256, 256)
    assert cmap.resampled_shape == (300, 75)


def test_label_resampling_keeps_labels_in_range():
    lab = np.zeros((2, 100, 100), np.uint8)
    lab[:, 30:70, 30:70] = 2
    lab[:, 40:60, 40:60] = 3
    cmap = canvas_map((100, 100), (1.7, 1.7), PreprocessConfig())
    y = preprocess_label(lab, cmap)
    assert set(torch.unique(y).tolist()) == {0, 2, 3}
    area = (y == 3).sum().item() / 2 * 1.3 ** 2
    assert abs(area - 20 * 20 * 1.7 ** 2) / (20 * 20 * 1.7 ** 2) < 0.08


def test_augmentation_identity_and_one_transform_per_stack():
    ident = StackAugmenter(AugmentConfig(rotation_deg=0, shift=0, scale=0, flip=0, gamma=0, contrast=0, noise=0))
    img = torch.rand(5, 1, 32, 32)
    lab = torch.randint(0, 4, (5, 32, 32))
    a, b, _ = ident(img, lab, [2, 3])
    torch.testing.assert_close(a, img, atol=1e-5, rtol=0)
    assert torch.equal(b, lab)
    aug = StackAugmenter(AugmentConfig(crop=24, noise=0))
    same = img[:1].expand(5, 1, 32, 32).contiguous()
    lab_same = lab[:1].expand(5, 32, 32).contiguous()
    g = torch.Generator().manual_seed(3)
    a, b, _ = aug(same, lab_same, [2, 3], generator=g)
    assert a.shape == (5, 1, 24, 24) and b.shape == (5, 24, 24)
    torch.testing.assert_close(a[0], a[1])
    torch.testing.assert_close(a[2], a[4])
    assert b.min() >= 0 and b.max() <= 3


def test_augmentation_moves_probability_maps_with_labels():
    aug = StackAugmenter(AugmentConfig(rotation_deg=90, shift=4, scale=0.1, gamma=0, contrast=0, noise=0))
    lab = torch.zeros(3, 48, 48, dtype=torch.long)
    lab[:, 10:30, 15:35] = 1
    probs = torch.nn.functional.one_hot(lab, 4).permute(0, 3, 1, 2).float()
    _, y, p = aug(None, lab, [3], extra=probs, generator=torch.Generator().manual_seed(0))
    agree = (p.argmax(1) == y).float().mean()
    assert agree > 0.98
    torch.testing.assert_close(p.sum(1), torch.ones_like(p[:, 0]), atol=1e-4, rtol=0)


def test_gaussian_blur_matches_scipy_per_slice_sigma():
    from scipy.ndimage import gaussian_filter

    img = torch.rand(3, 1, 40, 36)
    sigma = torch.tensor([0.0, 0.8, 1.5])
    out = gaussian_blur(img, sigma, radius=5)
    torch.testing.assert_close(out[0], img[0], atol=1e-6, rtol=0)  # sigma 0: unchanged
    for k in (1, 2):
        ref = gaussian_filter(img[k, 0].numpy(), float(sigma[k]), mode="nearest", truncate=5 / float(sigma[k]))
        np.testing.assert_allclose(out[k, 0].numpy(), ref, atol=1e-5)


def test_blur_augmentation_is_one_draw_per_stack():
    cfg = AugmentConfig(rotation_deg=0, shift=0, scale=0, flip=0, gamma=0, contrast=0, noise=0, blur=1.5, blur_prob=1.0)
    img = torch.rand(1, 1, 32, 32).expand(5, 1, 32, 32).contiguous()
    out, _, _ = StackAugmenter(cfg)(img, None, [2, 3], generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(out[0], out[1])
    torch.testing.assert_close(out[2], out[4])
    assert not torch.allclose(out[0], out[2])  # two stacks, two sigmas
    assert out.std() < img.std()  # smoothed
    off = StackAugmenter(AugmentConfig(**{**cfg.to_dict(), "blur_prob": 0.0}))
    same, _, _ = off(img, None, [2, 3], generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(same, img, atol=1e-5, rtol=0)


def _heart_like_stack(rng, curve=lambda x: x):
    """A stack with a bright disc (blood pool), a mid-grey ring (muscle) and a noisy background,
    then an intensity curve."""
    yy, xx = np.mgrid[:96, :96]
    r = np.hypot(yy - 48, xx - 48)
    img = np.where(r < 12, 0.9, np.where(r < 18, 0.45, 0.15)) + rng.normal(0, 0.03, (3, 96, 96))
    return curve(np.clip(img, 0, 1)).astype(np.float32)


def test_histogram_standardisation_undoes_a_monotonic_intensity_curve():
    from cmrseg.data.preprocessing import intensity_landmarks, standardise_histogram
    rng = np.random.default_rng(0)
    clean = normalize_intensity(_heart_like_stack(rng))
    steep = normalize_intensity(_heart_like_stack(np.random.default_rng(0), curve=lambda x: x ** 2.5))
    standard = intensity_landmarks(clean, (1.0, 1.0), 60.0)
    heart = clean > clean.mean()  # the foreground the landmarks describe (the background is not matched)
    assert np.abs(steep - clean)[heart].mean() > 0.1  # the curve changes the network's input ...
    back = standardise_histogram(steep, standard, (1.0, 1.0), 60.0)
    assert np.abs(back - clean)[heart].mean() < 0.4 * np.abs(steep - clean)[heart].mean()  # ... standardised, far less
    assert back.dtype == np.float32 and back.min() >= 0 and back.max() <= 1
    flat = np.full((2, 32, 32), 0.5, np.float32)
    assert standardise_histogram(flat, standard) is flat  # no foreground: left as it is


def test_landmark_window_ignores_the_background_a_wider_field_of_view_adds():
    from cmrseg.data.preprocessing import central_window, intensity_landmarks
    rng = np.random.default_rng(1)
    img = normalize_intensity(_heart_like_stack(rng))
    wide = np.pad(img, ((0, 0), (48, 48), (48, 48)), constant_values=0.15)  # twice the field of view
    assert central_window(wide, (1.0, 1.0), 96.0).shape == img.shape
    np.testing.assert_allclose(intensity_landmarks(wide, (1.0, 1.0), 60.0), intensity_landmarks(img, (1.0, 1.0), 60.0))


def test_landmarks_in_the_configuration_reach_preprocess_image_and_round_trip():
    from cmrseg.data.preprocessing import LANDMARK_PERCENTILES, derivable_canvas
    standard = tuple(np.linspace(0.3, 0.75, len(LANDMARK_PERCENTILES)))
    plain = PreprocessConfig(target_spacing=None, canvas=96)
    hs = PreprocessConfig(target_spacing=None, canvas=96, landmarks=standard, landmark_window_mm=60.0)
    assert "landmarks" not in plain.to_dict()  # model.json and caches without them read as before
    assert PreprocessConfig.from_dict(hs.to_dict()) == hs
    img = _heart_like_stack(np.random.default_rng(2), curve=lambda x: x ** 2.5)
    a, _ = preprocess_image(img, None, plain)
    b, _ = preprocess_image(img, None, hs)
    assert not torch.equal(a, b)
    assert not derivable_canvas(PreprocessConfig(1.3, 256), PreprocessConfig(1.6, 192, landmarks=standard))


def test_mean_landmarks_average_the_stacks_with_a_foreground_and_refuse_none():
    import pytest

    from cmrseg.data.preprocessing import intensity_landmarks, mean_intensity_landmarks
    from cmrseg.errors import CmrsegError
    a, b = (_heart_like_stack(np.random.default_rng(s), curve=lambda x, g=g: x ** g) for s, g in ((4, 1.0), (5, 2.0)))
    flat = np.full((2, 96, 96), 0.5, np.float32)
    want = np.mean([intensity_landmarks(normalize_intensity(x), (1.0, 1.0), 60.0) for x in (a, b)], axis=0)
    got = mean_intensity_landmarks([(a, (1.0, 1.0)), (flat, (1.0, 1.0)), (b, (1.0, 1.0))], window_mm=60.0)
    np.testing.assert_allclose(got, want)  # the flat stack skipped, not averaged in
    with pytest.raises(CmrsegError, match="no training stack has a foreground"):
        mean_intensity_landmarks([(flat, None)])
