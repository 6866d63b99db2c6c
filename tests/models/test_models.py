"""Every registered model: forward/backward on stacks of 1, 7 and 18 slices at two sizes,
slice-permutation equivariance of all-slice models, classifier gating."""

import pytest
import torch

from cmrseg.models import create_model, gate_logits, list_models
from cmrseg.models.fusion import AllSliceFusion

TINY = {"widths": (4, 8, 8, 16), "heads": 2}


def _built(name):
    return create_model(name, **(dict(TINY, crop=32, zoom=2) if name == "det_seg" else TINY))


def _has_classifier(model) -> bool:
    return any(getattr(m, "classifier", None) is not None for m in (model, getattr(model, "ref", None)))


# subsets read from the registry's models themselves, not kept by hand
ALL_SLICE = [n for n in list_models() if n != "det_seg" and _built(n).all_slice]
MT = [n for n in list_models() if _has_classifier(_built(n))]


def test_registry_has_every_model_of_tables_1_and_2():
    assert set(list_models()) == {"seg_ss", "seg_as", "seg_as_mt", "seg_ss+ref_ss", "seg_ss+ref_ss_mt",
                                  "seg_as+ref_as", "seg_as+ref_as_mt", "det_seg"}
    with pytest.raises(KeyError, match="unknown model"):
        create_model("nope")


@pytest.mark.parametrize("name", list_models())
@pytest.mark.parametrize("slices", [1, 7, 18])
@pytest.mark.parametrize("size", [48, 52])  # 52: not a multiple of 8, so the padding branch runs
def test_forward_backward(name, slices, size):
    torch.manual_seed(0)
    kw = dict(TINY, crop=32, zoom=2) if name == "det_seg" else TINY
    model = create_model(name, **kw)
    x = torch.randn(slices, 1, size, size)
    out = model(x)
    assert out.logits.shape == (slices, 4, size, size)
    assert torch.isfinite(out.logits).all()
    if name in MT:
        assert out.class_logits.shape == (slices, 3)
    else:
        assert out.class_logits is None
    if "+" in name:
        assert out.seg_logits.shape == (slices, 4, size, size)
    loss = out.logits.float().logsumexp(1).mean()
    for extra in (out.class_logits, out.seg_logits):
        loss = loss + (0 if extra is None else extra.float().mean())
    loss.backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert sum(g is not None and g.abs().sum() > 0 for g in grads) > 0.8 * len(grads)


@pytest.mark.parametrize("name", list_models())
def test_every_model_runs_forward_and_backward_in_bf16_autocast_on_the_cpu(name):
    """``--precision auto`` and ``amp=bf16`` run the networks under bf16 autocast (on CPUs with
    native bf16, and anywhere on request); every model must run there, whatever this CPU has
    (the kernels exist on every CPU, only their speed differs). det_seg's antialiased resize
    has no bf16 CPU kernel and failed here (issue 39)."""
    torch.manual_seed(0)
    model = _built(name)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(torch.randn(5, 1, 48, 48))
    assert out.logits.shape == (5, 4, 48, 48)
    assert torch.isfinite(out.logits.float()).all()
    out.logits.float().logsumexp(1).mean().backward()


@pytest.mark.parametrize("name", ALL_SLICE)
def test_all_slice_models_are_permutation_equivariant(name):
    torch.manual_seed(0)
    model = create_model(name, **TINY).double().eval()
    x = torch.randn(9, 1, 32, 32, dtype=torch.float64)
    perm = torch.randperm(9)
    with torch.no_grad():
        a = model(x)
        b = model(x[perm])
    torch.testing.assert_close(a.logits[perm], b.logits, atol=1e-6, rtol=0)
    if a.class_logits is not None:
        torch.testing.assert_close(a.class_logits[perm], b.class_logits, atol=1e-6, rtol=0)


def test_all_slice_model_really_mixes_slices_and_single_slice_model_does_not():
    torch.manual_seed(0)
    x = torch.randn(5, 1, 32, 32)
    y = x.clone()
    y[4] = torch.randn(1, 32, 32)
    for name, mixes in (("seg_as", True), ("seg_ss", False)):
        # per-sample normalisation keeps activations O(1) at initialisation (eval-mode
        # BatchNorm with fresh running statistics shrinks them level by level)
        model = create_model(name, **TINY, norm="group").eval()
        with torch.no_grad():
            d = (model(x).logits[0] - model(y).logits[0]).abs().max()
        assert (d > 1e-5) == mixes, (name, d)


def test_fusion_handles_several_stacks_of_different_length_like_separate_calls():
    torch.manual_seed(0)
    fusion = AllSliceFusion(16, heads=2).eval()
    a, b = torch.randn(3, 16, 4, 4), torch.randn(5, 16, 4, 4)
    with torch.no_grad():
        both = fusion(torch.cat([a, b]), [3, 5])
        torch.testing.assert_close(both[:3], fusion(a), atol=1e-5, rtol=0)
        torch.testing.assert_close(both[3:], fusion(b), atol=1e-5, rtol=0)
        # a fixed-shape batch: stacks given by id, interleaved, with padding (-1) between them
        pad = torch.randn(2, 16, 4, 4) * 100
        ids = torch.tensor([1] * 5 + [-1] * 2 + [0] * 3)
        mixed = fusion(torch.cat([b, pad, a]), stack_ids=ids)
        assert torch.isfinite(mixed).all()
        torch.testing.assert_close(mixed[:5], fusion(b), atol=1e-5, rtol=0)
        torch.testing.assert_close(mixed[7:], fusion(a), atol=1e-5, rtol=0)


