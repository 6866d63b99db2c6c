"""One trainer for every registered model.

``train(cfg, data, out)`` trains a model and leaves in ``out`` everything inference needs
(``model.json`` + ``weights.safetensors``) plus ``config.yaml``, ``log.csv``, TensorBoard
events, the last checkpoint (for resuming) and ``val_summary.json``.

Two-stage models train the Seg stage first (``out/stage1``, a complete run of its own, or
``cfg.stage1_run`` reused), freeze it, then train the Ref stage on the Seg stage's
probability maps (``cfg.ref_inputs``). Every stage: Adam, warm-up + cosine schedule,
validation every ``val_every`` epochs with the protocol's Dice (mean of the base, mid and
apex averages, in canvas space), the best epoch kept, a checkpoint every epoch.

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

import csv
import json
import math
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from cmrseg import __version__
from cmrseg.atomic import write_json
from cmrseg.checkpoint import (find_training_state, load_training_state, load_weights, read_tensors,
                               save_training_state, save_weights)
from cmrseg.data.dataset import StackBatcher, StackDataset
from cmrseg.device import resolve_device
from cmrseg.errors import CmrsegError, InputError
from cmrseg.evaluation.metrics import level_dice_fast
from cmrseg.evaluation.levels import LEVELS
from cmrseg.labels import label_map_json
from cmrseg.models import DetSegNet, TwoStageNet, create_model
from cmrseg.models.registry import stage1_name
from cmrseg.training.config import TrainConfig
from cmrseg.training.distributed import DistInfo, barrier, cleanup, init_distributed
from cmrseg.training.stages import DetSegStage, ImageStage, RefineStage, seed_everything

RUN_FORMAT = "cmrseg-run/1"


def resolve_splits(data: str | Path, val: str | Path | None = None) -> tuple[Path, Path]:
    """``data`` holds ``train`` and ``val`` (folders or ``.npz`` caches), unless ``val`` is given."""
    data = Path(data)
    if val is not None:
        return data, Path(val)
    for name in ("train", "train.npz"):
        if (data / name).exists():
            train = data / name
            break
    else:
        raise InputError(data, "no 'train' split inside (give --val, or a folder with train/ and val/)")
    for name in ("val", "val.npz"):
        if (data / name).exists():
            return train, data / name
    raise InputError(data, "no 'val' split inside (needed to select the best epoch)")


def _schedule(cfg: TrainConfig, steps_per_epoch: int, plan: dict):
    """Warm-up + cosine learning-rate factor over ``plan["epochs"]`` epochs (read at every
    step, so a time budget can shorten the schedule after the first epochs)."""
    warm = cfg.warmup_epochs * steps_per_epoch

    def factor(step: int) -> float:
        if warm and step < warm:
            return (step + 1) / warm
        if cfg.schedule == "constant":
            return 1.0
        total = max(1, plan["epochs"] * steps_per_epoch)
        t = (step - warm) / max(1, total - warm)
        return 0.02 + 0.98 * 0.5 * (1 + math.cos(math.pi * min(1.0, t)))

    return factor


PLAN_AFTER_EPOCHS = 2  # first plan of a time-budgeted stage; re-planned at every validation


def budget_epochs(cfg: TrainConfig, done: int, elapsed: float, epoch_seconds: list[float],
                  val_seconds: float) -> int:
    """Epochs that fit ``cfg.time_budget_s`` (at most ``cfg.epochs``, at least one more than
    ``done``), for what is left of the budget after ``elapsed`` seconds: the median time of
    the epochs after the first (the first carries the device's warm-up: 10 s against 1.2 s
    later on an H200) plus the validation time spread over ``val_every`` epochs."""
    timed = epoch_seconds[1:] or epoch_seconds
    per_epoch = float(np.median(timed[-20:])) + val_seconds / max(1, cfg.val_every)
    fit = done + int(max(0.0, cfg.time_budget_s - elapsed) / max(per_epoch, 1e-9))
    return int(min(cfg.epochs, max(done + 1, fit)))


def selection_score(summary: dict) -> float:
    """The protocol's mean Dice used to select epochs: mean of the base/mid/apex averages."""
    vals = [summary["levels"][lv]["avg"] for lv in LEVELS]
    vals = [v for v in vals if np.isfinite(v)]
    return float(np.mean(vals)) if vals else 0.0


