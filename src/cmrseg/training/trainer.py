"""One trainer for every registered model.

``train(cfg, data, out)`` trains a model and leaves in ``out`` everything inference needs
(``model.json`` + ``weights.safetensors``) plus ``config.yaml``, ``log.csv``, TensorBoard
events, the last checkpoint (for resuming) and ``val_summary.json``.

Where the parts live: :mod:`~cmrseg.training.context` (device, torchrun, precision),
:mod:`~cmrseg.training.stages` (what a stage trains and its loss: the :class:`Stage`
protocol), :mod:`~cmrseg.training.loop` (the epoch loop, selection, checkpoints),
:mod:`~cmrseg.training.schedule` (learning rate, time budget),
:mod:`~cmrseg.training.two_stage` (Seg stage reuse, Ref-stage inputs),
:mod:`~cmrseg.training.batching` (batches, DDP shares), :mod:`~cmrseg.training.run_folder`.

Determinism: weights, data order, augmentation and the global generators (dropout) are
seeded from ``cfg.seed`` and the epoch at the start of every epoch, and the Ref stage's input
maps are recomputed from saved weights, so on the CPU a run killed anywhere (either stage, the
probability maps, a save) and resumed ends with the same weights as an uninterrupted run
(``tests/training/test_resume.py``). Not deterministic: CUDA convolution and attention
kernels (cuDNN picks algorithms; atomics in backward passes), and the order of gradient
all-reduce under DDP; a time budget (``time_budget_s``) fits the epoch count to measured
times, so two budgeted runs may train different numbers of epochs.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn as nn

from cmrseg.checkpoint import load_weights, tensor_shapes
from cmrseg.data.dataset import StackDataset
from cmrseg.models import TwoStageNet, create_model
from cmrseg.training.config import TrainConfig
from cmrseg.training.context import TrainContext, setup_context
from cmrseg.training.distill import check_student, teacher_targets
from cmrseg.training.distributed import cleanup
from cmrseg.training.loop import train_one_stage
from cmrseg.training.run_folder import is_complete_run, resolve_splits, weights_file
from cmrseg.training.stages import DistillStage, seed_everything, stage_for
from cmrseg.training.two_stage import train_two_stage


def train(cfg: TrainConfig, data: str | Path, out: str | Path, val: str | Path | None = None) -> Path:
    """Train ``cfg.model`` on ``data`` (train/ + val/) into the run folder ``out``.

    An unfinished run in ``out`` is resumed from its last checkpoint; a finished one is left
    as is (delete it to retrain).
    """
    out = Path(out)
    ctx = setup_context(cfg)
    try:
        if is_complete_run(out):
            return out
        train_src, val_src = resolve_splits(data, val)
        progress = cfg.progress and ctx.is_main
        train_ds = StackDataset.from_folder(train_src, cfg.preprocess, progress=progress, labels=cfg.labels)
        val_ds = StackDataset.from_folder(val_src, cfg.preprocess, progress=progress, labels=cfg.labels)
        if ctx.is_main:  # the run folder appears only once the data is known good
            out.mkdir(parents=True, exist_ok=True)
            cfg.save(out / "config.yaml")
        model = build_model(cfg, ctx)
        if isinstance(model, TwoStageNet):
            train_two_stage(model, cfg, train_ds, val_ds, out, ctx)
        elif cfg.teacher:
            check_student(model)
            stage = DistillStage(model, train_ds, cfg, ctx, teacher_targets(cfg, train_ds, out, ctx))
            train_one_stage(model, stage, val_ds, cfg, out, ctx, snapshots=False, extra={"teacher": cfg.teacher})
        else:
            train_one_stage(model, stage_for(model, train_ds, cfg, ctx), val_ds, cfg, out, ctx, snapshots=True)
        return out
    finally:
        cleanup(ctx.dist)


def build_model(cfg: TrainConfig, ctx: TrainContext) -> nn.Module:
    """``cfg.model`` with seeded initial weights (or ``init_weights``) on the training device."""
    seed_everything(cfg.seed)
    model = create_model(cfg.model, **cfg.model_kwargs).to(ctx.device)
    if cfg.init_weights:
        path = weights_file(cfg.init_weights)
        # a one-stage network started from a two-stage model's weights takes its Seg stage
        two_stage = not isinstance(model, TwoStageNet) and any(k.startswith("ref.") for k in tensor_shapes(path))
        load_weights(model, path, prefix="seg." if two_stage else "")
    if ctx.channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model
