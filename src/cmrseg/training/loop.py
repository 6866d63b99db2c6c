"""The training loop every stage shares (:func:`fit`): Adam, warm-up + cosine schedule,
validation every ``val_every`` epochs with the protocol's Dice (mean of the base, mid and apex
averages, in canvas space), the best epoch kept, a checkpoint every ``checkpoint_every``
epochs, resumed from the last one.

Determinism: data order, augmentation and the global generators (dropout) are seeded from
``cfg.seed``, the epoch and the rank at the start of every epoch, so what an epoch draws never
depends on what ran before it in the process and a resumed run repeats it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn
from tqdm.auto import tqdm

from cmrseg.atomic import write_json
from cmrseg.checkpoint import find_training_state, load_training_state, load_weights, save_training_state, save_weights
from cmrseg.data.dataset import StackDataset
from cmrseg.errors import CmrsegError
from cmrseg.measures.levels import LEVELS
from cmrseg.measures.metrics import level_dice_fast
from cmrseg.training.batching import StackBatcher
from cmrseg.training.config import TrainConfig
from cmrseg.training.context import TrainContext
from cmrseg.training.distributed import agree_on, barrier
from cmrseg.training.run_folder import finish_run
from cmrseg.training.run_log import RunLog
from cmrseg.training.schedule import PLAN_AFTER_EPOCHS, budget_epochs, lr_factor
from cmrseg.training.stages import Stage, seed_everything


def selection_score(summary: dict) -> float:
    """The protocol's mean Dice used to select epochs: mean of the base/mid/apex averages."""
    vals = [summary["levels"][lv]["avg"] for lv in LEVELS]
    vals = [v for v in vals if np.isfinite(v)]
    return float(np.mean(vals)) if vals else 0.0


def validate(stage: Stage, val_ds: StackDataset) -> dict:
    """The protocol's Dice table of the stage's model on the validation stacks (canvas space)."""
    preds = stage.predict(val_ds)
    return {"levels": level_dice_fast([(p, r.label) for r, p in zip(val_ds.records, preds)])}


@dataclass
class _Optimisation:
    """What a stage's training carries from epoch to epoch; ``state`` is checkpointed."""

    train_module: nn.Module  # the stage's module, wrapped by DDP / torch.compile where used
    params: list[nn.Parameter]
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    batcher: StackBatcher
    plan: dict  # {"epochs": planned epochs}, read by the schedule at every step
    state: dict[str, Any]
    budgeted: bool  # epochs fitted to cfg.time_budget_s
    gen: torch.Generator = field(default_factory=torch.Generator)
    dev_gen: torch.Generator | None = None
    started: float = field(default_factory=time.perf_counter)
    val_seconds: list[float] = field(default_factory=list)


def fit(stage: Stage, val_ds: StackDataset, cfg: TrainConfig, out: Path, ctx: TrainContext, *,
        full_model: nn.Module, snapshots: bool) -> dict:
    """Train ``stage.module`` into ``out`` (resuming from ``out/last``); the best epoch's
    ``full_model`` is left in ``out/best.safetensors``. Returns the training state."""
    name = full_model.cmrseg_name
    out.mkdir(parents=True, exist_ok=True)
    opt = _start(stage, cfg, out, ctx, name)
    log = RunLog(out, ctx.is_main)
    log.keep_epochs(opt.state["epoch"])  # rows of epochs after the checkpoint are trained (and logged) again
    bar = tqdm(total=opt.plan["epochs"], initial=opt.state["epoch"], desc=f"train {name}", unit="epoch",
               disable=not (cfg.progress and ctx.is_main), dynamic_ncols=True)
    try:
        while opt.state["epoch"] < opt.plan["epochs"]:
            t0 = time.perf_counter()
            row = _train_epoch(stage, opt, cfg, ctx)
            summary = None
            if opt.budgeted and (opt.state["epoch"] == PLAN_AFTER_EPOCHS or opt.state["epoch"] % cfg.val_every == 0):
                summary = _replan(stage, val_ds, opt, cfg, ctx)
                bar.total = opt.plan["epochs"]
                bar.refresh()
            if ctx.is_main:
                _select_and_save(stage, val_ds, opt, cfg, out, row, summary, full_model, snapshots)
                log.log(row)  # before the checkpoint: a kill between the two is undone by keep_epochs
                opt.state["wall_seconds"] += time.perf_counter() - t0 - row["seconds"]  # validation, saving
                _checkpoint(stage, opt, cfg, out)
            barrier(ctx.dist)
            bar.update(1)
            bar.set_postfix(loss=f"{row['loss']:.3f}", best=f"{opt.state['best_score']:.3f}",
                            sps=f"{row['slices_per_s']:.0f}")
    finally:
        bar.close()
        log.close()
    return opt.state


