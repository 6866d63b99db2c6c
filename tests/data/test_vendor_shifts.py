"""Other scanners' images (cmrseg.data.vendor_shifts): each shift does what it stands for, leaves
the image alone at zero strength, and reaches the images only, never the targets."""

import math

import numpy as np
import pytest
import torch

from cmrseg.data.augmentation import AugmentConfig, StackAugmenter
from cmrseg.data.vendor_shifts import (
    add_hot_spot,
    add_rician,
    intensity_curve,
    mix_slices,
    renormalise,
    shade,
    sharpen,
    truncate_kspace,
)


def _disc(n=64, radius=14.0, value=0.8):
    yy, xx = np.mgrid[:n, :n]
    img = ((yy - n / 2) ** 2 + (xx - n / 2) ** 2 <= radius ** 2).astype(np.float32) * value + 0.1
    return torch.from_numpy(img)[None, None]


def test_zero_strength_leaves_the_image_as_it_is():
    x = torch.rand(3, 1, 32, 32)
    index = torch.tensor([0, 0, 1])
    zero = torch.zeros(3)
    torch.testing.assert_close(mix_slices(x, index, zero), x)
    torch.testing.assert_close(sharpen(x, zero), x)
    torch.testing.assert_close(truncate_kspace(x, torch.full((3,), 2.0)), x, atol=1e-5, rtol=0)
    torch.testing.assert_close(shade(x, torch.zeros(3, 5)), x)
    torch.testing.assert_close(add_hot_spot(x, torch.zeros(3, 2), zero), x)
    identity = torch.linspace(0, 1, 5).repeat(3, 1)
    torch.testing.assert_close(intensity_curve(x, identity), x, atol=1e-6, rtol=0)
    torch.testing.assert_close(add_rician(x, zero), x)


def test_thicker_slices_mix_neighbours_within_a_stack_only():
    x = torch.arange(5, dtype=torch.float32).view(5, 1, 1, 1).expand(5, 1, 4, 4).contiguous()
    index = torch.tensor([0, 0, 0, 1, 1])
    out = mix_slices(x, index, torch.full((5,), 0.5))[:, 0, 0, 0]
    # stack 0: slices 0, 1, 2; stack 1: slices 3, 4 (slice 2 and 3 are not neighbours)
    torch.testing.assert_close(out, torch.tensor([0.25, 1.0, 1.75, 3.25, 3.75]))


def test_kspace_truncation_blurs_edges_and_rings():
    disc = _disc()
    low = truncate_kspace(disc, torch.tensor([0.3]))
    assert float(low.max()) > float(disc.max()) + 0.02  # Gibbs overshoot inside the edge
    edge = lambda t: float((t[..., 1:, :] - t[..., :-1, :]).abs().max())  # noqa: E731
    assert edge(low) < 0.8 * edge(disc)
    assert abs(float(low.mean()) - float(disc.mean())) < 1e-4  # the DC term is kept


def test_sharpening_steepens_edges_and_shading_is_smooth():
    disc = _disc()
    edge = lambda t: float((t[..., 1:, :] - t[..., :-1, :]).abs().max())  # noqa: E731
    assert edge(sharpen(disc, torch.tensor([1.0]))) > 1.1 * edge(disc)
    shaded = shade(torch.ones(1, 1, 64, 64), torch.tensor([[0.4, -0.3, 0.2, 0.1, -0.2]]))
    assert float(shaded.min()) > 0 and float(shaded.max() / shaded.min()) > 1.5
    assert float((shaded[..., 1:, :] / shaded[..., :-1, :]).log().abs().max()) < 0.05  # no step anywhere


def test_an_intensity_curve_is_monotone_and_keeps_zero_and_one():
    x = torch.linspace(0, 1, 101).view(1, 1, 1, 101)
    knots = torch.tensor([[0.0, 0.5, 0.6, 0.7, 1.0]])
    y = intensity_curve(x, knots)[0, 0, 0]
    assert (y[1:] >= y[:-1] - 1e-7).all() and float(y[0]) == 0.0 and float(y[-1]) == pytest.approx(1.0)
    assert float(y[25]) == pytest.approx(0.5)


def test_rician_noise_lifts_the_dark_background_and_hot_spots_peak_where_placed():
    dark = add_rician(torch.zeros(1, 1, 64, 64), torch.tensor([0.1]), torch.Generator().manual_seed(0))
    assert float(dark.mean()) == pytest.approx(0.1 * math.sqrt(math.pi / 2), rel=0.1)  # the Rayleigh mean
    spot = add_hot_spot(torch.zeros(1, 1, 65, 65), torch.tensor([[-1.0, 1.0]]), torch.tensor([2.0]))
    assert float(spot[0, 0, 0, -1]) == pytest.approx(2.0, rel=1e-3) and float(spot[0, 0, -1, 0]) < 1e-6


def test_renormalise_maps_each_stack_to_its_percentiles():
    x = torch.cat([torch.rand(2, 1, 32, 32) * 3 + 1, torch.rand(1, 1, 32, 32) * 0.1])
    out = renormalise(x, [2, 1])
    for rows in (slice(0, 2), slice(2, 3)):
        flat = out[rows].flatten()
        assert float(flat.min()) == 0.0 and float(flat.max()) == 1.0
        assert float((flat == 0).float().mean()) < 0.02


def test_the_augmenter_shifts_images_but_never_targets():
    """Targets (a teacher's maps) follow the geometry and nothing else: with the geometry off and
    every vendor shift on, the image changes and the maps come out as they went in."""
    cfg = AugmentConfig(rotation_deg=0, shift=0, scale=0, flip=0, crop=0, gamma=0.5, contrast=0.2, noise=0.03,
                        slice_mix=0.5, sharpen=1.0, gibbs=0.5, shading=0.4, hot_spot=1.5, curve=0.7, rician=0.05,
                        vendor_prob=1.0, renormalise=True)
    x = torch.rand(6, 1, 48, 48)
    maps = torch.softmax(torch.randn(6, 4, 48, 48), 1)
    y = torch.randint(0, 4, (6, 48, 48))
    xi, yi, mi = StackAugmenter(cfg)(x, y, [3, 3], extra=maps, generator=torch.Generator().manual_seed(1))
    assert float((xi - x).abs().mean()) > 0.05 and 0.0 <= float(xi.min()) and float(xi.max()) <= 1.0
    torch.testing.assert_close(mi, maps, atol=1e-5, rtol=0)
    assert torch.equal(yi, y)


def test_quarter_turns_turn_image_and_targets_together():
    cfg = AugmentConfig(rotation_deg=0, shift=0, scale=0, flip=0, crop=0, gamma=0, contrast=0, noise=0,
                        quarter_turns=1.0)
    x = torch.rand(1, 1, 32, 32)
    y = (x[:, 0] > 0.5).long()
    seen = set()
    for seed in range(12):
        xi, yi, _ = StackAugmenter(cfg)(x, y, [1], generator=torch.Generator().manual_seed(seed))
        turns = [k for k in (1, 2, 3) if torch.allclose(xi, torch.rot90(x, k, (-2, -1)), atol=1e-5)]
        assert len(turns) == 1 and torch.equal(yi, torch.rot90(y, turns[0], (-2, -1)))
        seen.add(turns[0])
    assert seen == {1, 2, 3}
