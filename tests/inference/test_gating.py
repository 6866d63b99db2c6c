"""Gate modes and test-time flips (cmrseg.inference.gating)."""

import pytest
import torch

from cmrseg.inference.gating import apply_gate
from cmrseg.inference.options import InferenceOptions
from cmrseg.models.outputs import gate_logits


def _case():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 4, 8, 8, generator=g) * 3
    class_logits = torch.tensor([[2.0, 2.0, 2.0], [-1.0, 2.0, 2.0], [-4.0, -3.0, 2.0]])
    return logits, class_logits


def test_hard_gate_is_the_papers():
    logits, class_logits = _case()
    expected = gate_logits(logits, class_logits).softmax(1)
    got = apply_gate(logits.softmax(1), torch.sigmoid(class_logits), "hard")
    torch.testing.assert_close(got, expected, atol=1e-6, rtol=1e-5)
    assert (got[1, 1] == 0).all() and (got[0, 1] > 0).any()  # RV removed where p(RV) < 0.5 only


def test_soft_gate_scales_and_keeps_a_sure_pixel_of_a_doubtful_class():
    probs = torch.zeros(1, 4, 2, 2)
    probs[0, 1] = 0.95  # RV sure in the pixels
    probs[0, 0] = 0.05
    presence = torch.tensor([[0.3, 0.9, 0.9]])  # the classifier doubts RV
    soft = apply_gate(probs, presence, "soft")
    assert (soft.argmax(1) == 1).all()  # 0.95 * 0.3 > 0.05
    assert (apply_gate(probs, presence, "hard").argmax(1) == 0).all()
    torch.testing.assert_close(soft.sum(1), torch.ones(1, 2, 2))


def test_seg_gate_removes_a_class_only_where_the_seg_stage_lacks_it():
    logits, class_logits = _case()
    probs = logits.softmax(1)
    seg = torch.zeros_like(probs)
    seg[:, 0] = 1.0
    seg[1, 1, :5, :5], seg[1, 0, :5, :5] = 1.0, 0.0  # the Seg stage saw 25 px of RV on slice 1
    out = apply_gate(probs, torch.sigmoid(class_logits), "seg", seg)
    torch.testing.assert_close(out[1], probs[1])  # kept: the Seg stage vetoes the gate
    assert (out[2, 1] == 0).all() and (out[2, 2] == 0).all()  # removed: neither saw them
    with pytest.raises(ValueError):
        apply_gate(probs, torch.sigmoid(class_logits), "sometimes")


def test_flips_average_an_equivariant_models_outputs_to_its_own(smoke_model):
    from cmrseg.inference.predictor import Predictor

    x = torch.rand(4, 1, 64, 64)
    plain, _ = Predictor.from_path(smoke_model, InferenceOptions(device="cpu", tta="off")).predict_canvas(x)
    p = Predictor.from_path(smoke_model, InferenceOptions(device="cpu", tta="on"))
    averaged, presence = p.predict_canvas(x)
    assert averaged.shape == plain.shape and presence.shape == (4, 3)
    torch.testing.assert_close(averaged.sum(1), torch.ones(4, 64, 64))
    # a flipped input gives the flipped average (the four flips are a group)
    flipped, _ = p.predict_canvas(x.flip(-1))
    torch.testing.assert_close(flipped, averaged.flip(-1), atol=2e-3, rtol=1e-3)


def test_fast_flips_locate_the_heart_once_and_mirror_the_crop(smoke_model):
    """``--tta fast``: the locator (the Seg stage on the whole canvas) runs once per stack instead
    of once per flip, and each flip sees the same crop of the stack, mirrored."""
    from cmrseg.inference.gating import FLIPS
    from cmrseg.inference.predictor import Predictor
    from cmrseg.models.centred import _locate, heart_centred_flips

    torch.manual_seed(0)
    x = torch.rand(4, 1, 64, 64)
    canvas_calls = []
    for tta, locator_runs in (("on", 4), ("fast", 1)):
        p = Predictor.from_path(smoke_model, InferenceOptions(device="cpu", precision="fp32", tta=tta))
        assert p.inference_crop and p.tta and p.locate_once == (tta == "fast")
        hook = p.model.seg.register_forward_pre_hook(lambda m, a: canvas_calls.append(a[0].shape[-1] == 64))
        try:
            canvas_calls.clear()
            p.predict_canvas(x)
            assert sum(canvas_calls) == locator_runs, (tta, canvas_calls)
        finally:
            hook.remove()
    c = p.inference_crop
    with torch.no_grad():
        (y0, x0), _ = _locate(p.model, x, c)
        piece = x[..., y0:y0 + c, x0:x0 + c]
        for dims, out in heart_centred_flips(p.model, x, c, FLIPS, locate_once=True):
            wy, wx = out.extras["window"]  # the window in the flipped stack: the same piece, mirrored
            assert (wy, wx) == (64 - c - y0 if -2 in dims else y0, 64 - c - x0 if -1 in dims else x0)
            expected = p.model(piece.flip(dims) if dims else piece).logits.float()
            torch.testing.assert_close(out.logits[..., wy:wy + c, wx:wx + c], expected)


def test_bf16_on_the_cpu_labels_as_float32_does(smoke_model, phantom_dir):
    from cmrseg.data.io import load_labelled_dataset
    from cmrseg.inference.predictor import Predictor

    a = Predictor.from_path(smoke_model, InferenceOptions(device="cpu", precision="fp32"))
    b = Predictor.from_path(smoke_model, InferenceOptions(device="cpu", precision="bf16"))
    assert a.amp is None and b.amp is torch.bfloat16
    same = total = 0
    for vol in load_labelled_dataset(phantom_dir / "h5" / "val"):
        ma, mb = a.predict_volume(vol).mask, b.predict_volume(vol).mask
        same, total = same + int((ma == mb).sum()), total + ma.size
    assert same / total > 0.99
    with pytest.raises(Exception, match="unknown precision"):
        InferenceOptions(device="cpu", precision="fp8")


def test_cpu_inference_runs_channels_last_and_gives_the_channels_first_probabilities(smoke_model):
    """On the CPU the networks run on NHWC tensors (faster there: docs/decisions.md, rule 13): in
    float32 the probabilities are those of the channels-first networks to rounding."""
    from cmrseg.inference.predictor import Predictor, inference_memory_format

    p = Predictor.from_path(smoke_model, InferenceOptions(device="cpu", precision="fp32"))
    assert p.memory_format is torch.channels_last
    conv = next(m for m in p.model.modules() if isinstance(m, torch.nn.Conv2d) and m.kernel_size == (3, 3)
                and m.in_channels > 1)
    assert conv.weight.is_contiguous(memory_format=torch.channels_last) and not conv.weight.is_contiguous()
    torch.manual_seed(0)
    x = torch.rand(4, 1, 64, 64)
    nhwc, presence = p.predict_canvas(x)
    p.model, p.memory_format = p.model.to(memory_format=torch.contiguous_format), torch.contiguous_format
    nchw, presence_nchw = p.predict_canvas(x)
    assert conv.weight.is_contiguous()
    torch.testing.assert_close(nhwc, nchw, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(presence, presence_nchw, atol=1e-5, rtol=1e-5)
    assert inference_memory_format(torch.device("cpu"), "onnx") is torch.contiguous_format
    assert inference_memory_format(torch.device("cuda"), "torch") is torch.contiguous_format