def test_gating_removes_a_class_the_classifier_calls_absent():
    torch.manual_seed(0)
    logits = torch.randn(4, 4, 16, 16)
    logits[:, 1] += 5  # RV would win everywhere
    cls = torch.full((4, 3), 3.0)
    cls[1:3, 0] = -3.0  # p_RV < 0.5 on slices 1 and 2
    gated = gate_logits(logits, cls).argmax(1)
    assert not (gated[1:3] == 1).any()
    assert (gated[[0, 3]] == 1).all()
    # suppressed pixels take the best remaining class
    expected = logits[1:3, [0, 2, 3]].argmax(1)
    expected = torch.tensor([0, 2, 3])[expected]
    assert torch.equal(gated[1:3], expected)


@pytest.mark.parametrize("name", MT)
def test_mt_model_in_eval_never_outputs_rv_when_p_rv_is_forced_low(name):
    torch.manual_seed(0)
    model = create_model(name, **TINY).eval()
    head = model.classifier if hasattr(model, "classifier") else model.ref.classifier
    with torch.no_grad():
        last = head.mlp[-1]
        last.weight.zero_()
        last.bias.copy_(torch.tensor([-10.0, 10.0, 10.0]))  # p_RV ~ 0
        out = model(torch.randn(6, 1, 32, 32))
    assert not (out.logits.argmax(1) == 1).any()


def test_det_seg_crops_at_given_centres_and_pastes_back():
    model = create_model("det_seg", **TINY, crop=16, zoom=2).eval()
    x = torch.randn(3, 1, 48, 48)
    with torch.no_grad():
        out = model(x, [3], centers=torch.tensor([[10, 30]]))
    assert out.extras["crop_logits"].shape == (3, 4, 32, 32)
    bg = out.logits.argmax(1) == 0
    assert bg[:, :, :20].all() and bg[:, 20:, :].all() and bg[:, :2, :].all()  # outside rows 2..18, cols 22..38


def test_det_seg_centres_its_crop_on_the_largest_detected_piece():
    """The heart runs through the stack: the crop goes to the largest piece of the detections
    with the slices stacked, not to the box of all of them, nor to a blob on one slice that
    covers more of the image than the heart does on any slice; each stack of a batch has its own."""
    from cmrseg.models.det_seg import centers_from_mask

    mask = torch.zeros(6, 64, 64, dtype=torch.bool)
    mask[0:3, 20:30, 10:20] = True  # stack 1: the heart on three slices (rows 20-29, columns 10-19) ...
    mask[1, 30:32, 10:30] = True  # ... larger on one of them (rows 30-31, columns 10-29), touching it
    mask[2, 50:62, 50:62] = True  # ... and a 144-pixel blob on its third slice: more area, fewer voxels
    mask[4, 5:9, 40:44] = True  # stack 2: one small piece
    centres = centers_from_mask(mask, [4, 2])
    assert centres.dtype == torch.long and centres.tolist() == [[26, 20], [7, 42]]
    assert centers_from_mask(torch.zeros(2, 64, 48, dtype=torch.bool), [2]).tolist() == [[32, 24]]


def test_sk_convolution_is_the_softmax_weighted_sum_of_its_branches():
    """SKNet's selection, written out: z = squeeze(mean_hw(U1 + U2)), a = softmax over the
    branches of select(z), output a1 * U1 + a2 * U2 (the block computes it without stacking)."""
    from cmrseg.models.blocks import SKConv

    torch.manual_seed(0)
    sk = SKConv(3, 8).eval()
    x = torch.randn(2, 3, 12, 12)
    u = [b(x) for b in sk.branches]
    z = sk.squeeze((u[0] + u[1]).mean(dim=(2, 3)))
    a = sk.select(z).view(2, 2, 8).softmax(dim=1)
    expected = a[:, 0, :, None, None] * u[0] + a[:, 1, :, None, None] * u[1]
    assert torch.allclose(sk(x), expected, atol=1e-6)
    assert not torch.allclose(sk(x), 0.5 * (u[0] + u[1]), atol=1e-3)  # the weights are not uniform


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("size", [(12, 12), (13, 11)])
def test_inference_max_pooling_equals_max_pool2d_and_training_keeps_its_gradient(dtype, size):
    """``MaxPool2`` without gradients takes the maximum of four sub-grids: the same values as
    ``max_pool2d`` (odd sizes drop their last row / column), ties included; with gradients it
    is ``max_pool2d`` itself (a tie's gradient goes to one input, not half to each)."""
    from cmrseg.models.blocks import MaxPool2

    torch.manual_seed(0)
    x = torch.randn(3, 5, *size).to(dtype)
    x[..., :4, :4] = 1.0  # tied maxima in whole windows
    with torch.no_grad():
        fast = MaxPool2()(x)
    assert fast.dtype == dtype and torch.equal(fast, torch.nn.functional.max_pool2d(x, 2))

    leaf = torch.ones(1, 1, 2, 2, requires_grad=True)
    MaxPool2()(leaf).sum().backward()
    assert sorted(leaf.grad.flatten().tolist()) == [0.0, 0.0, 0.0, 1.0]


def test_class_argmax_is_argmax_over_the_classes_with_the_first_of_tied_maxima():
    from cmrseg.models.outputs import class_argmax

    torch.manual_seed(0)
    p = torch.randn(4, 4, 9, 7).softmax(dim=1)
    p[:, :, :3] = 0.25  # four-way ties: class 0
    p[:, 2, 5], p[:, 3, 5] = 2.0, 2.0  # two-way ties: class 2
    labels = class_argmax(p)
    assert torch.equal(labels, p.argmax(dim=1))
    assert (labels[:, :3] == 0).all() and (labels[:, 5] == 2).all()
