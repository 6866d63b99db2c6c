"""How long a stage trains and at what learning rate: warm-up + cosine over the planned
epochs, and the plan itself, fitted to a wall-clock budget (``time_budget_s``) from measured
epoch and validation times."""

from __future__ import annotations

import math

import numpy as np

from cmrseg.training.config import TrainConfig

PLAN_AFTER_EPOCHS = 2  # first plan of a time-budgeted stage; re-planned at every validation


def lr_factor(cfg: TrainConfig, steps_per_epoch: int, plan: dict):
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


def budget_epochs(cfg: TrainConfig, done: int, elapsed: float, epoch_seconds: list[float],
                  val_seconds: float, planned: int | None = None) -> int:
    """Epochs that fit ``cfg.time_budget_s`` (at most ``cfg.epochs``), for what is left of the
    budget after ``elapsed`` seconds: the median time of the epochs after the first (the first
    carries the device's warm-up: 10 s against 1.2 s later on an H200) plus the validation time
    spread over ``val_every`` epochs. A spent budget plans one more epoch (so the learning rate
    ends at its floor), then stops: with ``planned``, the plan in force, ending at ``done``, it
    adds none, however often the stage is re-planned (``val_every: 1``)."""
    timed = epoch_seconds[1:] or epoch_seconds
    per_epoch = float(np.median(timed[-20:])) + val_seconds / max(1, cfg.val_every)
    fit = done + int(max(0.0, cfg.time_budget_s - elapsed) / max(per_epoch, 1e-9))
    least = done if planned is not None and planned <= done else done + 1
    return int(min(cfg.epochs, max(least, fit)))