def _wrap(module: nn.Module, mode: str, fixed_shape: bool, cfg: TrainConfig, ctx: TrainContext) -> nn.Module:
    """``module`` as the step runs it: DDP under torchrun, torch.compile where asked."""
    wrapped = module
    if ctx.dist.enabled:
        from torch.nn.parallel import DistributedDataParallel as DDP

        wrapped = DDP(module, device_ids=[ctx.device.index] if ctx.device.type == "cuda" else None)
    if ctx.device.type == "cuda":
        # cuDNN autotuning pays only for fixed shapes: slice batches are, stack batches vary unless packed
        one_shape = mode == "slice" or fixed_shape
        torch.backends.cudnn.benchmark = one_shape if cfg.cudnn_benchmark is None else cfg.cudnn_benchmark
    if cfg.compile:  # CUDA graphs (reduce-overhead) only on CUDA; on a CPU inductor compiles C++ kernels
        compile_mode = "default" if cfg.compile is True else cfg.compile
        if not fixed_shape and compile_mode in ("reduce-overhead", "max-autotune"):
            compile_mode = "max-autotune-no-cudagraphs" if compile_mode == "max-autotune" else "default"
        wrapped = torch.compile(wrapped, mode=compile_mode, dynamic=not fixed_shape)
    return wrapped


def _start(stage: Stage, cfg: TrainConfig, out: Path, ctx: TrainContext, name: str) -> _Optimisation:
    """Optimizer, schedule and batches for ``stage``, resumed from ``out/last`` if there."""
    batch = cfg.batch_stacks if stage.mode == "stack" else cfg.batch_slices
    batcher = StackBatcher(stage.train_ds, batch, ctx.device, rank=ctx.dist.rank, world_size=ctx.dist.world_size,
                           seed=cfg.seed, fixed_slices=cfg.batch_slices if stage.fixed_shape else None)
    params = [p for p in stage.module.parameters() if p.requires_grad]
    # fused Adam: one kernel for all parameters instead of several per tensor (CUDA only)
    optimizer = torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay, fused=ctx.device.type == "cuda")
    plan = {"epochs": cfg.epochs}
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor(cfg, batcher.num_batches(), plan))
    state: dict[str, Any] = {"epoch": 0, "best_score": -1.0, "best_epoch": -1, "stage": name,
                             "wall_seconds": 0.0, "planned_epochs": cfg.epochs, "epoch_seconds": []}
    ckpt = find_training_state(out / "last")
    if ckpt is not None:
        state = load_training_state(ckpt, stage.module, optimizer, scheduler)
    state.setdefault("epoch_seconds", [])
    plan["epochs"] = min(cfg.epochs, int(state.get("planned_epochs", cfg.epochs)))
    budgeted = cfg.time_budget_s is not None and ckpt is None and cfg.epochs > PLAN_AFTER_EPOCHS
    train_module = _wrap(stage.module, stage.mode, stage.fixed_shape, cfg, ctx)
    return _Optimisation(train_module, params, optimizer, scheduler, batcher, plan, state, budgeted,
                         dev_gen=torch.Generator(device=ctx.device))


