"""Images as other scanners make them: the differences a vendor, a sequence or a coil brings,
as batched torch operations on normalised stacks ``[N, 1, H, W]`` (slices of several stacks,
``index[N]`` the stack of every slice).

Each shift is a plain function of explicit strengths (one per slice, the same within a stack),
so the shift benchmark (``benchmarks/shift_benchmark.py``) applies fixed strengths and the
training augmentation (:class:`cmrseg.data.augmentation.StackAugmenter`, ``vendor_prob``) draws
them (:func:`vendor_shifts`). What each stands for:

* :func:`mix_slices`: thicker slices (through-plane partial volume);
* :func:`gaussian_blur`, :func:`sharpen`: another reconstruction filter or acquired resolution;
* :func:`truncate_kspace`: a coarser acquisition and its Gibbs ringing;
* :func:`shade`, :func:`add_hot_spot`: receive-coil sensitivity;
* :func:`intensity_curve`: other sequences' contrast between blood, fat and myocardium;
* :func:`add_rician`: magnitude-image noise;
* :func:`renormalise`: the percentile normalisation inference applies to every stack.

Written here rather than taken from MONAI's MR transforms (which the benchmark of issue 11
used): those act on one image per call with one random state, and training needs one draw per
stack for a whole batch on any device, without a host sync per slice.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

PERCENTILES = (0.005, 0.995)


def per_stack(values: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """One value (or row) per stack -> one per slice."""
    return values.index_select(0, index)


def gaussian_blur(images: torch.Tensor, sigma: torch.Tensor, radius: int) -> torch.Tensor:
    """Blur each slice of ``[N, 1, H, W]`` with its own Gaussian ``sigma[N]`` (pixels; 0 leaves
    the slice unchanged), separable, edges replicated: one grouped convolution per axis for
    the whole batch, on any device. (torchvision's ``gaussian_blur`` takes one sigma per call.)"""
    n = images.shape[0]
    x = torch.arange(-radius, radius + 1, device=images.device, dtype=images.dtype)
    s = sigma.to(images.dtype).clamp(min=1e-3)[:, None]
    kernel = torch.exp(-0.5 * (x[None] / s) ** 2)
    kernel = kernel / kernel.sum(1, keepdim=True)  # [N, 2R+1]; sigma ~0 gives a delta
    out = F.pad(images.transpose(0, 1), (radius, radius, radius, radius), mode="replicate")  # [1, N, H+2R, W+2R]
    out = F.conv2d(out, kernel[:, None, None, :], groups=n)
    out = F.conv2d(out, kernel[:, None, :, None], groups=n)
    return out.transpose(0, 1)


def mix_slices(images: torch.Tensor, index: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Each slice ``(1 - w)`` itself plus ``w / 2`` each of its neighbours in its stack (a slice
    at a stack's end takes itself for the missing neighbour); ``weight[N]``."""
    prev = torch.cat([images[:1], images[:-1]])
    nxt = torch.cat([images[1:], images[-1:]])
    same_prev = torch.cat([index[:1], index[:-1]]) == index
    same_next = torch.cat([index[1:], index[-1:]]) == index
    prev = torch.where(same_prev.view(-1, 1, 1, 1), prev, images)
    nxt = torch.where(same_next.view(-1, 1, 1, 1), nxt, images)
    w = weight.to(images.dtype).view(-1, 1, 1, 1)
    return (1 - w) * images + w * 0.5 * (prev + nxt)


def sharpen(images: torch.Tensor, amount: torch.Tensor) -> torch.Tensor:
    """Unsharp masking with a 1-pixel Gaussian: ``x + amount * (x - blur(x))``; ``amount[N]``."""
    blurred = gaussian_blur(images, torch.ones(images.shape[0], device=images.device), radius=3)
    return images + amount.to(images.dtype).view(-1, 1, 1, 1) * (images - blurred)


def truncate_kspace(images: torch.Tensor, radius: torch.Tensor) -> torch.Tensor:
    """Keep each slice's k-space within ``radius[N]`` (fraction of the Nyquist frequency, 1 keeps
    everything inside the inscribed circle): lower resolution with ringing at edges."""
    h, w = images.shape[-2:]
    fy = torch.fft.fftfreq(h, device=images.device).view(-1, 1)
    fx = torch.fft.fftfreq(w, device=images.device).view(1, -1)
    freq = torch.sqrt(fy ** 2 + fx ** 2) / 0.5  # 1 at Nyquist along an axis
    keep = (freq[None, None] <= radius.to(freq.dtype).view(-1, 1, 1, 1)).to(torch.float32)
    spectrum = torch.fft.fft2(images.float()) * keep
    return torch.fft.ifft2(spectrum).real.to(images.dtype)


def _grid(images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    h, w = images.shape[-2:]
    y = torch.linspace(-1.0, 1.0, h, device=images.device, dtype=images.dtype).view(1, 1, -1, 1)
    x = torch.linspace(-1.0, 1.0, w, device=images.device, dtype=images.dtype).view(1, 1, 1, -1)
    return y, x


def shade(images: torch.Tensor, coefficients: torch.Tensor) -> torch.Tensor:
    """Multiply by ``exp(a y + b x + c xy + d y^2 + e x^2)`` over the image in [-1, 1]^2;
    ``coefficients[N, 5]``: a smooth receive-coil gain."""
    y, x = _grid(images)
    c = coefficients.to(images.dtype).view(-1, 5, 1, 1)
    field = c[:, 0:1] * y + c[:, 1:2] * x + c[:, 2:3] * x * y + c[:, 3:4] * y ** 2 + c[:, 4:5] * x ** 2
    return images * torch.exp(field)


def add_hot_spot(images: torch.Tensor, centre: torch.Tensor, peak: torch.Tensor) -> torch.Tensor:
    """Add a Gaussian blob (sigma 6 % of the image) of height ``peak[N]`` at ``centre[N, 2]``
    ((row, col) in [-1, 1])."""
    y, x = _grid(images)
    c = centre.to(images.dtype).view(-1, 2, 1, 1)
    sigma = 0.12  # 6 % of the image, in [-1, 1] units
    blob = torch.exp(-((y - c[:, 0:1]) ** 2 + (x - c[:, 1:2]) ** 2) / (2 * sigma ** 2))
    return images + peak.to(images.dtype).view(-1, 1, 1, 1) * blob


def intensity_curve(images: torch.Tensor, knots: torch.Tensor) -> torch.Tensor:
    """A monotone piecewise-linear map of [0, 1]: ``knots[N, K]`` the values at K evenly spaced
    inputs (non-decreasing); values outside [0, 1] are clipped first."""
    k = knots.shape[1]
    x = images.clamp(0.0, 1.0) * (k - 1)
    lo = x.floor().clamp(max=k - 2).long()
    t = x - lo
    table = knots.to(images.dtype)[:, None, None, None, :].expand(*images.shape, k)
    y0 = table.gather(-1, lo[..., None])[..., 0]
    y1 = table.gather(-1, (lo + 1)[..., None])[..., 0]
    return y0 + t * (y1 - y0)


def add_rician(images: torch.Tensor, std: torch.Tensor, gen: torch.Generator | None = None) -> torch.Tensor:
    """The magnitude of the image plus complex Gaussian noise of ``std[N]``."""
    s = std.to(images.dtype).view(-1, 1, 1, 1)
    real = images + s * torch.randn(images.shape, device=images.device, generator=gen, dtype=images.dtype)
    imag = s * torch.randn(images.shape, device=images.device, generator=gen, dtype=images.dtype)
    return torch.sqrt(real ** 2 + imag ** 2)


def renormalise(images: torch.Tensor, stack_sizes: list[int]) -> torch.Tensor:
    """Each stack (consecutive slices, ``stack_sizes``) rescaled so its 0.5th and 99.5th
    percentiles become 0 and 1, clipped: what :func:`cmrseg.data.preprocessing.preprocess_image`
    does to every stack it reads. Stacks are cut by their Python sizes, so no value is read back
    from the device."""
    out, start = [], 0
    q = torch.tensor(PERCENTILES, device=images.device)
    for size in stack_sizes:
        stack = images[start:start + size]
        values = stack.flatten().float()
        lo, hi = torch.quantile(values[:: max(1, values.numel() // 2_000_000)], q).to(images.dtype)
        out.append(((stack - lo) / (hi - lo).clamp(min=1e-6)).clamp(0.0, 1.0))
        start += size
    return torch.cat(out)


def _draw(k: int, strength: float, prob: float, device, gen, signed: bool = False, shape=()) -> torch.Tensor:
    """Per stack: a strength uniform in [0, strength] (``signed``: +-strength), zero for the
    stacks not drawn (probability ``prob``)."""
    u = torch.rand(k, *shape, device=device, generator=gen)
    value = (u * 2 - 1 if signed else u) * strength
    on = (torch.rand(k, device=device, generator=gen) < prob).view(k, *([1] * len(shape)))
    return value * on


def vendor_shifts(images: torch.Tensor, index: torch.Tensor, k: int, cfg, gen: torch.Generator | None) -> torch.Tensor:
    """The shifts ``cfg`` (an :class:`~cmrseg.data.augmentation.AugmentConfig`) turns on, each
    drawn per stack with probability ``cfg.vendor_prob``: thicker slices, sharpening, k-space
    truncation, coil shading, a hot spot, an intensity curve (in this order; noise follows in
    the augmenter). Only the shifts that are on draw random numbers."""
    dev, p = images.device, cfg.vendor_prob
    if cfg.slice_mix > 0:
        images = mix_slices(images, index, per_stack(_draw(k, cfg.slice_mix, p, dev, gen), index))
    if cfg.sharpen > 0:
        images = sharpen(images, per_stack(_draw(k, cfg.sharpen, p, dev, gen), index))
    if cfg.gibbs > 0:
        cut = _draw(k, cfg.gibbs, p, dev, gen)
        radius = torch.where(cut > 0, 1.0 - cut, torch.full_like(cut, 2.0))  # 2: beyond every frequency
        images = truncate_kspace(images, per_stack(radius, index))
    if cfg.shading > 0:
        images = shade(images, per_stack(_draw(k, cfg.shading, p, dev, gen, signed=True, shape=(5,)), index))
    if cfg.hot_spot > 0:
        peak = (0.5 + 0.5 * torch.rand(k, device=dev, generator=gen)) * cfg.hot_spot
        peak = peak * (torch.rand(k, device=dev, generator=gen) < p)
        centre = torch.rand(k, 2, device=dev, generator=gen) * 2 - 1
        images = add_hot_spot(images, per_stack(centre, index), per_stack(peak, index))
    if cfg.curve > 0:
        steps = torch.exp(_draw(k, cfg.curve, p, dev, gen, signed=True, shape=(4,)))
        knots = torch.cat([torch.zeros(k, 1, device=dev), torch.cumsum(steps, 1) / steps.sum(1, keepdim=True)], 1)
        images = intensity_curve(images, per_stack(knots, index))
    return images


def rician_noise(images: torch.Tensor, index: torch.Tensor, k: int, cfg, gen: torch.Generator | None) -> torch.Tensor:
    """:func:`add_rician` with a std uniform in [0, ``cfg.rician``] on the stacks drawn."""
    return add_rician(images, per_stack(_draw(k, cfg.rician, cfg.vendor_prob, images.device, gen), index), gen)
