"""What is trained in each stage and how a batch becomes a loss.

* :class:`ImageStage`: a network on augmented images (every single-stage model and the Seg
  stage of two-stage models). Plain networks use :class:`~cmrseg.losses.SegLoss`, networks
  with a classification branch the paper's gated loss.
* :class:`RefineStage`: the Ref stage of a two-stage model, on Seg-stage probability maps:
  computed once per Seg weight snapshot and then augmented, or computed by a Seg snapshot
  on every augmented training batch (see ``ref_inputs``).
* :class:`DetSegStage`: Det+Seg: detector loss on the heart plus segmenter loss on crops
  centred on the true heart (jittered).
"""

from __future__ import annotations

import copy
import random

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from cmrseg.data.augmentation import StackAugmenter
from cmrseg.data.dataset import StackDataset
from cmrseg.inference.centred import heart_centred_forward
from cmrseg.losses import GatedRefinementLoss, HeartDetectionLoss, SegLoss
from cmrseg.models.det_seg import DetSegNet, centers_from_mask
from cmrseg.models.two_stage import TwoStageNet
from cmrseg.models.unet import SegmentationNet


class _Base:
    def __init__(self, cfg, device, amp_dtype, channels_last: bool):
        self.cfg = cfg
        self.device = device
        self.amp_dtype = amp_dtype
        self.channels_last = channels_last
        self.augmenter = StackAugmenter(cfg.augment)
        self.inference_crop = cfg.inference_crop

    def autocast(self):
        if self.amp_dtype is None:
            return torch.autocast(self.device.type, enabled=False)
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    def _fmt(self, x: torch.Tensor) -> torch.Tensor:
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    def crop_centers(self, batch: dict, gen: torch.Generator) -> torch.Tensor:
        """Per item: the heart's centre (prob ``heart_crop_prob``) or a random canvas point."""
        h = batch["label"].shape[-1]
        out = self.cfg.augment.crop or h
        heart = batch["heart_centers"]
        lo, hi = out / 2.0, h - out / 2.0
        rand = torch.rand(len(heart), 2, generator=gen) * max(hi - lo, 0.0) + min(lo, hi)
        use_heart = (torch.rand(len(heart), generator=gen) < self.cfg.heart_crop_prob) & ~heart.isnan().any(1)
        return torch.where(use_heart[:, None], heart.nan_to_num(h / 2.0), rand)

    def _segmentation_loss(self, out, y: torch.Tensor) -> tuple[torch.Tensor, dict]:
        """The gated loss for networks with a classifier, else cross-entropy (+ Dice)."""
        if out.class_logits is not None:
            loss = self.loss_fn(out.logits, out.class_logits, y)
            return loss, dict(self.loss_fn.last)
        return self.loss_fn(out.logits, y), {}

    @torch.no_grad()
    def _predict_images(self, net: nn.Module, ds: StackDataset) -> list[np.ndarray]:
        """Canvas label maps of every validation stack as ``cmrseg segment`` makes them
        (eval mode: gated for MT networks; heart-centred when ``inference_crop`` is set)."""
        net.eval()
        preds = []
        for rec in ds.records:
            x = torch.from_numpy(rec.image).to(self.device).float().div_(255)[:, None]
            with self.autocast():
                out = heart_centred_forward(net, self._fmt(x), self.inference_crop)
            preds.append(out.logits.argmax(1).to(torch.uint8).cpu().numpy())
        return preds


class ImageStage(_Base):
    """Train ``net`` (a :class:`SegmentationNet`) on images."""

    def __init__(self, net: SegmentationNet, train_ds: StackDataset, cfg, device, amp_dtype, channels_last):
        super().__init__(cfg, device, amp_dtype, channels_last)
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
        with self.autocast():
            out = train_module(self._fmt(x), sizes)
        return self._segmentation_loss(out, y)

    def predict(self, ds: StackDataset) -> list[np.ndarray]:
        return self._predict_images(self.net, ds)


class DetSegStage(_Base):
    """Train a :class:`DetSegNet` (detector and crop segmenter together)."""

    mode = "stack"

    def __init__(self, net: DetSegNet, train_ds: StackDataset, cfg, device, amp_dtype, channels_last):
        super().__init__(cfg, device, amp_dtype, channels_last)
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
        with self.autocast():
            out = train_module(self._fmt(x), sizes, heart)
        zoomed = out.extras["crop_logits"].shape[-1]
        y_crop = net.crop(y[:, None].float(), heart, sizes)
        y_crop = F.interpolate(y_crop, size=(zoomed, zoomed), mode="nearest")[:, 0].long()
        det = self.det_loss(out.stage1_logits, y)
        seg = self.seg_loss(out.extras["crop_logits"], y_crop)
        return det + seg, {"det": det.detach(), "seg": seg.detach()}

    def predict(self, ds: StackDataset) -> list[np.ndarray]:
        return self._predict_images(self.net, ds)


