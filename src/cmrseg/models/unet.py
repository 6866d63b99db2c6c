"""SK-UNet and its all-slice / multitask variants: one configurable network.

* ``all_slice=False, classifier=False``: **SK-UNet**, the single-slice (SS) baseline [SK-UNet,
  Wang et al. 2019] (paper Table 1 "SS SK-UNet").
* ``all_slice=True``: **all-slice (AS) After-UNet-style** model: the same encoder/decoder with
  the all-slice fusion transformer at the bottleneck (Sec. 2.2).
* ``classifier=True``: multitask (MT) form with a classification branch, an MLP on the
  bottleneck features pooled per slice giving [RV, MYO, LV] presence logits (Sec. 2.3).
  The MLP reads the bottleneck *after* the fusion transformer (the paper's text says
  "bottleneck features"; after fusion the classifier also sees the neighbouring slices,
  which is what the method is built on).
* ``in_channels=4``: the refinement (Ref) stage, whose input is the Seg stage's
  probability maps (Sec. 2.1).
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from cmrseg.models.blocks import MaxPool2, SKBlock
from cmrseg.models.fusion import AllSliceFusion
from cmrseg.models.outputs import SegOutput, gate_logits


class Encoder(nn.Module):
    """``[N, in_ch, H, W]`` -> features at strides 1, 2, ..., 2**(len(widths)-1)."""

    def __init__(self, in_ch: int, widths: tuple[int, ...], norm: str, sk_groups: int):
        super().__init__()
        self.stages = nn.ModuleList()
        prev = in_ch
        for i, w in enumerate(widths):
            block = SKBlock(prev, w, norm, sk_groups)
            self.stages.append(block if i == 0 else nn.Sequential(MaxPool2(), block))
            prev = w

    def forward(self, x: torch.Tensor, valid: torch.Tensor | None = None) -> list[torch.Tensor]:
        feats = []
        for i, stage in enumerate(self.stages):
            if i:
                pool, stage = stage
                x = pool(x)
            x = stage(x, valid)
            feats.append(x)
        return feats


class Decoder(nn.Module):
    """Transposed-conv upsampling, skip concatenation and an :class:`SKBlock` per level;
    a 1x1 convolution gives ``num_classes`` logits at full resolution."""

    def __init__(self, widths: tuple[int, ...], num_classes: int, norm: str, sk_groups: int):
        super().__init__()
        self.ups = nn.ModuleList()
        self.blocks = nn.ModuleList()
        for i in range(len(widths) - 1, 0, -1):
            self.ups.append(nn.ConvTranspose2d(widths[i], widths[i - 1], 2, stride=2))
            self.blocks.append(SKBlock(2 * widths[i - 1], widths[i - 1], norm, sk_groups))
        self.head = nn.Conv2d(widths[0], num_classes, 1)

    def forward(self, feats: list[torch.Tensor], bottleneck: torch.Tensor,
                valid: torch.Tensor | None = None) -> torch.Tensor:
        x = bottleneck
        for up, block, skip in zip(self.ups, self.blocks, reversed(feats[:-1])):
            x = block(torch.cat([up(x), skip], dim=1), valid)
        return self.head(x)


class ClassifierHead(nn.Module):
    """Per-slice presence classifier: [avg-pool ; max-pool] of ``[N, C, h, w]`` -> MLP ->
    ``[N, num_outputs]`` logits."""

    def __init__(self, channels: int, num_outputs: int = 3, dropout: float = 0.1):
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(2 * channels, channels), nn.ReLU(inplace=True), nn.Dropout(dropout),
                                 nn.Linear(channels, num_outputs))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mlp(torch.cat([x.mean(dim=(2, 3)), x.amax(dim=(2, 3))], dim=1))


class SegmentationNet(nn.Module):
    """SK-UNet with optional all-slice fusion bottleneck and classification branch.

    Args:
        in_channels: 1 for images, 4 for the Ref stage's probability maps.
        num_classes: output classes (4: bg, RV, MYO, LV).
        widths: channels per level; ``len(widths) - 1`` poolings.
        all_slice: the all-slice fusion transformer at the bottleneck (the module ``fusion``).
        classifier: multitask classification branch.
        fusion_depth, heads, mlp_ratio: transformer settings (dim = ``widths[-1]``).
        residual_input: the input is a probability map over the output classes (the Ref
            stage) and the network predicts a correction: ``logits = log(input) + net(input)``,
            so an untrained Ref stage reproduces the Seg stage and training only has to
            learn where to change it (our addition to the paper's Ref stage).

    ``forward(x, stack_sizes=None, stack_ids=None)``: ``x`` ``[N, in_channels, H, W]`` (any H,
    W: padded internally to a multiple of ``2**(len(widths)-1)``), ``stack_sizes`` the slices of
    each stack in ``x`` (``None``: one stack). Instead of ``stack_sizes``, fixed-shape training
    batches give ``stack_ids`` ``[N]`` int64: each slice's stack, -1 for a padding slice, which
    no real slice sees (not in batch statistics, not in attention); its outputs are meaningless
    and the loss leaves them out. Returns :class:`SegOutput`.
    """

    def __init__(self, in_channels: int = 1, num_classes: int = 4, widths: tuple[int, ...] = (16, 32, 64, 128, 256),
                 norm: str = "batch", sk_groups: int = 1, all_slice: bool = False, classifier: bool = False,
                 fusion_depth: int = 1, heads: int = 8, mlp_ratio: float = 2.0, dropout: float = 0.0,
                 residual_input: bool = False):
        super().__init__()
        if residual_input and in_channels != num_classes:
            raise ValueError("residual_input needs in_channels == num_classes (a probability-map input)")
        self.residual_input = residual_input
        widths = tuple(widths)
        self.divisor = 2 ** (len(widths) - 1)
        self.encoder = Encoder(in_channels, widths, norm, sk_groups)
        self.fusion = AllSliceFusion(widths[-1], heads, fusion_depth, mlp_ratio, dropout) if all_slice else None
        self.decoder = Decoder(widths, num_classes, norm, sk_groups)
        self.classifier = ClassifierHead(widths[-1]) if classifier else None

    @property
    def all_slice(self) -> bool:
        return self.fusion is not None

    def forward(self, x: torch.Tensor, stack_sizes: list[int] | None = None,
                stack_ids: torch.Tensor | None = None) -> SegOutput:
        inp = x
        valid = None if stack_ids is None else stack_ids >= 0
        h, w = x.shape[-2:]
        ph, pw = (-h) % self.divisor, (-w) % self.divisor
        if ph or pw:
            x = F.pad(x, (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2))
        feats = self.encoder(x, valid)
        bottleneck = feats[-1]
        if self.fusion is not None:
            bottleneck = self.fusion(bottleneck, stack_sizes, stack_ids)
        logits = self.decoder(feats, bottleneck, valid)
        if ph or pw:
            logits = logits[..., ph // 2:ph // 2 + h, pw // 2:pw // 2 + w]
        if self.residual_input:
            logits = logits + torch.log(inp.float().clamp_min(1e-4)).to(logits.dtype)
        if self.classifier is None:
            return SegOutput(logits)
        class_logits = self.classifier(bottleneck)
        gated = logits if self.training else gate_logits(logits, class_logits)
        return SegOutput(gated, class_logits, ungated_logits=logits)
