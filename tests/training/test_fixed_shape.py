"""Fixed-shape training batches (issue 10: "pad stacks to a fixed slice count with a mask, so
cuDNN autotuning and CUDA graphs apply"): the padding must change nothing but the shape.

The exact check: a packed, padded batch gives the same loss, the same gradients and the same
batch-norm running statistics as its real slices alone, for the all-slice multitask network
(batch norm, fusion attention, classifier, gated loss) and for the Ref stage's input.
"""

import numpy as np
import pytest
import torch

from cmrseg.data.dataset import StackDataset, StackRecord
from cmrseg.errors import CmrsegError
from cmrseg.models import create_model
from cmrseg.models.blocks import MaskedBatchNorm2d
from cmrseg.training.batching import StackBatcher, pack_stacks
from cmrseg.training.config import load_config
from cmrseg.training.context import setup_context
from cmrseg.training.losses import GatedRefinementLoss, SegLoss
from cmrseg.training.stages import ImageStage, RefineStage, RefInputs

SIZES = [6, 8, 7, 9, 5, 10]


def _data(cfg, sizes=SIZES) -> StackDataset:
    rng = np.random.default_rng(0)
    records = []
    for i, s in enumerate(sizes):
        label = np.zeros((s, 64, 64), np.uint8)
        label[:, 18:44, 18:44] = 2
        label[:, 24:38, 24:38] = 3
        label[: s - 1, 20:30, 44:56] = 1  # the last slice has no RV: the classifier's target varies
        records.append(StackRecord(f"s{i}", rng.integers(0, 255, (s, 64, 64), dtype=np.uint8), label, {}))
    return StackDataset(records, cfg.preprocess)


def _train_without_dropout(net):
    """Training mode (batch statistics), dropout off: its masks depend on the slice order."""
    net.train()
    for m in net.modules():
        if isinstance(m, torch.nn.Dropout):
            m.eval()
    return net