def validate(stage, val_ds: StackDataset) -> dict:
    """The protocol's Dice table of the stage's model on the validation stacks (canvas space)."""
    preds = stage.predict(val_ds)
    return {"levels": level_dice_fast([(p, r.label) for r, p in zip(val_ds.records, preds)])}


def run_metadata(model: nn.Module, cfg: TrainConfig, extra: dict | None = None) -> dict:
    return {
        "format": RUN_FORMAT,
        "model": model.cmrseg_name,
        "model_kwargs": model.cmrseg_kwargs,
        "preprocess": cfg.preprocess.to_dict(),
        "inference_crop": None if isinstance(model, DetSegNet) else cfg.inference_crop,
        "label_map": label_map_json(),
        "protocol": cfg.protocol,
        "cmrseg_version": __version__,
        **(extra or {}),
    }


LOG_COLUMNS = ["epoch", "stage", "lr", "loss", "seg", "cls", "det", "seconds", "slices_per_s", "val_score",
               "val_base", "val_mid", "val_apex", "val_volume"]


class _Logger:
    """CSV (fixed columns, empty where an epoch has no value) + TensorBoard, rank 0 only."""

    def __init__(self, out: Path, enabled: bool):
        self.enabled = enabled
        self.path = out / "log.csv"
        self.tb = None
        if enabled:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(str(out / "tensorboard"))
            except Exception:  # tensorboard missing: CSV only
                self.tb = None

    def log(self, row: dict) -> None:
        if not self.enabled:
            return
        new = not self.path.exists()
        with open(self.path, "a", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=LOG_COLUMNS, extrasaction="ignore")
            if new:
                w.writeheader()
            w.writerow(row)
        if self.tb is not None:
            for k, v in row.items():
                if isinstance(v, (int, float)) and k != "epoch" and np.isfinite(v):
                    self.tb.add_scalar(k, v, row["epoch"])
            self.tb.flush()

    def close(self):
        if self.tb is not None:
            self.tb.close()


