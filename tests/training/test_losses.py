import math

import pytest
import torch

from cmrseg.training.losses import GatedRefinementLoss, SegLoss, presence_labels


def test_gated_loss_equals_the_hand_computed_value():
    # one slice, two pixels: pixel a is RV, pixel b background
    labels = torch.tensor([[[1, 0]]])
    logits = torch.tensor([[0.0, 1.0, 0.0, 0.0], [1.0, 0.0, 0.0, 0.0]]).T.reshape(1, 4, 1, 2)
    class_logits = torch.tensor([[2.0, -1.0, 0.5]])  # p: RV 0.881 (on), MYO 0.269 (off), LV 0.622 (on)
    e = math.e
    z = 3 + e
    ce_rv = (-math.log(e / z) - math.log(1 - 1 / z)) / 2  # a: y=1, q=e/z; b: y=0, q=1/z
    ce_lv = (-math.log(1 - 1 / z) - math.log(1 - 1 / z)) / 2  # never LV; q=1/z at both pixels
    sig = lambda v: 1 / (1 + math.exp(-v))
    ce_cls = -math.log(sig(2.0)) - math.log(1 - sig(-1.0)) - math.log(1 - sig(0.5))  # presence (1, 0, 0)
    expected = ce_rv + ce_lv + 0.1 * ce_cls
    loss = GatedRefinementLoss(lambda_cls=0.1, dice_weight=0.0)(logits, class_logits, labels)
    assert loss.item() == pytest.approx(expected, rel=1e-5)


def test_gate_is_half_at_exactly_one_half_and_gated_off_classes_get_no_gradient():
    labels = torch.zeros(1, 2, 2, dtype=torch.long)
    logits = torch.randn(1, 4, 2, 2, requires_grad=True)
    cls = torch.tensor([[0.0, -20.0, -20.0]])  # p_RV = 0.5 exactly -> weight 1/2
    loss_fn = GatedRefinementLoss(lambda_cls=0.0, dice_weight=0.0)
    half = loss_fn(logits, cls, labels)
    full = loss_fn(logits, torch.tensor([[20.0, -20.0, -20.0]]), labels)
    assert half.item() == pytest.approx(full.item() / 2, rel=1e-5)
    # with every class gated off no gradient reaches the segmentation logits
    off = loss_fn(logits, torch.full((1, 3), -20.0), labels)
    off.backward()
    assert logits.grad is None or logits.grad.abs().max() == 0


def test_presence_labels_and_seg_loss():
    labels = torch.zeros(2, 4, 4, dtype=torch.long)
    labels[0, 0, 0] = 3
    labels[1, 1, 1] = 1
    assert presence_labels(labels).tolist() == [[0, 0, 1], [1, 0, 0]]
    perfect = torch.nn.functional.one_hot(labels, 4).permute(0, 3, 1, 2).float() * 50
    assert SegLoss(dice_weight=1.0)(perfect, labels).item() < 1e-3
    assert SegLoss(dice_weight=1.0)(torch.zeros(2, 4, 4, 4), labels).item() > 1.0