def _grads(net) -> dict:
    return {k: p.grad.clone() for k, p in net.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("name", ["seg_as_mt", "seg_as"])
def test_padding_changes_no_loss_gradient_or_running_statistic(name):
    torch.manual_seed(0)
    net = _train_without_dropout(create_model(name, widths=(4, 8, 16), heads=2))
    sizes, pad = [3, 5, 2], 4
    x = torch.rand(sum(sizes), 1, 32, 32)
    y = torch.randint(0, 4, (sum(sizes), 32, 32))
    y[4] = 0  # a slice with no foreground at all
    loss_fn = GatedRefinementLoss(0.1, 0.5) if name.endswith("_mt") else SegLoss(0.5)

    def run(model, images, labels, valid=None, **stacks):
        model.zero_grad()
        out = model(images, **stacks)
        logits = (out.logits, out.class_logits) if out.class_logits is not None else (out.logits,)
        loss = loss_fn(*logits, labels, valid)
        loss.backward()
        return loss.detach()

    ref = run(net, x, y, stack_sizes=sizes)
    grads, stats = _grads(net), {k: v.clone() for k, v in net.state_dict().items() if "running" in k}

    net2 = create_model(name, widths=(4, 8, 16), heads=2)
    fresh = net2.state_dict()  # running statistics as before the first network's step
    net2.load_state_dict({k: fresh[k] if "running" in k or "num_batches" in k else v
                          for k, v in net.state_dict().items()})
    _train_without_dropout(net2)
    # the same stacks in another order, with garbage padding between them
    order = [1, 0, 2]
    starts = np.cumsum([0, *sizes])
    xs, ys, ids = [], [], []
    for k in order:
        xs.append(x[starts[k]:starts[k + 1]])
        ys.append(y[starts[k]:starts[k + 1]])
        ids += [k] * sizes[k]
        if k == 0:
            xs.append(torch.rand(pad, 1, 32, 32) * 50)
            ys.append(torch.randint(0, 4, (pad, 32, 32)))
            ids += [-1] * pad
    stack_ids = torch.tensor(ids)
    padded = run(net2, torch.cat(xs), torch.cat(ys), valid=stack_ids >= 0, stack_ids=stack_ids)

    assert torch.allclose(padded, ref, atol=1e-5), (padded, ref)
    grads2 = _grads(net2)
    assert grads.keys() == grads2.keys() and len(grads) > 20
    for k in grads:
        assert torch.allclose(grads2[k], grads[k], atol=2e-5, rtol=1e-3), k
    for k, v in stats.items():
        assert torch.allclose(net2.state_dict()[k], v, atol=1e-5), k


def test_masked_batch_norm_is_batch_norm_without_a_mask_and_in_eval():
    torch.manual_seed(0)
    x = torch.randn(6, 3, 5, 5)
    a, b = MaskedBatchNorm2d(3), torch.nn.BatchNorm2d(3)
    assert torch.equal(a(x), b(x))
    assert torch.allclose(a(x, torch.ones(6, dtype=torch.bool)), b(x), atol=1e-5)
    a.eval(), b.eval()
    assert torch.allclose(a.running_var, b.running_var) and torch.allclose(a.running_mean, b.running_mean)
    assert torch.allclose(a(x, torch.tensor([True, False] * 3)), b(x), atol=1e-6)  # eval: running statistics only


def test_packing_keeps_every_stack_once_within_the_budget():
    rng = np.random.default_rng(1)  # 130 stacks of 6-18 slices, about ACDC's training split
    sizes = [int(s) for s in rng.choice([6, 7, 8, 9, 9, 10, 10, 10, 11, 11, 12, 13, 14, 16, 18], 130)]
    order = [int(i) for i in rng.permutation(len(sizes))]
    batches = pack_stacks(order, sizes, 40)
    assert sorted(i for b in batches for i in b) == list(range(len(sizes)))
    assert all(sum(sizes[i] for i in b) <= 40 for b in batches)
    firsts = [b[0] for b in batches]
    assert firsts == sorted(firsts, key=order.index)  # batches start in the shuffled order
    fill = sum(sizes) / (40 * len(batches))
    assert fill > 0.9, fill  # look-ahead keeps the padding small


def test_fixed_shape_batches_have_one_shape_and_mark_their_padding():
    cfg = load_config(protocol="smoke", model="seg_as")
    ds = _data(cfg).with_mode("stack")
    batcher = StackBatcher(ds, 4, fixed_slices=16, seed=3)
    batches = list(batcher.epoch(0))
    assert {b["image"].shape[0] for b in batches} == {16} and {b["label"].shape[0] for b in batches} == {16}
    seen = []
    for b in batches:
        ids = b["stack_ids"]
        real = b["real_slices"]
        assert int((ids >= 0).sum()) == real == sum(SIZES[i] for i in b["indices"])
        assert (b["image"][ids < 0] == 0).all() and (b["label"][ids < 0] == 0).all()
        assert sum(b["stack_sizes"]) == 16 and len(b["heart_centers"]) == len(b["stack_sizes"])
        seen += b["indices"]
    assert sorted(seen) == list(range(len(SIZES)))
    assert batcher.num_batches() == len(batches)
    # a stack longer than the budget widens it; two ranks get the same number of batches
    assert StackBatcher(ds, 4, fixed_slices=4).fixed_slices == max(SIZES)
    n0 = len(list(StackBatcher(ds, 4, fixed_slices=12, rank=0, world_size=2).epoch(1)))
    n1 = len(list(StackBatcher(ds, 4, fixed_slices=12, rank=1, world_size=2).epoch(1)))
    assert n0 == n1 > 0
    # slice mode: the short last batch is dropped
    slices = StackBatcher(ds.with_mode("slice"), 16, fixed_slices=16)
    assert {b["image"].shape[0] for b in slices.epoch(0)} == {16}


@pytest.mark.parametrize("model", ["seg_as_mt", "seg_as+ref_as_mt"])
def test_a_fixed_shape_step_trains_both_stages(model):
    cfg = load_config(protocol="smoke", model=model, overrides=["fixed_shape=true", "batch_slices=20"])
    ds = _data(cfg)
    net = create_model(model, **cfg.model_kwargs)
    if "+" in model:
        probs = [torch.softmax(torch.randn(r.image.shape[0], 4, 64, 64), 1).half() for r in ds.records]
        stage = RefineStage(net, ds, cfg, setup_context(cfg), RefInputs([net.seg.state_dict()], [probs], None))
        module = net.ref
    else:
        stage = ImageStage(net, ds, cfg, setup_context(cfg))
        module = net
    batcher = StackBatcher(stage.train_ds, cfg.batch_stacks, fixed_slices=cfg.batch_slices)
    for batch in batcher.epoch(0):
        loss, _ = stage.loss(batch, module, torch.Generator().manual_seed(0), torch.Generator().manual_seed(1))
        assert torch.isfinite(loss)
        loss.backward()
        assert all(torch.isfinite(p.grad).all() for p in module.parameters() if p.grad is not None)


def test_fixed_shape_config_rules():
    with pytest.raises(CmrsegError, match="compile"):
        load_config(protocol="smoke", overrides=["compile=reduce-overhead"])  # CUDA graphs need one shape
    with pytest.raises(CmrsegError, match="compile"):
        load_config(protocol="smoke", overrides=["compile=fast"])
    cfg = load_config(protocol="smoke", overrides=["compile=reduce-overhead", "fixed_shape=true"])
    assert cfg.compile == "reduce-overhead" and cfg.fixed_shape


def test_bf16_on_a_cpu_without_native_bf16_is_refused_compiled_and_noted_otherwise(monkeypatch, capsys):
    """On a CPU without AMX or AVX512-BF16, inductor's compiled kernels gave NaN gradients under
    bf16 autocast from the first step (measured, torch 2.13): that combination is one clear
    error; bf16 alone trains, with a note that it is emulated and slower there. Where the CPU
    has native bf16, both run as asked. ``amp=off`` (YAML reads ``off`` as false) is ``off``."""
    from cmrseg.training import context

    assert load_config(protocol="smoke", overrides=["amp=off"]).amp == "off"
    compiled = load_config(protocol="smoke", overrides=["amp=bf16", "compile=true", "device=cpu"])
    plain = load_config(protocol="smoke", overrides=["amp=bf16", "device=cpu"])
    monkeypatch.setattr(context, "cpu_has_fast_bf16", lambda: False)
    with pytest.raises(CmrsegError, match="compile=false or amp=off"):
        setup_context(compiled)
    assert setup_context(plain).amp is torch.bfloat16 and "emulated" in capsys.readouterr().err
    assert setup_context(load_config(protocol="smoke", overrides=["device=cpu"])).amp is None
    assert capsys.readouterr().err == ""
    monkeypatch.setattr(context, "cpu_has_fast_bf16", lambda: True)
    assert setup_context(compiled).amp is torch.bfloat16 and capsys.readouterr().err == ""


def test_a_fixed_shape_network_compiles_to_one_graph_whatever_the_packing():
    """What makes ``compile`` and CUDA graphs pay: batches packed differently (other stacks,
    other padding) reuse one captured graph, with no graph break and no recompile. Traced with
    the ``aot_eager`` backend (forward and backward graphs, no C++ compiler needed)."""
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    net = _train_without_dropout(create_model("seg_as_mt", widths=(4, 8, 16), heads=2))
    compiled = torch.compile(net, backend="aot_eager", dynamic=False, fullgraph=True)
    loss_fn = GatedRefinementLoss(0.1, 0.5)
    for ids in ([0] * 5 + [1] * 7 + [-1] * 4, [0] * 3 + [1] * 3 + [2] * 8 + [-1] * 2, [0] * 16):
        ids = torch.tensor(ids)
        out = compiled(torch.rand(16, 1, 32, 32), stack_ids=ids)
        loss_fn(out.logits, out.class_logits, torch.randint(0, 4, (16, 32, 32)), ids >= 0).backward()
    assert counters["stats"]["unique_graphs"] == 1
    torch._dynamo.reset()


def test_det_seg_keeps_whole_stacks_and_only_fixed_shapes_capture_cuda_graphs(monkeypatch, capsys):
    """One config for every model (the GPU job's): Det+Seg, whose crops follow each stack,
    trains on stacks as they are, with a note; a compile mode that records CUDA graphs falls
    back to one without them when the batches are not of one shape."""
    from cmrseg.training import loop
    from cmrseg.training.stages import stage_for

    cfg = load_config(protocol="smoke", model="det_seg", overrides=["fixed_shape=true", "compile=reduce-overhead"])
    ctx = setup_context(cfg)
    stage = stage_for(create_model("det_seg", **cfg.model_kwargs), _data(cfg), cfg, ctx)
    assert stage.fixed_shape is False and "det_seg trains on whole stacks" in capsys.readouterr().err
    calls = []
    monkeypatch.setattr(loop.torch, "compile", lambda m, **kw: calls.append(kw) or m)
    loop._wrap(stage.module, "stack", stage.fixed_shape, cfg, ctx)
    loop._wrap(stage.module, "stack", True, cfg, ctx)
    assert calls == [{"mode": "default", "dynamic": True}, {"mode": "reduce-overhead", "dynamic": False}]
