"""Training losses (paper Sec. 2.4), with an optional soft-Dice term.

* :class:`SegLoss`: Seg-stage loss, pixel cross-entropy (the paper) plus ``dice_weight`` x
  soft Dice over the foreground classes (our addition, common in cardiac segmentation;
  ``dice_weight=0`` is the paper's loss).
* :class:`DistillationLoss`: a student network learning a teacher's class probabilities
  (soft targets) beside the experts' labels: ``teacher_weight`` x the cross-entropy with the
  teacher's probabilities + (1 - ``teacher_weight``) x :class:`SegLoss` with the labels.
* :class:`GatedRefinementLoss`: the Ref-stage multitask loss

      Loss2 = sum_i 1/2 [sign(p_i - 0.5) + 1] * CE_seg,i  +  lambda * sum_i CE_class,i

  over the foreground classes i in (RV, MYO, LV), per slice, averaged over slices, with
  lambda = 0.1. ``p_i`` is the classifier's presence probability (the gate is not
  differentiated: it selects terms, it is not trained through them). Our concrete
  **CE_seg,i** is the one-vs-rest binary cross-entropy of class i over all pixels of the
  slice, ``mean_px BCE(q_i, [y == i])`` with ``q_i`` the softmax probability of class i: it
  is defined for every class whether or not the class is present, penalises false
  positives of an open class, and leaves a gated-off class entirely unconstrained, which
  is the paper's intent ("only high-certainty anatomies are optimised"). CE_class,i is the
  binary cross-entropy of p_i against presence of class i in the slice's ground truth.
  With ``dice_weight > 0`` a soft Dice term per class over the gated-on slices is added.

Every loss takes an optional ``valid`` (``[N]`` bool): the real slices of a fixed-shape batch
(``TrainConfig.fixed_shape``); padding slices then count nowhere, and the loss equals the
loss of the real slices alone.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from cmrseg.labels import NUM_CLASSES


def presence_labels(labels: torch.Tensor) -> torch.Tensor:
    """``[N, H, W]`` labels -> ``[N, 3]`` float presence of (RV, MYO, LV) per slice."""
    return torch.stack([(labels == c).flatten(1).any(dim=1) for c in (1, 2, 3)], dim=1).float()


def _slice_mean(values: torch.Tensor, valid: torch.Tensor | None) -> torch.Tensor:
    """Mean of per-slice ``values`` ``[N]`` over the valid slices (all when ``valid`` is None)."""
    if valid is None:
        return values.mean()
    w = valid.to(values.dtype)
    return (values * w).sum() / w.sum().clamp(min=1)


def soft_dice_loss(probs: torch.Tensor, onehot: torch.Tensor, weights: torch.Tensor | None = None,
                   eps: float = 1.0) -> torch.Tensor:
    """1 - mean over foreground classes of the batch soft Dice.

    ``probs``/``onehot`` ``[N, 4, H, W]``; ``weights`` ``[N, 3]`` (0/1 slice selection per
    class, default all 1)."""
    p, y = probs[:, 1:], onehot[:, 1:]
    if weights is not None:
        w = weights[:, :, None, None]
        p, y = p * w, y * w
    inter = (p * y).sum(dim=(0, 2, 3))
    denom = p.sum(dim=(0, 2, 3)) + y.sum(dim=(0, 2, 3))
    return 1.0 - ((2 * inter + eps) / (denom + eps)).mean()


class SegLoss(nn.Module):
    """Cross-entropy (+ ``dice_weight`` x soft Dice).
    ``forward(logits [N,4,H,W], labels [N,H,W], valid=None)``."""

    def __init__(self, dice_weight: float = 1.0):
        super().__init__()
        self.dice_weight = dice_weight

    def forward(self, logits: torch.Tensor, labels: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
        logits = logits.float()
        if valid is None:
            loss = F.cross_entropy(logits, labels)
        else:  # every slice has the same pixel count: the mean of slice means is the pixel mean
            loss = _slice_mean(F.cross_entropy(logits, labels, reduction="none").mean(dim=(1, 2)), valid)
        if self.dice_weight:
            onehot = F.one_hot(labels, NUM_CLASSES).permute(0, 3, 1, 2).float()
            weights = None if valid is None else valid[:, None].float().expand(-1, NUM_CLASSES - 1)
            loss = loss + self.dice_weight * soft_dice_loss(logits.softmax(dim=1), onehot, weights)
        return loss


class DistillationLoss(nn.Module):
    """``forward(logits [N,4,H,W], teacher [N,4,H,W] probabilities, labels [N,H,W], valid=None)``
    (module docstring); the parts kept in ``self.last`` for logging. With temperature 1 the
    soft term is the cross-entropy that the KL divergence to the teacher differs from by the
    teacher's own entropy, a constant (Hinton et al., 2015)."""

    def __init__(self, teacher_weight: float = 0.7, dice_weight: float = 0.5):
        super().__init__()
        self.teacher_weight = teacher_weight
        self.hard = SegLoss(dice_weight)
        self.last: dict[str, torch.Tensor] = {}

    def forward(self, logits: torch.Tensor, teacher: torch.Tensor, labels: torch.Tensor,
                valid: torch.Tensor | None = None) -> torch.Tensor:
        log_p = F.log_softmax(logits.float(), dim=1)
        soft = _slice_mean(-(teacher.float() * log_p).sum(dim=1).mean(dim=(1, 2)), valid)
        hard = self.hard(logits, labels, valid)
        self.last = {"soft": soft.detach(), "hard": hard.detach()}
        return self.teacher_weight * soft + (1.0 - self.teacher_weight) * hard


