"""Two-stage detection + segmentation baseline (paper Table 1 "Det + Seg", after [15]).

A detector (the same SK-UNet blocks, at half resolution) finds the heart in every slice;
the largest connected piece of its detections in the stack (slices stacked) gives one crop
centre per stack (:func:`centers_from_mask`); the crop
(``crop`` canvas pixels square) is upsampled ``zoom`` times and segmented by an all-slice
SK-UNet with the same blocks; the result is pasted back into the canvas (background
elsewhere). Training feeds crops centred on the true heart (with jitter) through
``forward(..., centers=...)``; inference uses the detector's centres.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from cmrseg.models.outputs import SegOutput, class_argmax
from cmrseg.models.unet import SegmentationNet

_BG_LOGIT = 20.0  # background score pasted outside the crop (foreground gets -20)


def largest_piece(mask: np.ndarray) -> np.ndarray:
    """The largest connected piece of the boolean ``mask`` (any dimensions; face neighbours, so
    across a stack's slices only where their masks overlap); ``mask`` itself when it has at
    most one piece."""
    from scipy import ndimage

    pieces, n = ndimage.label(mask)
    if n <= 1:
        return mask
    return pieces == 1 + int(np.argmax(ndimage.sum_labels(mask, pieces, index=np.arange(1, n + 1))))


def centers_from_mask(mask: torch.Tensor, stack_sizes: list[int]) -> torch.Tensor:
    """One (row, col) centre per stack: the middle of the bounding box (over all the stack's
    slices) of the largest connected piece of ``mask`` ``[N, H, W]`` with the stack's slices
    stacked as a volume; the canvas centre when the mask is empty. Returns int64
    ``[len(stack_sizes), 2]``.

    The heart is the one piece that runs through the stack; a stray detection elsewhere moved
    the box of every detection by half its distance (a 12-epoch ``fast`` run on ACDC val: the
    crop 44 mm off the heart on average, part of the heart left out in 16 of 20 stacks; with
    this rule 4.6 mm and none; docs/RESULTS.md, ``experiments/det_centres.py``)."""
    h, w = mask.shape[-2:]
    out = []
    start = 0
    for s in stack_sizes:
        m = mask[start:start + s].cpu().numpy()
        start += s
        m = largest_piece(m).any(axis=0)
        rows, cols = np.flatnonzero(m.any(axis=1)), np.flatnonzero(m.any(axis=0))
        out.append([h // 2, w // 2] if rows.size == 0 else [(rows[0] + rows[-1] + 1) // 2, (cols[0] + cols[-1] + 1) // 2])
    return torch.tensor(out, dtype=torch.long)


class DetSegNet(nn.Module):
    """Args: the :class:`SegmentationNet` settings shared by detector and segmenter, plus
    ``crop`` (canvas pixels) and ``zoom`` (upsampling of the crop).

    ``forward(x, stack_sizes=None, centers=None)``: ``x`` ``[N, 1, H, W]`` ->
    :class:`SegOutput` with canvas logits, ``seg_logits`` the detector's heart logits
    ``[N, 2, H, W]`` and ``extras`` ``crop_logits`` ``[N, 4, round(crop*zoom), round(crop*zoom)]`` and
    ``crop_centers`` ``[stacks, 2]``.
    """

    def __init__(self, crop: int = 128, zoom: float = 1.5, **net_kwargs):
        super().__init__()
        net_kwargs = {k: v for k, v in net_kwargs.items() if k not in ("all_slice", "classifier", "in_channels")}
        self.detector = SegmentationNet(1, 2, all_slice=False, **net_kwargs)
        self.segmenter = SegmentationNet(1, 4, all_slice=True, **net_kwargs)
        self.crop_size, self.zoom = crop, zoom

    all_slice = True

    def crop(self, t: torch.Tensor, centers: torch.Tensor, stack_sizes: list[int], fill: float = 0.0) -> torch.Tensor:
        """Crop ``[N, C, H, W]`` around each stack's centre -> ``[N, C, crop, crop]``."""
        c = self.crop_size
        half = c // 2
        padded = F.pad(t, (half, c - half, half, c - half), value=fill)
        out, start = [], 0
        for (cy, cx), s in zip(centers.tolist(), stack_sizes):
            cy = min(max(cy, 0), t.shape[-2])
            cx = min(max(cx, 0), t.shape[-1])
            out.append(padded[start:start + s, :, cy:cy + c, cx:cx + c])
            start += s
        return torch.cat(out)

    def paste(self, crop_logits: torch.Tensor, centers: torch.Tensor, stack_sizes: list[int], size) -> torch.Tensor:
        """Inverse of :meth:`crop` for logits: background outside the crop."""
        c = self.crop_size
        half = c // 2
        n, k = crop_logits.shape[:2]
        h, w = size
        full = crop_logits.new_full((n, k, h + c, w + c), -_BG_LOGIT)
        full[:, 0] = _BG_LOGIT
        start = 0
        for (cy, cx), s in zip(centers.tolist(), stack_sizes):
            cy = min(max(cy, 0), h)
            cx = min(max(cx, 0), w)
            full[start:start + s, :, cy:cy + c, cx:cx + c] = crop_logits[start:start + s]
            start += s
        return full[..., half:half + h, half:half + w]

    def detect(self, x: torch.Tensor) -> torch.Tensor:
        """Heart logits ``[N, 2, H, W]`` from the half-resolution detector."""
        det = self.detector(F.avg_pool2d(x, 2)).logits
        return F.interpolate(det, size=x.shape[-2:], mode="bilinear", align_corners=False)

    def forward(self, x: torch.Tensor, stack_sizes: list[int] | None = None,
                centers: torch.Tensor | None = None) -> SegOutput:
        sizes = [x.shape[0]] if stack_sizes is None else list(stack_sizes)
        det = self.detect(x)
        if centers is None:
            centers = centers_from_mask(class_argmax(det) == 1, sizes)
        crop = self.crop(x, centers, sizes)
        zoomed = int(round(self.crop_size * self.zoom))
        crop = F.interpolate(crop, size=(zoomed, zoomed), mode="bilinear", align_corners=False)
        crop_logits = self.segmenter(crop, sizes).logits
        small = crop_logits
        if self.zoom != 1:  # antialiased resampling has no bf16 kernel on the CPU: float32, then back
            small = F.interpolate(crop_logits.float(), size=(self.crop_size, self.crop_size), mode="bilinear",
                                  align_corners=False, antialias=True).to(crop_logits.dtype)
        logits = self.paste(small, centers, sizes, x.shape[-2:])
        return SegOutput(logits, seg_logits=det, extras={"crop_logits": crop_logits, "crop_centers": centers})
