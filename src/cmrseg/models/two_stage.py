"""Two-stage models: initial segmentation (Seg) + segmentation refinement (Ref) stage
(paper Sec. 2.1, Fig. 2).

The Ref stage sees only the Seg stage's softmax probability maps of all slices, never the
image, so intensity variations cannot reach it. With a classification branch (MT), the
Ref stage's classifier gates the final output (Sec. 2.3).
"""

from __future__ import annotations

import torch
import torch.nn as nn

from cmrseg.models.outputs import SegOutput
from cmrseg.models.unet import SegmentationNet


class TwoStageNet(nn.Module):
    """``seg`` (image -> 4-class logits) followed by ``ref`` (4 probability maps -> logits).

    ``forward(x, stack_sizes=None, stack_ids=None)`` (see :class:`SegmentationNet`): ``x``
    ``[N, 1, H, W]`` -> :class:`SegOutput` with the Ref stage's (gated, in eval) logits and class
    logits, and ``seg_logits`` from Seg.
    """

    def __init__(self, seg: SegmentationNet, ref: SegmentationNet):
        super().__init__()
        self.seg = seg
        self.ref = ref

    @property
    def all_slice(self) -> bool:
        return self.seg.all_slice or self.ref.all_slice

    def forward(self, x: torch.Tensor, stack_sizes: list[int] | None = None,
                stack_ids: torch.Tensor | None = None) -> SegOutput:
        s = self.seg(x, stack_sizes, stack_ids)
        r = self.ref(s.logits.float().softmax(dim=1).to(x.dtype), stack_sizes, stack_ids)
        return SegOutput(r.logits, r.class_logits, seg_logits=s.logits, ungated_logits=r.ungated_logits)
