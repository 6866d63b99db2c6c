"""How a multitask model's classifier acts on its masks at inference, and test-time flips.

The paper's gate (Sec. 2.3) removes, per slice, every class whose presence probability is not
above 0.5. On faint apical RV that deletes real anatomy (issue 11: the Ref stage's gate removed
RV on 22 of 64 apical val slices where the truth has it). The modes:

* ``hard``: the paper's gate.
* ``soft``: each class's pixel probabilities are scaled by its presence probability and
  renormalised (background takes the rest), so a doubtful class survives where the pixels are sure.
* ``seg``: the hard gate may remove a class only on a slice where the Seg stage also has fewer
  than ``SEG_MIN_PIXELS`` pixels of it; where the Seg stage saw it, the Ref stage's pixels stay.
* ``off``: no gate (the Ref stage's ungated output).

``flips``: test-time augmentation: the stack and its left-right, up-down and both flips are
segmented, probabilities (and presence probabilities) averaged before the gate.
"""

from __future__ import annotations

import torch

from cmrseg.inference.options import GATES
from cmrseg.models.outputs import class_argmax

GATE_MODES = GATES  # the names live with the options (cmrseg.inference.options): no torch to list them
SEG_MIN_PIXELS = 20  # canvas pixels of a class the Seg stage must have to veto the gate
FLIPS = ((), (-1,), (-2,), (-2, -1))


def apply_gate(probs: torch.Tensor, presence: torch.Tensor | None, mode: str,
               seg_probs: torch.Tensor | None = None) -> torch.Tensor:
    """``probs`` ``[S, 4, H, W]`` ungated class probabilities, ``presence`` ``[S, 3]`` the
    classifier's (RV, MYO, LV) probabilities -> gated probabilities ``[S, 4, H, W]``."""
    if mode not in GATE_MODES:
        raise ValueError(f"gate must be one of {GATE_MODES}, got {mode!r}")
    if presence is None or mode == "off":
        return probs
    if mode == "soft":
        scale = torch.cat([torch.ones_like(presence[:, :1]), presence], dim=1)[:, :, None, None]
    else:
        keep = presence > 0.5  # [S, 3]
        if mode == "seg" and seg_probs is not None:
            seg_labels = class_argmax(seg_probs)
            seg_pixels = torch.stack([(seg_labels == c).flatten(1).sum(1) for c in (1, 2, 3)], dim=1)
            keep = keep | (seg_pixels >= SEG_MIN_PIXELS)
        scale = torch.cat([torch.ones_like(presence[:, :1]), keep.to(probs.dtype)], dim=1)[:, :, None, None]
    gated = probs * scale
    total = gated.sum(dim=1, keepdim=True)
    # a pixel whose every remaining class was removed falls to background
    empty = total <= 1e-12
    gated = torch.where(empty, torch.zeros_like(gated), gated / total.clamp(min=1e-12))
    gated[:, :1] = torch.where(empty[:, 0:1], torch.ones_like(gated[:, :1]), gated[:, :1])
    return gated
