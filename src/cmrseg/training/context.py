"""Where and how a run trains: device, process group, mixed precision, memory format."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from cmrseg.device import resolve_device
from cmrseg.training.config import TrainConfig
from cmrseg.training.distributed import DistInfo, init_distributed


@dataclass
class TrainContext:
    device: torch.device
    dist: DistInfo
    amp: torch.dtype | None  # autocast dtype, None for float32
    channels_last: bool

    @property
    def is_main(self) -> bool:
        return self.dist.is_main

    def autocast(self):
        if self.amp is None:
            return torch.autocast(self.device.type, enabled=False)
        return torch.autocast(self.device.type, dtype=self.amp)

    def memory_format(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` in the training memory format (channels-last where enabled)."""
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x


def setup_context(cfg: TrainConfig) -> TrainContext:
    """Resolve the device, join torchrun's process group (if any) and set the CUDA math modes."""
    device = resolve_device(cfg.device)
    info = init_distributed(device.type)
    if info.enabled and device.type == "cuda":
        device = torch.device("cuda", info.local_rank)
        torch.cuda.set_device(device)
    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    amp = torch.bfloat16 if (cfg.amp == "bf16" or (cfg.amp == "auto" and device.type == "cuda")) else None
    return TrainContext(device, info, amp, cfg.channels_last and device.type == "cuda")
