"""A run's training log: one CSV row per epoch (fixed columns, empty where an epoch has no
value) and the same numbers as TensorBoard scalars, written by rank 0 only."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

LOG_COLUMNS = ["epoch", "stage", "lr", "loss", "seg", "cls", "det", "seconds", "slices_per_s", "val_score",
               "val_base", "val_mid", "val_apex", "val_volume"]


class RunLog:
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
