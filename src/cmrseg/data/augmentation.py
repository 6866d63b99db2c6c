"""Stack-consistent data augmentation on any device (CPU or GPU), batched.

The paper's augmentation is random rotation, shift, flip and crop; we add mild scaling and
intensity changes (blur, gamma, contrast, noise), each configurable and off with a zero range.
Blur stands for a scanner that acquires at a lower resolution than it reconstructs (nnU-Net
draws a similar Gaussian blur); ``experiments/domain_shift.py`` measures what it buys.
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

    def to_dict(self) -> dict:
        return asdict(self)


def stack_index(stack_sizes: list[int], device: torch.device | str) -> torch.Tensor:
    """``[N]`` int64: the stack of every slice, made on the host from the Python sizes and sent
    without a host sync (``torch.repeat_interleave`` with tensor repeats reads their sum back
    from the GPU, one sync per call)."""
    index = torch.tensor([i for i, s in enumerate(stack_sizes) for _ in range(s)], dtype=torch.long)
    return to_device(index, device)


def _per_stack(values: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """One value per stack -> one value per slice (``index`` from :func:`stack_index`)."""
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


class StackAugmenter:
    """Callable: ``aug(images, labels, stack_sizes, extra=None, generator=None)``.

    Args:
        images: float ``[N, 1, H, W]`` in [0, 1] (may be ``None`` for probability-only input).
        labels: int64 ``[N, H, W]`` or ``None``.
        stack_sizes: slices per stack; ``sum(stack_sizes) == N``.
        extra: float ``[N, C, H, W]`` maps (for example stage-1 probabilities) transformed
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
        theta = _per_stack(theta, index).to(ref.dtype)
        grid = F.affine_grid(theta, [n, 1, out, out], align_corners=False)
        if images is not None:
            images = F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
            images = self._intensity(images, index, len(stack_sizes), generator)
        if extra is not None:
            # outside the canvas a probability map is pure background (channel 0)
            border = torch.zeros(1, extra.shape[1], 1, 1, device=extra.device, dtype=extra.dtype)
            border[:, 0] = 1.0
            extra = F.grid_sample(extra - border, grid, mode="bilinear", padding_mode="zeros", align_corners=False) + border
        if labels is not None:
            labels = F.grid_sample(labels[:, None].to(ref.dtype), grid, mode="nearest", padding_mode="zeros",
                                   align_corners=False)[:, 0].round().long()
        return images, labels, extra

    def _intensity(self, images: torch.Tensor, index: torch.Tensor, k: int, gen) -> torch.Tensor:
        """Per stack (``k`` stacks, ``index`` the stack of every slice): blur, gamma, contrast, noise."""
        c = self.cfg
        dev = images.device
        if c.blur > 0 and c.blur_prob > 0:
            sigma = torch.rand(k, device=dev, generator=gen) * c.blur
            sigma = sigma * (torch.rand(k, device=dev, generator=gen) < c.blur_prob)
            images = gaussian_blur(images, _per_stack(sigma, index), radius=math.ceil(3 * c.blur))
        if c.gamma > 0:
            log_g = (torch.rand(k, device=dev, generator=gen) * 2 - 1) * math.log1p(c.gamma)
            g = _per_stack(torch.exp(log_g), index).view(-1, 1, 1, 1)
            images = images.clamp(min=0.0) ** g
        if c.contrast > 0:
            f = _per_stack(1 + (torch.rand(k, device=dev, generator=gen) * 2 - 1) * c.contrast, index)
            mean = images.mean(dim=(1, 2, 3), keepdim=True)
            images = (images - mean) * f.view(-1, 1, 1, 1) + mean
        if c.noise > 0:
            sigma = _per_stack(torch.rand(k, device=dev, generator=gen) * c.noise, index)
            noise = torch.randn(images.shape, device=dev, generator=gen, dtype=images.dtype)
            images = images + noise * sigma.view(-1, 1, 1, 1)
        return images
