"""What every model returns, and classifier gating (paper Sec. 2.3)."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

SUPPRESSED_LOGIT = -1.0e4  # finite (ONNX- and bf16-safe); softmax gives exactly 0


@dataclass
class SegOutput:
    """Attributes:
    logits: ``[S, 4, H, W]`` final class scores (bg, RV, MYO, LV). For multitask models in
        eval mode they are *gated*: a class the classifier calls absent in a slice cannot win.
    class_logits: ``[S, 3]`` presence logits of (RV, MYO, LV) per slice, or ``None``.
    seg_logits: first-stage output of two-stage models (``[S, 4, H, W]`` for Seg+Ref,
        ``[S, 2, H, W]`` heart logits for Det+Seg), else ``None``.
    ungated_logits: the logits before gating (multitask models), else ``None``.
    extras: model-specific tensors (Det+Seg: ``crop_logits``, ``crop_centers``).
    """

    logits: torch.Tensor
    class_logits: torch.Tensor | None = None
    seg_logits: torch.Tensor | None = None
    ungated_logits: torch.Tensor | None = None
    extras: dict = field(default_factory=dict)


def class_argmax(t: torch.Tensor) -> torch.Tensor:
    """The class index of ``t`` ``[S, K, H, W]`` (scores or probabilities): ``t.argmax(dim=1)``.

    ``max(dim=1)`` returns the same indices (the first maximum on ties, for both) and on the
    CPU is about ten times faster, where ``argmax`` reduces over a strided dimension (torch
    2.13, 2 cores: 26 against 2.2 ms for ``[10, 4, 192, 192]``, 14 % of the default's
    inference before).
    """
    return t.max(dim=1).indices


def gate_logits(logits: torch.Tensor, class_logits: torch.Tensor, threshold: float = 0.5) -> torch.Tensor:
    """Suppress, per slice, every foreground class whose presence probability is not above
    ``threshold`` (paper: p_i > 0.5); its pixels fall to the best remaining class.

    ``logits`` ``[S, 4, H, W]``, ``class_logits`` ``[S, 3]`` -> gated ``[S, 4, H, W]``.
    """
    present = (torch.sigmoid(class_logits) > threshold)[:, :, None, None]
    fg = torch.where(present, logits[:, 1:], torch.full_like(logits[:, 1:], SUPPRESSED_LOGIT))
    return torch.cat([logits[:, :1], fg], dim=1)
