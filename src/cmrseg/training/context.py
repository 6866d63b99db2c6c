"""Where and how a run trains: device, process group, mixed precision, memory format."""

from __future__ import annotations

import sys
from dataclasses import dataclass

import torch

from cmrseg.device import cpu_has_fast_bf16, resolve_device
from cmrseg.errors import CmrsegError
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
    if amp is not None and device.type == "cpu" and not cpu_has_fast_bf16():
        check_emulated_bf16(cfg)
    # channels-last on the CPU: a lone step faster, whole epochs not (docs/decisions.md, "Investigations")
    return TrainContext(device, info, amp, cfg.channels_last and device.type == "cuda")


def check_emulated_bf16(cfg: TrainConfig) -> None:
    """bf16 autocast on a CPU without native bf16 (AMX, AVX512-BF16): with ``compile`` refused
    (inductor's kernels there gave NaN gradients from the first step of ``seg_as``, torch 2.13,
    docs/RESULTS.md), without it a note that it is slower than float32 there."""
    if cfg.compile:
        raise CmrsegError("amp=bf16 with compile on a CPU without native bf16 (AMX, AVX512-BF16): compiled kernels "
                          "give NaN gradients there; set compile=false or amp=off")
    print("cmrseg: note: this CPU has no native bf16 (AMX, AVX512-BF16); amp=bf16 is emulated here and trains "
          "about half as fast as amp=off", file=sys.stderr)