class RefineStage(_Base):
    """Train the Ref stage of ``model`` on cached Seg-stage probabilities.

    Args:
        model: the :class:`TwoStageNet`; ``model.seg`` is frozen and already trained.
        seg_sources: Seg-stage state dicts whose outputs form the training inputs (the
            final weights alone, or snapshots from along Seg training as well).
        online: run a randomly drawn source on every augmented training batch (the Seg
            stage's errors under augmentation: intensity changes, rotations, crops) instead
            of augmenting probability maps cached once per source on the plain images.
    """

    def __init__(self, model: TwoStageNet, seg_sources: list[dict], train_ds: StackDataset, val_ds: StackDataset,
                 cfg, device, amp_dtype, channels_last, progress: bool = False, online: bool = False):
        super().__init__(cfg, device, amp_dtype, channels_last)
        self.model = model
        self.ref = model.ref
        self.mode = "stack" if model.ref.all_slice or model.seg.all_slice else "slice"
        gated = model.ref.classifier is not None
        self.loss_fn = GatedRefinementLoss(cfg.lambda_cls, cfg.dice_weight) if gated else SegLoss(cfg.dice_weight)
        final = {k: v.clone() for k, v in model.seg.state_dict().items()}
        self.sources = seg_sources
        if online:  # a separate copy runs the sources, so model.seg keeps the final weights
            self.source_net, self.source_index = copy.deepcopy(model.seg).eval(), None
            self.train_probs = None
        else:
            self.train_probs = [self._probabilities(sd, train_ds, progress) for sd in seg_sources]
        model.seg.load_state_dict(final)
        self.val_ds = val_ds
        self.val_probs = None if self.inference_crop else self._probabilities(final, val_ds, progress)
        self.train_ds = train_ds.with_mode(self.mode)

    @torch.no_grad()
    def _probabilities(self, state_dict: dict, ds: StackDataset, progress: bool) -> list[torch.Tensor]:
        from tqdm.auto import tqdm

        seg = self.model.seg
        seg.load_state_dict(state_dict)
        seg.eval()
        out = []
        for rec in tqdm(ds.records, desc="stage-1 probabilities", disable=not progress, leave=False):
            x = torch.from_numpy(rec.image).to(self.device).float().div_(255)[:, None]
            with self.autocast():  # as at inference: heart-centred when inference_crop is set
                p = heart_centred_forward(seg, self._fmt(x), self.inference_crop).logits.float().softmax(1)
            out.append(p.to(torch.float16))
        return out

    @property
    def module(self) -> nn.Module:
        return self.ref

    def loss(self, batch, train_module, gen, dev_gen):
        if self.train_probs is None:
            return self._loss_online(batch, train_module, gen, dev_gen)
        sizes = batch["stack_sizes"]
        index = self.train_ds._index
        probs = []
        for i in batch["indices"]:
            rec_i, s = index[i]
            source = self.train_probs[int(torch.randint(len(self.train_probs), (1,), generator=gen))]
            p = source[rec_i]
            probs.append(p if s is None else p[s:s + 1])
        probs = torch.cat(probs).float()
        centers = self.crop_centers(batch, gen)
        _, y, p = self.augmenter(None, batch["label"], sizes, extra=probs, generator=dev_gen, centers=centers)
        with self.autocast():
            out = train_module(self._fmt(p), sizes)
        return self._segmentation_loss(out, y)

    def _loss_online(self, batch, train_module, gen, dev_gen):
        sizes = batch["stack_sizes"]
        source = int(torch.randint(len(self.sources), (1,), generator=gen))
        if source != self.source_index:
            self.source_net.load_state_dict(self.sources[source])
            self.source_index = source
        centers = self.crop_centers(batch, gen)
        x, y, _ = self.augmenter(batch["image"], batch["label"], sizes, generator=dev_gen, centers=centers)
        with torch.no_grad(), self.autocast():
            p = self.source_net(self._fmt(x), sizes).logits.float().softmax(1)
        with self.autocast():
            out = train_module(self._fmt(p), sizes)
        return self._segmentation_loss(out, y)

    @torch.no_grad()
    def predict(self, ds: StackDataset) -> list[np.ndarray]:
        if self.inference_crop:  # both stages, heart-centred, as cmrseg segment runs them
            return self._predict_images(self.model, ds)
        self.ref.eval()
        preds = []
        for p in self.val_probs:
            with self.autocast():
                preds.append(self.ref(self._fmt(p.float())).logits.argmax(1).to(torch.uint8).cpu().numpy())
        return preds


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2 ** 32)
    torch.manual_seed(seed)
