"""Channels-last training (NHWC, what CUDA runs train with): the same loss and gradients as
channels-first, for the all-slice multitask network (fusion attention, classifier) and the
single-slice one; the CPU keeps channels-first, which trains whole epochs faster there
(docs/decisions.md, "Investigations")."""

import pytest
import torch

from cmrseg.models import create_model
from cmrseg.training.config import load_config
from cmrseg.training.context import setup_context
from cmrseg.training.losses import GatedRefinementLoss, SegLoss


def test_the_cpu_trains_channels_first():
    assert not setup_context(load_config(protocol="smoke", overrides=["device=cpu"])).channels_last


@pytest.mark.parametrize("name", ["seg_as_mt", "seg_ss"])
def test_a_channels_last_step_gives_the_channels_first_loss_and_gradients(name):
    torch.manual_seed(0)
    nets = [create_model(name, widths=(4, 8, 16), heads=2) for _ in range(2)]
    nets[1].load_state_dict(nets[0].state_dict())
    nets[1] = nets[1].to(memory_format=torch.channels_last)
    sizes = [3, 5]
    x = torch.rand(sum(sizes), 1, 32, 32)
    y = torch.randint(0, 4, (sum(sizes), 32, 32))
    loss_fn = GatedRefinementLoss(0.1, 0.5) if name.endswith("_mt") else SegLoss(0.5)
    losses, grads = [], []
    for net, images in zip(nets, (x, x.contiguous(memory_format=torch.channels_last))):
        net.eval()  # dropout off; batch norm in eval keeps the two runs' statistics out of it
        out = net(images, stack_sizes=sizes)
        logits = (out.logits, out.class_logits) if out.class_logits is not None else (out.logits,)
        loss = loss_fn(*logits, y, None)
        loss.backward()
        losses.append(loss.detach())
        grads.append({k: p.grad for k, p in net.named_parameters() if p.grad is not None})
    assert any(p.dim() == 4 and p.is_contiguous(memory_format=torch.channels_last) and not p.is_contiguous()
               for p in nets[1].parameters())  # the second network really is channels-last
    assert torch.allclose(losses[0], losses[1], atol=1e-5), losses
    assert grads[0].keys() == grads[1].keys() and len(grads[0]) > 10
    for k in grads[0]:
        assert torch.allclose(grads[0][k], grads[1][k], atol=2e-5, rtol=1e-3), k
