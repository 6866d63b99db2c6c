"""Stack-consistent data augmentation on any device (CPU or GPU), batched.

The paper's augmentation is random rotation, shift, flip and crop; we add mild scaling and
intensity changes (blur, gamma, contrast, noise), each configurable and off with a zero range.
Blur stands for a scanner that acquires at a lower resolution than it reconstructs (nnU-Net
draws a similar Gaussian blur); ``benchmarks/shift_benchmark.py`` measures what it buys.
One random transform is drawn per stack and applied to all its slices, so the anatomy stays
consistent across slices (what the all-slice models learn from). Geometry is one
``affine_grid`` + ``grid_sample`` per batch: images and probability maps bilinear, labels
nearest.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F

from cmrseg.data.vendor_shifts import gaussian_blur, per_stack, renormalise, rician_noise, vendor_shifts
from cmrseg.device import to_device


@dataclass(frozen=True)
class AugmentConfig:
    """Attributes:
    rotation_deg: rotations drawn uniformly in +-rotation_deg.
    shift: translations in +-shift pixels of the canvas, per axis.
    scale: zoom factors drawn in [1 - scale, 1 + scale].
    flip: probability of a left-right flip and, independently, of an up-down flip.
    crop: output size (square); the crop centre moves with the shift. 0 = canvas size.
    gamma: gamma exponents in [1/(1+gamma), 1+gamma] (log-uniform), images only.
    contrast: multiply by [1 - contrast, 1 + contrast] around the stack mean, images only.
    noise: Gaussian noise with std uniform in [0, noise], images only.
    blur: Gaussian blur with sigma uniform in [0, blur] pixels of the output, images only,
        applied to a stack with probability ``blur_prob`` (before gamma, contrast and noise:
        a coarser acquisition, then the scanner's own noise).

    Other scanners' images (the student's vendor-like shifts, issue 35; each off at 0, each
    applied to a stack with probability ``vendor_prob``, images only unless said):
    quarter_turns: probability of turning the stack by a random multiple of 90 degrees
        (another in-plane convention; image and targets alike, with ``flip`` all eight).
    slice_mix: through-plane partial volume of thicker slices: each slice mixed with its two
        neighbours in the stack, weight uniform in [0, slice_mix].
    sharpen: unsharp masking (sigma 1 px), amount uniform in [0, sharpen]: a sharper
        reconstruction filter.
    gibbs: k-space kept within a radius uniform in [1 - gibbs, 1] of the Nyquist circle: a
        coarser acquisition with its ringing.
    shading: a smooth receive-coil gain, exp of a random quadratic over the image with
        coefficients uniform in +-shading, one field per stack.
    hot_spot: a bright Gaussian blob (sigma 6 % of the image, peak uniform in [0.5, 1] x
        hot_spot) at a random place: a surface coil close to the chest wall.
    curve: a random monotone intensity curve (five knots, log-increments uniform in
        +-curve): other sequences' blood, fat and myocardium contrast.
    rician: Rician noise (magnitude of complex Gaussian noise), std uniform in [0, rician].
    vendor_prob: the probability each of these is applied to a stack.
    renormalise: after the intensity changes, rescale each stack to its 0.5-99.5 percentiles
        (clipped to [0, 1]), as inference normalises every stack it reads.
    """

    rotation_deg: float = 30.0
    shift: float = 16.0
    scale: float = 0.1
    flip: float = 0.5
    crop: int = 0
    gamma: float = 0.3
    contrast: float = 0.15
    noise: float = 0.03
    blur: float = 0.0
    blur_prob: float = 0.0
    quarter_turns: float = 0.0
    slice_mix: float = 0.0
    sharpen: float = 0.0
    gibbs: float = 0.0
    shading: float = 0.0
    hot_spot: float = 0.0
    curve: float = 0.0
    rician: float = 0.0
    vendor_prob: float = 0.0
    renormalise: bool = False

    def to_dict(self) -> dict:
        return asdict(self)


def stack_index(stack_sizes: list[int], device: torch.device | str) -> torch.Tensor:
    """``[N]`` int64: the stack of every slice, made on the host from the Python sizes and sent
    without a host sync (``torch.repeat_interleave`` with tensor repeats reads their sum back
    from the GPU, one sync per call)."""
    index = torch.tensor([i for i, s in enumerate(stack_sizes) for _ in range(s)], dtype=torch.long)
    return to_device(index, device)


class StackAugmenter:
    """Callable: ``aug(images, labels, stack_sizes, extra=None, generator=None)``.

    Args:
        images: float ``[N, 1, H, W]`` in [0, 1] (may be ``None`` for probability-only input).
        labels: int64 ``[N, H, W]`` or ``None``.
        stack_sizes: slices per stack; ``sum(stack_sizes) == N``.
        extra: float ``[N, C, H, W]`` maps (for example Seg-stage probabilities) transformed
            with the same geometry, bilinear, without intensity changes.
        centers: optional ``[len(stack_sizes), 2]`` (row, col) canvas positions to centre each
            stack's crop on (training crops around the heart); default the canvas centre.

    Returns ``(images, labels, extra)`` cropped to ``crop`` (or the input size).
    """

    def __init__(self, cfg: AugmentConfig):
        self.cfg = cfg

    def _theta(self, num_stacks: int, size: int, out: int, device, gen, centers=None) -> torch.Tensor:
        c = self.cfg

        def uniform(lo, hi, n=num_stacks):
            return torch.rand(n, device=device, generator=gen) * (hi - lo) + lo

        angle = uniform(-c.rotation_deg, c.rotation_deg) * math.pi / 180.0
        if c.quarter_turns > 0:  # drawn only when on: the other configs' random streams stay as they were
            turns = torch.randint(1, 4, (num_stacks,), device=device, generator=gen).to(angle.dtype)
            turns = turns * (torch.rand(num_stacks, device=device, generator=gen) < c.quarter_turns)
            angle = angle + turns * (math.pi / 2)
        zoom = uniform(1.0 - c.scale, 1.0 + c.scale)
        fx = torch.where(torch.rand(num_stacks, device=device, generator=gen) < c.flip, -1.0, 1.0)
        fy = torch.where(torch.rand(num_stacks, device=device, generator=gen) < c.flip, -1.0, 1.0)
        # normalised shift: +-shift pixels of the input = +-2*shift/size in [-1, 1] units
        tx = uniform(-c.shift, c.shift) * 2.0 / size
        ty = uniform(-c.shift, c.shift) * 2.0 / size
        if centers is not None:  # crop centred on given pixel positions (row, col), +- shift
            centers = to_device(centers.to(tx.dtype), device)
            tx = tx + (2.0 * centers[:, 1] + 1.0) / size - 1.0
            ty = ty + (2.0 * centers[:, 0] + 1.0) / size - 1.0
        ratio = out / size / zoom  # output grid covers out/size of the input, shrunk by zoom
        cos, sin = torch.cos(angle) * ratio, torch.sin(angle) * ratio
        theta = torch.stack(
            [torch.stack([cos * fx, -sin * fy, tx], -1), torch.stack([sin * fx, cos * fy, ty], -1)], 1
        )
        return theta

    def __call__(self, images, labels, stack_sizes, extra=None, generator=None, centers=None):
        ref = images if images is not None else extra
        n, _, h, w = ref.shape
        if h != w:
            raise ValueError(f"augmentation expects square canvases, got {h}x{w}")
        if sum(stack_sizes) != n:
            raise ValueError(f"stack sizes {stack_sizes} do not add up to {n} slices")
        out = self.cfg.crop or h
        index = stack_index(stack_sizes, ref.device)
        theta = self._theta(len(stack_sizes), h, out, ref.device, generator, centers)
        theta = per_stack(theta, index).to(ref.dtype)
        grid = F.affine_grid(theta, [n, 1, out, out], align_corners=False)
        if images is not None:
            images = F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
            images = self._intensity(images, index, list(stack_sizes), generator)
        if extra is not None:
            # outside the canvas a probability map is pure background (channel 0)
            border = torch.zeros(1, extra.shape[1], 1, 1, device=extra.device, dtype=extra.dtype)
            border[:, 0] = 1.0
            extra = F.grid_sample(extra - border, grid, mode="bilinear", padding_mode="zeros", align_corners=False) + border
        if labels is not None:
            labels = F.grid_sample(labels[:, None].to(ref.dtype), grid, mode="nearest", padding_mode="zeros",
                                   align_corners=False)[:, 0].round().long()
        return images, labels, extra

    def _intensity(self, images: torch.Tensor, index: torch.Tensor, sizes: list[int], gen) -> torch.Tensor:
        """Per stack (``sizes`` of the stacks, ``index`` the stack of every slice): the vendor-like shifts
        (:mod:`cmrseg.data.vendor_shifts`) where configured, then blur, gamma, contrast, noise,
        then the percentile normalisation where configured."""
        c, k = self.cfg, len(sizes)
        dev = images.device
        if c.vendor_prob > 0:
            images = vendor_shifts(images, index, k, c, gen)
        if c.blur > 0 and c.blur_prob > 0:
            sigma = torch.rand(k, device=dev, generator=gen) * c.blur
            sigma = sigma * (torch.rand(k, device=dev, generator=gen) < c.blur_prob)
            images = gaussian_blur(images, per_stack(sigma, index), radius=math.ceil(3 * c.blur))
        if c.gamma > 0:
            log_g = (torch.rand(k, device=dev, generator=gen) * 2 - 1) * math.log1p(c.gamma)
            g = per_stack(torch.exp(log_g), index).view(-1, 1, 1, 1)
            images = images.clamp(min=0.0) ** g
        if c.contrast > 0:
            f = per_stack(1 + (torch.rand(k, device=dev, generator=gen) * 2 - 1) * c.contrast, index)
            mean = images.mean(dim=(1, 2, 3), keepdim=True)
            images = (images - mean) * f.view(-1, 1, 1, 1) + mean
        if c.noise > 0:
            sigma = per_stack(torch.rand(k, device=dev, generator=gen) * c.noise, index)
            noise = torch.randn(images.shape, device=dev, generator=gen, dtype=images.dtype)
            images = images + noise * sigma.view(-1, 1, 1, 1)
        if c.vendor_prob > 0 and c.rician > 0:
            images = rician_noise(images, index, k, c, gen)
        if c.renormalise:
            images = renormalise(images, sizes)
        return images
