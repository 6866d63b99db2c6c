"""What is trained in each stage and how a batch becomes a loss.

* :class:`ImageStage`: a network on augmented images (every single-stage model and the Seg
  stage of two-stage models). Plain networks use :class:`~cmrseg.training.losses.SegLoss`, networks
  with a classification branch the paper's gated loss.
* :class:`RefineStage`: the Ref stage of a two-stage model, on Seg-stage probability maps:
  computed once per Seg weight snapshot and then augmented, or computed by a Seg snapshot
  on every augmented training batch (see ``ref_inputs``).
* :class:`DetSegStage`: Det+Seg: detector loss on the heart plus segmenter loss on crops
  centred on the true heart (jittered).

Every stage follows :class:`Stage`, the one interface the training loop
(:func:`cmrseg.training.loop.fit`) uses; :func:`stage_for` picks the stage of a one-stage
model, :mod:`cmrseg.training.two_stage` builds the Ref stage.
"""

from __future__ import annotations

import copy
import random
import sys
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from cmrseg.data.augmentation import StackAugmenter
from cmrseg.data.dataset import StackDataset
from cmrseg.models.centred import heart_centred_forward
from cmrseg.models.det_seg import DetSegNet, centers_from_mask
from cmrseg.models.outputs import class_argmax
from cmrseg.models.two_stage import TwoStageNet
from cmrseg.models.unet import SegmentationNet
from cmrseg.training.config import TrainConfig
from cmrseg.training.context import TrainContext
from cmrseg.training.distill import as_probabilities, check_student
from cmrseg.training.losses import DistillationLoss, GatedRefinementLoss, HeartDetectionLoss, SegLoss

Batch = dict  # a batch from cmrseg.training.batching.StackBatcher


class Stage(Protocol):
    """What the training loop needs from a stage."""

    mode: str  # "stack" or "slice": what one training item is
    train_ds: StackDataset  # served in ``mode``
    fixed_shape: bool  # trains on fixed-shape batches (``TrainConfig.fixed_shape``, where the stage can)

    @property
    def module(self) -> nn.Module:
        """The network whose parameters this stage trains (and checkpoints)."""

    def loss(self, batch: Batch, train_module: nn.Module, gen: torch.Generator,
             dev_gen: torch.Generator) -> tuple[torch.Tensor, dict]:
        """Loss of one batch through ``train_module`` (``module``, possibly wrapped by DDP or
        torch.compile), and detached parts to log; ``gen`` (CPU) and ``dev_gen`` (device)
        draw every random choice, so an epoch is reproducible."""

    def predict(self, ds: StackDataset) -> list[np.ndarray]:
        """Canvas label maps of every stack of ``ds``, as ``cmrseg segment`` would make them."""


