"""Convolutional building blocks shared by every network (same blocks, same convolution
hyper-parameters across models: the paper's fair-comparison rule, Sec. 3.2).

Every block takes an optional ``valid`` (``[N]`` bool, True = a real slice): fixed-shape
training batches (``TrainConfig.fixed_shape``) carry padding slices, and batch normalisation
must not count them (:class:`MaskedBatchNorm2d`); every other layer works per slice.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


class MaxPool2(nn.Module):
    """2x2 max pooling, stride 2: ``nn.MaxPool2d(2)``, faster at inference on the CPU.

    PyTorch's CPU kernel for channels-first max pooling is slow (torch 2.13 on the 2-core
    machine: 6.2 ms for ``[10, 16, 128, 128]`` in bf16, 11 % of a member's inference). Without
    gradients, on the CPU and outside tracing, this takes the maximum of the four strided
    sub-grids instead: the same values bit for bit (a maximum rounds nothing), about 7x faster.
    With gradients it calls ``max_pool2d``, whose backward sends a tie's gradient to one input
    where ``torch.maximum`` would split it, so training is unchanged.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.requires_grad or x.device.type != "cpu" or torch.jit.is_tracing() or torch.onnx.is_in_onnx_export():
            return F.max_pool2d(x, 2)
        x = x[..., : x.shape[-2] // 2 * 2, : x.shape[-1] // 2 * 2]  # max_pool2d drops an odd last row / column
        return torch.maximum(torch.maximum(x[..., 0::2, 0::2], x[..., 0::2, 1::2]),
                             torch.maximum(x[..., 1::2, 0::2], x[..., 1::2, 1::2]))


class MaskedBatchNorm2d(nn.BatchNorm2d):
    """``nn.BatchNorm2d`` (same parameters, buffers and state-dict keys) whose training-mode
    statistics can leave out padding slices: ``forward(x, valid)`` with ``valid`` ``[N]`` bool
    normalises every slice with the mean and variance of the valid slices only, and updates the
    running statistics with them, exactly as ``nn.BatchNorm2d`` on the valid slices alone would.
    Written out because torch's batch norm has no mask; without ``valid``, or in eval mode, it
    is ``nn.BatchNorm2d``. The statistics are computed in float32 with tensor operations only
    (no host sync, one shape whatever the padding: CUDA graphs apply)."""

    def forward(self, x: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
        if valid is None or not self.training:
            return super().forward(x)
        if self.momentum is None:
            raise ValueError("MaskedBatchNorm2d with a mask needs a momentum (cumulative averages are not supported)")
        xf = x.float()
        w = valid.to(xf.dtype).view(-1, 1, 1, 1)
        count = w.sum() * x.shape[2] * x.shape[3]
        mean = (xf * w).sum(dim=(0, 2, 3)) / count
        centred = xf - mean.view(1, -1, 1, 1)
        var = (centred.square() * w).sum(dim=(0, 2, 3)) / count
        if self.track_running_stats:
            with torch.no_grad():
                self.running_mean.lerp_(mean.detach(), self.momentum)
                self.running_var.lerp_(var.detach() * count / (count - 1).clamp(min=1), self.momentum)
                self.num_batches_tracked.add_(1)
        out = centred * torch.rsqrt(var + self.eps).view(1, -1, 1, 1)
        if self.affine:
            out = out * self.weight.view(1, -1, 1, 1) + self.bias.view(1, -1, 1, 1)
        return out.to(x.dtype)


def norm_layer(kind: str, channels: int) -> nn.Module:
    """``batch`` | ``instance`` | ``group`` normalisation over ``channels``."""
    if kind == "batch":
        return MaskedBatchNorm2d(channels)
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

    def forward(self, x: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
        conv, norm, act = self
        x = conv(x)
        return act(norm(x, valid) if isinstance(norm, MaskedBatchNorm2d) else norm(x))


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

    def forward(self, x: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
        # the branches stay separate tensors: stacking them into [N, M, C, H, W] copied every
        # feature map once more forward and backward (same sums, same order, same result)
        feats = [b(x, valid) for b in self.branches]
        total = feats[0]
        for f in feats[1:]:
            total = total + f
        z = self.squeeze(total.mean(dim=(2, 3)))  # [N, hidden]
        attn = self.select(z).view(x.shape[0], len(feats), self.out_ch).softmax(dim=1)[..., None, None]
        out = feats[0] * attn[:, 0]
        for m in range(1, len(feats)):
            out = out + feats[m] * attn[:, m]
        return out


class SKBlock(nn.Sequential):
    """The UNet stage block of every model: 3x3 conv -> norm -> act, then an :class:`SKConv`.
    ``[N, in_ch, H, W] -> [N, out_ch, H, W]``."""

    def __init__(self, in_ch: int, out_ch: int, norm: str = "batch", sk_groups: int = 1):
        super().__init__(ConvNormAct(in_ch, out_ch, norm=norm), SKConv(out_ch, out_ch, groups=sk_groups, norm=norm))

    def forward(self, x: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
        first, sk = self
        return sk(first(x, valid), valid)
