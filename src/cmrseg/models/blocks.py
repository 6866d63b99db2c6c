"""Convolutional building blocks shared by every network (same blocks, same convolution
hyper-parameters across models: the paper's fair-comparison rule, Sec. 3.2)."""

from __future__ import annotations

import torch
import torch.nn as nn


def norm_layer(kind: str, channels: int) -> nn.Module:
    """``batch`` | ``instance`` | ``group`` normalisation over ``channels``."""
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    if kind == "instance":
        return nn.InstanceNorm2d(channels, affine=True)
    if kind == "group":
        return nn.GroupNorm(min(8, channels), channels)
    raise ValueError(f"unknown norm {kind!r} (batch, instance, group)")


class ConvNormAct(nn.Sequential):
    """3x3 convolution (optionally dilated / grouped) -> norm -> LeakyReLU."""

    def __init__(self, in_ch: int, out_ch: int, dilation: int = 1, groups: int = 1, norm: str = "batch"):
        super().__init__(
            nn.Conv2d(in_ch, out_ch, 3, padding=dilation, dilation=dilation, groups=groups, bias=False),
            norm_layer(norm, out_ch),
            nn.LeakyReLU(0.01, inplace=True),
        )


class SKConv(nn.Module):
    """Selective-kernel convolution (SKNet, Li et al., CVPR 2019), as in SK-UNet.

    Two branches see the input with different receptive fields, a 3x3 convolution and a
    3x3 convolution with dilation 2 (a 5x5 field). Their sum is squeezed by global average
    pooling into a descriptor ``z``; one fully connected layer per branch turns ``z`` into
    channel weights, normalised with a softmax *across branches*; the output is the
    weighted sum of the branches.

    Shapes: ``[N, in_ch, H, W] -> [N, out_ch, H, W]``.

    Args:
        groups: channel groups of the branch convolutions (SKNet uses grouped branches;
            1 = dense).
        reduction: ``z`` has ``max(out_ch // reduction, min_dim)`` features.
    """

    def __init__(self, in_ch: int, out_ch: int, groups: int = 1, reduction: int = 4, min_dim: int = 16,
                 norm: str = "batch"):
        super().__init__()
        g = groups if in_ch % groups == 0 and out_ch % groups == 0 else 1
        self.branches = nn.ModuleList([ConvNormAct(in_ch, out_ch, dilation=d, groups=g, norm=norm) for d in (1, 2)])
        hidden = max(out_ch // reduction, min_dim)
        self.squeeze = nn.Sequential(nn.Linear(out_ch, hidden, bias=False), nn.LayerNorm(hidden), nn.ReLU(inplace=True))
        self.select = nn.Linear(hidden, out_ch * len(self.branches))
        self.out_ch = out_ch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feats = torch.stack([b(x) for b in self.branches], dim=1)  # [N, M, C, H, W]
        z = self.squeeze(feats.sum(dim=1).mean(dim=(2, 3)))  # [N, hidden]
        attn = self.select(z).view(x.shape[0], len(self.branches), self.out_ch).softmax(dim=1)
        return (feats * attn[..., None, None]).sum(dim=1)


class SKBlock(nn.Sequential):
    """The UNet stage block of every model: 3x3 conv -> norm -> act, then an :class:`SKConv`.
    ``[N, in_ch, H, W] -> [N, out_ch, H, W]``."""

    def __init__(self, in_ch: int, out_ch: int, norm: str = "batch", sk_groups: int = 1):
        super().__init__(ConvNormAct(in_ch, out_ch, norm=norm), SKConv(out_ch, out_ch, groups=sk_groups, norm=norm))