def _fit(stage, val_ds: StackDataset, cfg: TrainConfig, out: Path, device: torch.device,
         info: DistInfo, snapshots: bool, full_model: nn.Module, stage_name: str) -> dict:
    """Train ``stage.module`` for ``cfg.epochs`` epochs with checkpointing and selection."""
    out.mkdir(parents=True, exist_ok=True)
    module = stage.module
    train_module: nn.Module = module
    if info.enabled:
        from torch.nn.parallel import DistributedDataParallel as DDP

        train_module = DDP(module, device_ids=[device.index] if device.type == "cuda" else None)
    if device.type == "cuda":
        # cuDNN autotuning pays only for fixed shapes: slice batches are, stack batches vary
        torch.backends.cudnn.benchmark = stage.mode == "slice" if cfg.cudnn_benchmark is None else cfg.cudnn_benchmark
    if cfg.compile and device.type == "cuda":
        train_module = torch.compile(train_module, dynamic=True)
    batch = cfg.batch_stacks if stage.mode == "stack" else cfg.batch_slices
    batcher = StackBatcher(stage.train_ds, batch, device, rank=info.rank, world_size=info.world_size, seed=cfg.seed)
    steps = batcher.num_batches()
    params = [p for p in module.parameters() if p.requires_grad]
    # fused Adam: one kernel for all parameters instead of several per tensor (CUDA only)
    optimizer = torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay, fused=device.type == "cuda")
    plan = {"epochs": cfg.epochs}
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _schedule(cfg, steps, plan))
    state: dict[str, Any] = {"epoch": 0, "best_score": -1.0, "best_epoch": -1, "stage": stage_name,
                             "wall_seconds": 0.0, "planned_epochs": cfg.epochs, "epoch_seconds": []}
    ckpt = find_training_state(out / "last")
    if ckpt is not None:
        state = load_training_state(ckpt, module, optimizer, scheduler)
    state.setdefault("epoch_seconds", [])
    plan["epochs"] = min(cfg.epochs, int(state.get("planned_epochs", cfg.epochs)))
    budgeted = cfg.time_budget_s is not None and ckpt is None and cfg.epochs > PLAN_AFTER_EPOCHS

    def snapshot_epochs() -> list[int]:
        return sorted({max(1, round(f * plan["epochs"])) for f in cfg.snapshot_fractions}) if snapshots else []

    logger = _Logger(out, info.is_main)
    from tqdm.auto import tqdm

    bar = tqdm(total=plan["epochs"], initial=state["epoch"], desc=f"train {stage_name}", unit="epoch",
               disable=not (cfg.progress and info.is_main), dynamic_ncols=True)
    gen = torch.Generator()
    dev_gen = torch.Generator(device=device)
    t_fit = time.perf_counter()
    val_times: list[float] = []
    try:
        epoch = state["epoch"]
        while epoch < plan["epochs"]:
            gen.manual_seed(cfg.seed * 100003 + epoch * 7919 + info.rank)
            dev_gen.manual_seed(cfg.seed * 100003 + epoch * 7919 + info.rank + 1)
            # the global generators too (dropout draws from them): what an epoch draws never
            # depends on what ran before it in this process, so a resumed run repeats it
            seed_everything(cfg.seed * 100003 + epoch * 7919 + info.rank + 2)
            module.train()
            t0 = time.perf_counter()
            losses, parts, slices = [], {}, 0
            for b in batcher.epoch(epoch):
                loss, extra = stage.loss(b, train_module, gen, dev_gen)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                if cfg.grad_clip:
                    torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
                optimizer.step()
                scheduler.step()
                losses.append(loss.detach())
                for k, v in extra.items():
                    parts.setdefault(k, []).append(v)
                slices += int(b["image"].shape[0])
            if device.type == "cuda":
                torch.cuda.synchronize()
            seconds = time.perf_counter() - t0
            if not losses:
                raise CmrsegError("no training batches: the training split is empty for this rank")
            mean_loss = float(torch.stack(losses).mean())
            if not np.isfinite(mean_loss):
                raise CmrsegError(f"training diverged at epoch {epoch + 1} (loss {mean_loss})")
            row = {"epoch": epoch + 1, "stage": stage_name, "lr": optimizer.param_groups[0]["lr"], "loss": mean_loss,
                   **{k: float(torch.stack(v).float().mean()) for k, v in parts.items()}, "seconds": seconds,
                   "slices_per_s": slices * info.world_size / max(seconds, 1e-9)}
            state["epoch"] = epoch + 1
            state["wall_seconds"] = state.get("wall_seconds", 0.0) + seconds
            state["epoch_seconds"].append(seconds)
            plan_now = budgeted and (epoch + 1 == PLAN_AFTER_EPOCHS or (epoch + 1) % cfg.val_every == 0)
            if plan_now:  # a validation timed now (and used for selection like any other)
                t_val = time.perf_counter()
                summary = validate(stage, val_ds)
                val_times.append(time.perf_counter() - t_val)
                plan["epochs"] = budget_epochs(cfg, epoch + 1, time.perf_counter() - t_fit, state["epoch_seconds"],
                                               float(np.median(val_times[1:] or val_times)))
                plan["epochs"] = _agree(plan["epochs"], device, info)
                state["planned_epochs"] = plan["epochs"]
                bar.total = plan["epochs"]
                bar.refresh()
            last = epoch + 1 == plan["epochs"]
            if info.is_main:
                if (epoch + 1) % cfg.val_every == 0 or last or plan_now:
                    if not plan_now:
                        summary = validate(stage, val_ds)
                    score = selection_score(summary)
                    row.update({"val_score": score, **{f"val_{lv}": summary["levels"][lv]["avg"] for lv in (*LEVELS, "volume")}})
                    if score > state["best_score"]:
                        state.update(best_score=score, best_epoch=epoch + 1)
                        save_weights(full_model, out / "best.safetensors")
                        write_json(out / "val_summary.json", {"epoch": epoch + 1, "score": score, **summary})
                if epoch + 1 in snapshot_epochs():
                    save_weights(module, out / "snapshots" / f"epoch_{epoch + 1:03d}.safetensors")
                if (epoch + 1) % cfg.checkpoint_every == 0 or last:
                    save_training_state(out / "last", module, optimizer, scheduler, state)
                logger.log(row)
                state["wall_seconds"] += time.perf_counter() - t0 - seconds  # validation and saving
            barrier(info)
            bar.update(1)
            bar.set_postfix(loss=f"{mean_loss:.3f}", best=f"{state['best_score']:.3f}", sps=f"{row['slices_per_s']:.0f}")
            epoch += 1
    finally:
        bar.close()
        logger.close()
    return state