class _Base:
    def __init__(self, cfg: TrainConfig, ctx: TrainContext):
        self.cfg = cfg
        self.ctx = ctx
        self.device = ctx.device
        self.augmenter = StackAugmenter(cfg.augment)
        self.inference_crop = cfg.inference_crop
        self.fixed_shape = cfg.fixed_shape

    def crop_centers(self, batch: dict, gen: torch.Generator) -> torch.Tensor:
        """Per item: the heart's centre (prob ``heart_crop_prob``) or a random canvas point."""
        h = batch["label"].shape[-1]
        out = self.cfg.augment.crop or h
        heart = batch["heart_centers"]
        lo, hi = out / 2.0, h - out / 2.0
        rand = torch.rand(len(heart), 2, generator=gen) * max(hi - lo, 0.0) + min(lo, hi)
        use_heart = (torch.rand(len(heart), generator=gen) < self.cfg.heart_crop_prob) & ~heart.isnan().any(1)
        return torch.where(use_heart[:, None], heart.nan_to_num(h / 2.0), rand)

    @staticmethod
    def stacks(batch: dict) -> dict:
        """How the network learns which slices form a stack: ``stack_ids`` in a fixed-shape
        batch (a tensor: one shape whatever the stacks), else the Python ``stack_sizes``."""
        return {"stack_ids": batch["stack_ids"]} if "stack_ids" in batch else {"stack_sizes": batch["stack_sizes"]}

    def _segmentation_loss(self, out, y: torch.Tensor, batch: dict) -> tuple[torch.Tensor, dict]:
        """The gated loss for networks with a classifier, else cross-entropy (+ Dice); the
        padding slices of a fixed-shape batch left out."""
        valid = batch["stack_ids"] >= 0 if "stack_ids" in batch else None
        if out.class_logits is not None:
            loss = self.loss_fn(out.logits, out.class_logits, y, valid)
            return loss, dict(self.loss_fn.last)
        return self.loss_fn(out.logits, y, valid), {}

    def batch_maps(self, batch: dict, map_of) -> torch.Tensor:
        """Per-pixel maps ``[N, C, H, W]`` of a batch's slices: ``map_of(record)`` gives a
        stack's maps (``[S, C, H, W]``), cut to the item's slice in slice mode; a fixed-shape
        batch's padding gets pure background (channel 0)."""
        index = self.train_ds.index
        maps = []
        for i in batch["indices"]:
            rec_i, s = index[i]
            m = map_of(rec_i)
            maps.append(m if s is None else m[s:s + 1])
        sizes = batch["stack_sizes"]
        if len(sizes) > len(batch["indices"]):
            pad = maps[0].new_zeros(sizes[-1], *maps[0].shape[1:])
            pad[:, 0] = torch.iinfo(pad.dtype).max if not pad.is_floating_point() else 1.0
            maps.append(pad)
        return torch.cat(maps)

    @torch.no_grad()
    def _predict_images(self, net: nn.Module, ds: StackDataset) -> list[np.ndarray]:
        """Canvas label maps of every validation stack as ``cmrseg segment`` makes them
        (eval mode: gated for MT networks; heart-centred when ``inference_crop`` is set)."""
        net.eval()
        preds = []
        for rec in ds.records:
            x = torch.from_numpy(rec.image).to(self.device).float().div_(255)[:, None]
            with self.ctx.autocast():
                out = heart_centred_forward(net, self.ctx.memory_format(x), self.inference_crop)
            preds.append(class_argmax(out.logits).to(torch.uint8).cpu().numpy())
        return preds


class ImageStage(_Base):
    """Train ``net`` (a :class:`SegmentationNet`) on images."""

    def __init__(self, net: SegmentationNet, train_ds: StackDataset, cfg: TrainConfig, ctx: TrainContext):
        super().__init__(cfg, ctx)
        self.net = net
        self.mode = "stack" if net.all_slice else "slice"
        self.train_ds = train_ds.with_mode(self.mode)
        gated = net.classifier is not None
        self.loss_fn = GatedRefinementLoss(cfg.lambda_cls, cfg.dice_weight) if gated else SegLoss(cfg.dice_weight)

    @property
    def module(self) -> nn.Module:
        return self.net

    def loss(self, batch: dict, train_module: nn.Module, gen: torch.Generator, dev_gen) -> tuple[torch.Tensor, dict]:
        sizes = batch["stack_sizes"]
        centers = self.crop_centers(batch, gen)
        x, y, _ = self.augmenter(batch["image"], batch["label"], sizes, generator=dev_gen, centers=centers)
        with self.ctx.autocast():
            out = train_module(self.ctx.memory_format(x), **self.stacks(batch))
        return self._segmentation_loss(out, y, batch)

    def predict(self, ds: StackDataset) -> list[np.ndarray]:
        return self._predict_images(self.net, ds)


