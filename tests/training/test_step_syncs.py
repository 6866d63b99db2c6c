"""A training step queues its GPU work without waiting for the GPU (issue 10: "no host syncs
inside the step"): every host read of a tensor value (``.item()``, ``int(t)``, ``nonzero``,
``repeat_interleave`` with tensor repeats, ...) stops Python until the GPU has drained its
queue, and the GPU then idles while Python queues the next kernels.

Checked on the CPU by recording, below the dispatcher, every operation that reads a tensor's
value back to the host, with the line of cmrseg that caused it. Two reads are allowed because
they never reach a GPU: ``F.one_hot`` checks its labels' range with a host read on the CPU
only (on CUDA the scatter kernel's device assert does it), and the Ref stage draws which Seg
snapshot to use from the CPU generator.
"""

import collections
import traceback

import numpy as np
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from cmrseg.data.augmentation import AugmentConfig, StackAugmenter, stack_index
from cmrseg.data.dataset import StackDataset, StackRecord
from cmrseg.models import create_model
from cmrseg.training.batching import StackBatcher
from cmrseg.training.config import load_config
from cmrseg.training.context import setup_context
from cmrseg.training.stages import DistillStage, ImageStage, RefineStage, RefInputs

HOST_READS = {"aten::_local_scalar_dense", "aten::item", "aten::nonzero", "aten::is_nonzero", "aten::equal"}
ALLOWED = ("F.one_hot(", "torch.randint(len(self.")  # source lines of the two host-only reads (docstring)


class HostReads(TorchDispatchMode):
    """Counts host reads per source line of cmrseg that led to them."""

    def __init__(self):
        super().__init__()
        self.lines = collections.Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func._schema.name
        # repeat_interleave's tensor-repeats kernel reads their sum back unless given output_size
        if name in HOST_READS or (name == "aten::repeat_interleave" and func._overloadname == "Tensor"
                                  and (kwargs or {}).get("output_size") is None):
            frames = [f for f in traceback.extract_stack() if "cmrseg" in f.filename and "tests" not in f.filename]
            self.lines[frames[-1].line if frames else "?"] += 1
        return func(*args, **(kwargs or {}))

    def unexpected(self) -> dict:
        return {line: n for line, n in self.lines.items() if not any(a in line for a in ALLOWED)}


def _data(cfg) -> StackDataset:
    rng = np.random.default_rng(0)
    records = []
    for i, s in enumerate([6, 8, 7, 9]):  # stacks of different lengths: the padded, masked fusion path
        label = np.zeros((s, 64, 64), np.uint8)
        label[:, 18:44, 18:44] = 2
        label[:, 24:38, 24:38] = 3
        label[:, 20:30, 44:56] = 1
        records.append(StackRecord(f"s{i}", rng.integers(0, 255, (s, 64, 64), dtype=np.uint8), label, {}))
    return StackDataset(records, cfg.preprocess)


def _step(stage, batch, module):
    with HostReads() as reads:
        loss, _ = stage.loss(batch, module, torch.Generator().manual_seed(0), torch.Generator().manual_seed(1))
        loss.backward()
    return reads


def test_the_seg_stage_step_reads_nothing_back_from_the_device():
    cfg = load_config(protocol="smoke", model="seg_as_mt", overrides=["augment.blur=1.0", "augment.blur_prob=0.5"])
    ds = _data(cfg)
    net = create_model("seg_as_mt", **cfg.model_kwargs)
    stage = ImageStage(net, ds, cfg, setup_context(cfg))
    reads = _step(stage, next(StackBatcher(stage.train_ds, 4).epoch(0)), net)
    assert reads.unexpected() == {}, reads.lines
    assert sum(reads.lines.values()) > 0  # the spy sees reads: F.one_hot's CPU check is one


def test_the_ref_stage_step_reads_nothing_back_from_the_device():
    cfg = load_config(protocol="smoke", model="seg_as+ref_as_mt")
    ds = _data(cfg)
    model = create_model("seg_as+ref_as_mt", **cfg.model_kwargs)
    probs = [torch.softmax(torch.randn(r.image.shape[0], 4, 64, 64), 1).half() for r in ds.records]
    stage = RefineStage(model, ds, cfg, setup_context(cfg), RefInputs([model.seg.state_dict()], [probs], None))
    reads = _step(stage, next(StackBatcher(stage.train_ds, 4).epoch(0)), model.ref)
    assert reads.unexpected() == {}, reads.lines


def test_the_distillation_step_reads_nothing_back_from_the_device():
    """The student's step: the teacher's uint8 targets gathered and sent, every vendor shift on."""
    shifts = "{crop: 0, quarter_turns: 0.5, slice_mix: 0.5, sharpen: 1.0, gibbs: 0.5, shading: 0.4, hot_spot: 1.5, " \
             "curve: 0.7, rician: 0.05, vendor_prob: 1.0, renormalise: true}"
    cfg = load_config(protocol="smoke", model="seg_as", overrides=[f"augment={shifts}"])
    ds = _data(cfg)
    net = create_model("seg_as", **cfg.model_kwargs)
    targets = [torch.randint(0, 256, (r.image.shape[0], 4, 64, 64), dtype=torch.uint8) for r in ds.records]
    stage = DistillStage(net, ds, cfg, setup_context(cfg), targets)
    reads = _step(stage, next(StackBatcher(stage.train_ds, 4).epoch(0)), net)
    assert reads.unexpected() == {}, reads.lines


def test_a_fixed_shape_step_reads_nothing_back_from_the_device():
    """Packed, padded batches (``fixed_shape``): the masked batch norm, the block-diagonal
    attention and the masked loss add no host read."""
    cfg = load_config(protocol="smoke", model="seg_as_mt", overrides=["fixed_shape=true", "batch_slices=20"])
    ds = _data(cfg)
    net = create_model("seg_as_mt", **cfg.model_kwargs)
    stage = ImageStage(net, ds, cfg, setup_context(cfg))
    batch = next(StackBatcher(stage.train_ds, 4, fixed_slices=20).epoch(0))
    assert (batch["stack_ids"] < 0).any()  # the batch has padding
    reads = _step(stage, batch, net)
    assert reads.unexpected() == {}, reads.lines


def test_the_spy_catches_a_host_read():
    with HostReads() as reads:
        torch.repeat_interleave(torch.ones(2), torch.tensor([1, 2]))
        int(torch.ones(1).sum())
    assert sum(reads.lines.values()) >= 2


def test_per_stack_draws_reach_every_slice_of_their_stack():
    sizes = [3, 1, 2]
    assert stack_index(sizes, "cpu").tolist() == [0, 0, 0, 1, 2, 2]
    aug = StackAugmenter(AugmentConfig(rotation_deg=0, shift=0, scale=0, flip=0, gamma=0, contrast=0.5, noise=0))
    x = torch.rand(6, 1, 16, 16) + torch.arange(6.0)[:, None, None, None]
    out, _, _ = aug(x, None, sizes, generator=torch.Generator().manual_seed(0))
    # one contrast factor per stack: the slices of a stack are stretched alike about their means
    f = (out - out.mean(dim=(1, 2, 3), keepdim=True)).std(dim=(1, 2, 3)) / (x - x.mean(dim=(1, 2, 3), keepdim=True)).std(dim=(1, 2, 3))
    assert torch.allclose(f[0], f[1], rtol=1e-4) and torch.allclose(f[1], f[2], rtol=1e-4)
    assert torch.allclose(f[4], f[5], rtol=1e-4) and not torch.allclose(f[0], f[3], rtol=1e-3)