class GatedRefinementLoss(nn.Module):
    """The paper's classifier-gated multitask loss (module docstring).

    ``forward(logits [N,4,H,W], class_logits [N,3], labels [N,H,W], valid=None)`` -> scalar; the parts
    are kept in ``self.last`` (``seg``, ``cls``, detached 0-d tensors: reading them as numbers
    would wait for the device on every step) for logging.
    """

    def __init__(self, lambda_cls: float = 0.1, dice_weight: float = 1.0):
        super().__init__()
        self.lambda_cls = lambda_cls
        self.dice_weight = dice_weight
        self.last: dict[str, torch.Tensor] = {}

    def forward(self, logits: torch.Tensor, class_logits: torch.Tensor, labels: torch.Tensor,
                valid: torch.Tensor | None = None) -> torch.Tensor:
        logits, class_logits = logits.float(), class_logits.float()
        probs = logits.softmax(dim=1)
        onehot = F.one_hot(labels, NUM_CLASSES).permute(0, 3, 1, 2).float()
        p = torch.sigmoid(class_logits)
        gate = 0.5 * (torch.sign(p.detach() - 0.5) + 1.0)  # [N, 3]
        # CE_seg,i: one-vs-rest BCE of class i over the slice's pixels -> [N, 3]
        log_q = F.log_softmax(logits, dim=1)[:, 1:]
        log_not_q = torch.log1p(-probs[:, 1:].clamp(max=1 - 1e-6))
        y = onehot[:, 1:]
        ce_seg = -(y * log_q + (1 - y) * log_not_q).mean(dim=(2, 3))
        seg = _slice_mean((gate * ce_seg).sum(dim=1), valid)
        present = presence_labels(labels)
        ce_cls = _slice_mean(F.binary_cross_entropy_with_logits(class_logits, present, reduction="none").sum(dim=1),
                             valid)
        loss = seg + self.lambda_cls * ce_cls
        if self.dice_weight:
            weights = gate if valid is None else gate * valid[:, None].to(gate.dtype)
            loss = loss + self.dice_weight * soft_dice_loss(probs, onehot, weights=weights)
        self.last = {"seg": seg.detach(), "cls": ce_cls.detach()}
        return loss


class HeartDetectionLoss(nn.Module):
    """Det+Seg detector: cross-entropy of heart (any label) vs background (+ soft Dice)."""

    def __init__(self, dice_weight: float = 1.0):
        super().__init__()
        self.dice_weight = dice_weight

    def forward(self, det_logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        heart = (labels > 0).long()
        det_logits = det_logits.float()
        loss = F.cross_entropy(det_logits, heart)
        if self.dice_weight:
            p = det_logits.softmax(dim=1)[:, 1]
            y = heart.float()
            loss = loss + self.dice_weight * (1 - (2 * (p * y).sum() + 1) / (p.sum() + y.sum() + 1))
        return loss