class DistillStage(ImageStage):
    """Train a one-stage network without a classifier to output a teacher's probabilities
    (:mod:`cmrseg.training.distill`): ``targets[record]`` uint8 ``[S, 4, C, C]``, augmented with
    the image's geometry; the vendor-like shifts reach the image only."""

    def __init__(self, net: SegmentationNet, train_ds: StackDataset, cfg: TrainConfig, ctx: TrainContext,
                 targets: list[torch.Tensor]):
        super().__init__(net, train_ds, cfg, ctx)
        check_student(net)
        self.targets = targets
        self.loss_fn = DistillationLoss(cfg.teacher_weight, cfg.dice_weight)

    def loss(self, batch: dict, train_module: nn.Module, gen: torch.Generator, dev_gen) -> tuple[torch.Tensor, dict]:
        sizes = batch["stack_sizes"]
        soft = as_probabilities(self.batch_maps(batch, lambda r: self.targets[r]).to(self.device))
        centers = self.crop_centers(batch, gen)
        x, y, t = self.augmenter(batch["image"], batch["label"], sizes, extra=soft, generator=dev_gen, centers=centers)
        with self.ctx.autocast():
            out = train_module(self.ctx.memory_format(x), **self.stacks(batch))
        valid = batch["stack_ids"] >= 0 if "stack_ids" in batch else None
        return self.loss_fn(out.logits, t, y, valid), dict(self.loss_fn.last)