def _train_epoch(stage: Stage, opt: _Optimisation, cfg: TrainConfig, ctx: TrainContext) -> dict:
    """One pass over the training items; returns the epoch's log row."""
    epoch, rank = opt.state["epoch"], ctx.dist.rank
    opt.gen.manual_seed(cfg.seed * 100003 + epoch * 7919 + rank)
    opt.dev_gen.manual_seed(cfg.seed * 100003 + epoch * 7919 + rank + 1)
    seed_everything(cfg.seed * 100003 + epoch * 7919 + rank + 2)  # the global generators: dropout
    stage.module.train()
    t0 = time.perf_counter()
    losses, parts, slices = [], {}, 0
    for b in opt.batcher.epoch(epoch):
        loss, extra = stage.loss(b, opt.train_module, opt.gen, opt.dev_gen)
        opt.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.grad_clip:
            torch.nn.utils.clip_grad_norm_(opt.params, cfg.grad_clip)
        opt.optimizer.step()
        opt.scheduler.step()
        losses.append(loss.detach())  # no host sync inside the step
        for k, v in extra.items():
            parts.setdefault(k, []).append(v)
        slices += b["real_slices"]  # a Python int: no padding, no sync
    if ctx.device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - t0
    if not losses:
        raise CmrsegError("no training batches: the training split is empty for this rank")
    mean_loss = float(torch.stack(losses).mean())
    if not np.isfinite(mean_loss):
        raise CmrsegError(f"training diverged at epoch {epoch + 1} (loss {mean_loss})")
    opt.state["epoch"] = epoch + 1
    opt.state["wall_seconds"] = opt.state.get("wall_seconds", 0.0) + seconds
    opt.state["epoch_seconds"].append(seconds)
    return {"epoch": epoch + 1, "stage": opt.state["stage"], "lr": opt.optimizer.param_groups[0]["lr"],
            "loss": mean_loss, **{k: float(torch.stack(v).float().mean()) for k, v in parts.items()},
            "seconds": seconds, "slices_per_s": slices * ctx.dist.world_size / max(seconds, 1e-9)}


def _replan(stage: Stage, val_ds: StackDataset, opt: _Optimisation, cfg: TrainConfig, ctx: TrainContext) -> dict:
    """Validate (timed) and fit the planned epochs to what is left of the time budget; every
    rank takes rank 0's plan. Returns the validation summary (selection uses it too)."""
    t_val = time.perf_counter()
    summary = validate(stage, val_ds)
    opt.val_seconds.append(time.perf_counter() - t_val)
    epochs = budget_epochs(cfg, opt.state["epoch"], time.perf_counter() - opt.started, opt.state["epoch_seconds"],
                           float(np.median(opt.val_seconds[1:] or opt.val_seconds)), opt.plan["epochs"])
    opt.plan["epochs"] = opt.state["planned_epochs"] = agree_on(epochs, ctx.device, ctx.dist)
    return summary


def _select_and_save(stage: Stage, val_ds: StackDataset, opt: _Optimisation, cfg: TrainConfig, out: Path, row: dict,
                     summary: dict | None, full_model: nn.Module, snapshots: bool) -> None:
    """Rank 0 after an epoch: validation when due (best epoch kept), snapshots."""
    epoch, state = opt.state["epoch"], opt.state
    last = epoch == opt.plan["epochs"]
    if epoch % cfg.val_every == 0 or last or summary is not None:
        if summary is None:
            summary = validate(stage, val_ds)
        score = selection_score(summary)
        row.update({"val_score": score, **{f"val_{lv}": summary["levels"][lv]["avg"] for lv in (*LEVELS, "volume")}})
        if score > state["best_score"]:
            state.update(best_score=score, best_epoch=epoch)
            save_weights(full_model, out / "best.safetensors")
            write_json(out / "val_summary.json", {"epoch": epoch, "score": score, **summary})
    if snapshots and epoch in {max(1, round(f * opt.plan["epochs"])) for f in cfg.snapshot_fractions}:
        save_weights(stage.module, out / "snapshots" / f"epoch_{epoch:03d}.safetensors")


def _checkpoint(stage: Stage, opt: _Optimisation, cfg: TrainConfig, out: Path) -> None:
    """Rank 0, after the epoch's log row: the state to resume from, every ``checkpoint_every``
    epochs and after the last."""
    epoch = opt.state["epoch"]
    if epoch % cfg.checkpoint_every == 0 or epoch == opt.plan["epochs"]:
        save_training_state(out / "last", stage.module, opt.optimizer, opt.scheduler, opt.state)


def train_one_stage(model: nn.Module, stage: Stage, val_ds: StackDataset, cfg: TrainConfig, out: Path,
                    ctx: TrainContext, *, snapshots: bool, extra: dict | None = None,
                    setup_seconds: float = 0.0) -> dict:
    """:func:`fit`, then make ``out`` a complete run of ``model`` with its best epoch
    (``setup_seconds``, e.g. computing the Ref stage's inputs, count as training time)."""
    state = fit(stage, val_ds, cfg, out, ctx, full_model=model, snapshots=snapshots)
    state["wall_seconds"] = state.get("wall_seconds", 0.0) + setup_seconds
    if ctx.is_main:
        if (out / "best.safetensors").exists():
            load_weights(model, out / "best.safetensors")
        finish_run(out, model, cfg, state, {**(extra or {}), "device": str(ctx.device)})
    barrier(ctx.dist)
    return state