def _agree(epochs: int, device: torch.device, info: DistInfo) -> int:
    """Under DDP every rank must run the same number of epochs: take rank 0's plan."""
    if not info.enabled:
        return epochs
    import torch.distributed as dist

    t = torch.tensor([epochs], device=device)
    dist.broadcast(t, src=0)
    return int(t.item())


def _finish(out: Path, model: nn.Module, cfg: TrainConfig, state: dict, extra: dict | None = None) -> None:
    """Make ``out`` a complete run: best weights -> weights.safetensors, model.json."""
    best = out / "best.safetensors"
    if best.exists():
        os.replace(best, out / "weights.safetensors")
    elif not (out / "weights.safetensors").exists():
        save_weights(model, out / "weights.safetensors")
    meta = run_metadata(model, cfg, {"trained_epochs": state["epoch"], "planned_epochs": state.get("planned_epochs"),
                                     "time_budget_s": cfg.time_budget_s, "best_epoch": state["best_epoch"],
                                     "train_seconds": round(state.get("wall_seconds", 0.0), 1),
                                     "val_score": state["best_score"],
                                     "selection": "mean of base/mid/apex average Dice on val (canvas space)",
                                     "complete": True, **(extra or {})})
    write_json(out / "model.json", meta)


def _weights_file(path: str | Path) -> Path:
    """The weights of ``init_weights``: a ``.safetensors`` file or a run folder's weights."""
    path = Path(path)
    if path.is_dir():
        path = path / "weights.safetensors"
    if not path.is_file():
        raise InputError(path, "init_weights: no such weights file")
    return path


def is_complete_run(path: Path) -> bool:
    try:
        return json.loads((path / "model.json").read_text()).get("complete", False)
    except (OSError, ValueError):
        return False


def _train_single(model: nn.Module, cfg: TrainConfig, train_ds, val_ds, out: Path, device, info, amp, cl,
                  snapshots: bool) -> dict:
    if isinstance(model, DetSegNet):
        stage = DetSegStage(model, train_ds, cfg, device, amp, cl)
    else:
        stage = ImageStage(model, train_ds, cfg, device, amp, cl)
    state = _fit(stage, val_ds, cfg, out, device, info, snapshots, model, model.cmrseg_name)
    if info.is_main:
        if (out / "best.safetensors").exists():
            load_weights(model, out / "best.safetensors")
        _finish(out, model, cfg, state, {"device": str(device)})
    barrier(info)
    return state