class DetSegStage(_Base):
    """Train a :class:`DetSegNet` (detector and crop segmenter together)."""

    mode = "stack"

    def __init__(self, net: DetSegNet, train_ds: StackDataset, cfg: TrainConfig, ctx: TrainContext):
        super().__init__(cfg, ctx)
        if cfg.fixed_shape:  # its crops follow each stack: one config for every model (the GPU job) still trains it
            print("cmrseg: note: det_seg trains on whole stacks as they are (fixed_shape applies to the other models)",
                  file=sys.stderr)
        self.fixed_shape = False
        self.net = net
        self.inference_crop = None  # Det+Seg crops around its own detection
        self.train_ds = train_ds.with_mode(self.mode)
        self.det_loss = HeartDetectionLoss(cfg.dice_weight)
        self.seg_loss = SegLoss(cfg.dice_weight)

    @property
    def module(self) -> nn.Module:
        return self.net

    def loss(self, batch, train_module, gen, dev_gen):
        sizes = batch["stack_sizes"]
        centers = self.crop_centers(batch, gen)
        x, y, _ = self.augmenter(batch["image"], batch["label"], sizes, generator=dev_gen, centers=centers)
        net = self.net
        jitter = max(1, net.crop_size // 8)
        heart = centers_from_mask(y > 0, sizes) + torch.randint(-jitter, jitter + 1, (len(sizes), 2), generator=gen)
        with self.ctx.autocast():
            out = train_module(self.ctx.memory_format(x), sizes, heart)
        zoomed = out.extras["crop_logits"].shape[-1]
        y_crop = net.crop(y[:, None].float(), heart, sizes)
        y_crop = F.interpolate(y_crop, size=(zoomed, zoomed), mode="nearest")[:, 0].long()
        det = self.det_loss(out.seg_logits, y)
        seg = self.seg_loss(out.extras["crop_logits"], y_crop)
        return det + seg, {"det": det.detach(), "seg": seg.detach()}

    def predict(self, ds: StackDataset) -> list[np.ndarray]:
        return self._predict_images(self.net, ds)


@dataclass
class RefInputs:
    """What the Ref stage trains on (built by :func:`cmrseg.training.two_stage.ref_inputs`).

    ``sources``: Seg-stage state dicts (the final weights, and snapshots from along Seg
    training for ``ref_inputs: snapshots``); ``train_probs[source][stack]``: their float16
    probability maps of every training stack (None when ``online``: a drawn source runs on
    every augmented batch instead); ``val_probs``: the final Seg stage's maps of the
    validation stacks (None when validation runs both stages heart-centred).
    """

    sources: list[dict]
    train_probs: list[list[torch.Tensor]] | None
    val_probs: list[torch.Tensor] | None


class RefineStage(_Base):
    """Train the Ref stage of ``model`` (its Seg stage frozen and trained) on ``inputs``.

    Online inputs run a randomly drawn source on every augmented training batch (the Seg
    stage's errors under augmentation: intensity changes, rotations, crops); cached ones
    augment probability maps computed once per source on the plain images.
    """

    def __init__(self, model: TwoStageNet, train_ds: StackDataset, cfg: TrainConfig, ctx: TrainContext,
                 inputs: RefInputs):
        super().__init__(cfg, ctx)
        self.model = model
        self.ref = model.ref
        self.mode = "stack" if model.ref.all_slice or model.seg.all_slice else "slice"
        gated = model.ref.classifier is not None
        self.loss_fn = GatedRefinementLoss(cfg.lambda_cls, cfg.dice_weight) if gated else SegLoss(cfg.dice_weight)
        self.sources = inputs.sources
        self.train_probs = inputs.train_probs
        self.val_probs = inputs.val_probs
        if self.train_probs is None:  # a separate copy runs the sources, so model.seg keeps the final weights
            self.source_net, self.source_index = copy.deepcopy(model.seg).eval(), None
        self.train_ds = train_ds.with_mode(self.mode)

    @property
    def module(self) -> nn.Module:
        return self.ref

    def loss(self, batch, train_module, gen, dev_gen):
        if self.train_probs is None:
            return self._loss_online(batch, train_module, gen, dev_gen)
        sizes = batch["stack_sizes"]
        probs = self.batch_maps(batch, lambda r: self.train_probs[int(torch.randint(len(self.train_probs), (1,),
                                                                                     generator=gen))][r]).float()
        centers = self.crop_centers(batch, gen)
        _, y, p = self.augmenter(None, batch["label"], sizes, extra=probs, generator=dev_gen, centers=centers)
        with self.ctx.autocast():
            out = train_module(self.ctx.memory_format(p), **self.stacks(batch))
        return self._segmentation_loss(out, y, batch)

    def _loss_online(self, batch, train_module, gen, dev_gen):
        sizes = batch["stack_sizes"]
        source = int(torch.randint(len(self.sources), (1,), generator=gen))
        if source != self.source_index:
            self.source_net.load_state_dict(self.sources[source])
            self.source_index = source
        centers = self.crop_centers(batch, gen)
        x, y, _ = self.augmenter(batch["image"], batch["label"], sizes, generator=dev_gen, centers=centers)
        with torch.no_grad(), self.ctx.autocast():
            p = self.source_net(self.ctx.memory_format(x), **self.stacks(batch)).logits.float().softmax(1)
        with self.ctx.autocast():
            out = train_module(self.ctx.memory_format(p), **self.stacks(batch))
        return self._segmentation_loss(out, y, batch)

    @torch.no_grad()
    def predict(self, ds: StackDataset) -> list[np.ndarray]:
        if self.inference_crop:  # both stages, heart-centred, as cmrseg segment runs them
            return self._predict_images(self.model, ds)
        self.ref.eval()
        preds = []
        for p in self.val_probs:
            with self.ctx.autocast():
                logits = self.ref(self.ctx.memory_format(p.float())).logits
            preds.append(class_argmax(logits).to(torch.uint8).cpu().numpy())
        return preds


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2 ** 32)
    torch.manual_seed(seed)


def stage_for(model: nn.Module, train_ds: StackDataset, cfg: TrainConfig, ctx: TrainContext) -> Stage:
    """The stage that trains a one-stage model (Det+Seg, or any segmentation network)."""
    if isinstance(model, DetSegNet):
        return DetSegStage(model, train_ds, cfg, ctx)
    if isinstance(model, SegmentationNet):
        return ImageStage(model, train_ds, cfg, ctx)
    raise TypeError(f"no one-stage training for {type(model).__name__} (two-stage models: cmrseg.training.two_stage)")
