"""A run's training log: one CSV row per epoch (fixed columns, empty where an epoch has no
value) and the same numbers as TensorBoard scalars, written by rank 0 only."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from cmrseg.atomic import write_text

LOG_COLUMNS = ["epoch", "stage", "lr", "loss", "seg", "cls", "det", "soft", "hard", "seconds", "slices_per_s", "val_score",
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

    def keep_epochs(self, last_epoch: int) -> None:
        """Drop the rows after ``last_epoch`` (the resumed checkpoint's epoch): a run killed after
        logging an epoch but before checkpointing it trains that epoch again and logs it once."""
        if not self.enabled or not self.path.exists():
            return
        lines = self.path.read_text().splitlines(keepends=True)
        if not lines or not lines[0].endswith("\n"):  # killed while writing the header
            self.path.unlink()
            return

        def kept(line: str) -> bool:  # a line without its newline was cut by a kill
            epoch = line.split(",", 1)[0]
            return line.endswith("\n") and epoch.isdigit() and int(epoch) <= last_epoch

        rows = [line for line in lines[1:] if kept(line)]
        if len(rows) != len(lines) - 1:
            write_text(self.path, lines[0] + "".join(rows))

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