def train(cfg: TrainConfig, data: str | Path, out: str | Path, val: str | Path | None = None) -> Path:
    """Train ``cfg.model`` on ``data`` (train/ + val/) into the run folder ``out``.

    An unfinished run in ``out`` is resumed from its last checkpoint; a finished one is left
    as is (delete it to retrain).
    """
    out = Path(out)
    device = resolve_device(cfg.device)
    info = init_distributed(device.type)
    if info.enabled and device.type == "cuda":
        device = torch.device("cuda", info.local_rank)
        torch.cuda.set_device(device)
    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    amp = torch.bfloat16 if (cfg.amp == "bf16" or (cfg.amp == "auto" and device.type == "cuda")) else None
    channels_last = cfg.channels_last and device.type == "cuda"
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    try:
        if is_complete_run(out):
            return out
        train_src, val_src = resolve_splits(data, val)
        train_ds = StackDataset.from_folder(train_src, cfg.preprocess, progress=cfg.progress and info.is_main)
        val_ds = StackDataset.from_folder(val_src, cfg.preprocess, progress=cfg.progress and info.is_main)
        if info.is_main:  # the run folder appears only once the data is known good
            out.mkdir(parents=True, exist_ok=True)
            cfg.save(out / "config.yaml")
        seed_everything(cfg.seed)
        model = create_model(cfg.model, **cfg.model_kwargs).to(device)
        if cfg.init_weights:
            load_weights(model, _weights_file(cfg.init_weights))
        if channels_last:
            model = model.to(memory_format=torch.channels_last)
        if not isinstance(model, TwoStageNet):
            _train_single(model, cfg, train_ds, val_ds, out, device, info, amp, channels_last, snapshots=True)
            return out
        # ---- two-stage: Seg stage (trained here or reused), then the Ref stage
        s1_dir = Path(cfg.stage1_run) if cfg.stage1_run else out / "stage1"
        if cfg.stage1_run:
            if not is_complete_run(s1_dir):
                raise InputError(s1_dir, "stage1_run is not a complete run folder (model.json with complete: true)")
            meta = json.loads((s1_dir / "model.json").read_text())
            if meta["model"] != stage1_name(cfg.model):
                raise InputError(s1_dir, f"stage1_run is a {meta['model']} run; {cfg.model} needs {stage1_name(cfg.model)}")
        elif not is_complete_run(s1_dir):
            seed_everything(cfg.seed)
            seg = create_model(stage1_name(cfg.model), **cfg.model_kwargs).to(device)
            if cfg.init_weights:  # fine-tune the Seg stage from the given two-stage weights too
                seg.load_state_dict(model.seg.state_dict())
            if channels_last:
                seg = seg.to(memory_format=torch.channels_last)
            _train_single(seg, cfg, train_ds, val_ds, s1_dir, device, info, amp, channels_last, snapshots=True)
        load_weights(model.seg, s1_dir / "weights.safetensors")
        model.seg.requires_grad_(False)
        sources = [read_tensors(s1_dir / "weights.safetensors")]
        if cfg.ref_inputs in ("snapshots", "online"):
            sources += [read_tensors(p) for p in sorted((s1_dir / "snapshots").glob("epoch_*.safetensors"))]
        elif cfg.ref_inputs != "final":
            raise CmrsegError(f"ref_inputs must be 'snapshots', 'online' or 'final', got {cfg.ref_inputs!r}")
        sources = [{k: v.to(device) for k, v in sd.items()} for sd in sources]
        t_probs = time.perf_counter()
        stage = RefineStage(model, sources, train_ds, val_ds, cfg, device, amp, channels_last,
                            progress=cfg.progress and info.is_main, online=cfg.ref_inputs == "online")
        prob_seconds = time.perf_counter() - t_probs
        state = _fit(stage, val_ds, cfg, out, device, info, False, model, cfg.model)
        state["wall_seconds"] = state.get("wall_seconds", 0.0) + prob_seconds
        s1_seconds = json.loads((s1_dir / "model.json").read_text()).get("train_seconds")
        if info.is_main:
            if (out / "best.safetensors").exists():
                load_weights(model, out / "best.safetensors")
            _finish(out, model, cfg, state, {"stage1_run": str(s1_dir), "ref_inputs": cfg.ref_inputs,
                                             "ref_input_sources": len(sources), "stage1_train_seconds": s1_seconds,
                                             "device": str(device)})
        barrier(info)
        return out
    finally:
        cleanup(info)
