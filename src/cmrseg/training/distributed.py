"""torch.distributed helpers for ``torchrun --nproc_per_node N -m cmrseg train ...``.

One process per device; NCCL on CUDA, gloo on CPU. Rank 0 validates, logs and writes
checkpoints; the others wait at barriers. Gradients are averaged by DistributedDataParallel,
so N processes with B stacks each behave like one process with N*B stacks.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(device_kind: str) -> DistInfo:
    """Join the process group torchrun describes in the environment (no-op without it)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    info = DistInfo(int(os.environ["RANK"]), world, int(os.environ.get("LOCAL_RANK", "0")))
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device_kind == "cuda" else "gloo")
    return info


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()


def cleanup(info: DistInfo) -> None:
    if info.enabled and dist.is_initialized():
        dist.destroy_process_group()


def agree_on(value: int, device: torch.device, info: DistInfo) -> int:
    """Under DDP every rank must take the same decision (e.g. the number of epochs): rank 0's."""
    if not info.enabled:
        return value
    t = torch.tensor([value], device=device)
    dist.broadcast(t, src=0)
    return int(t.item())
