"""Which torch device a command runs on: one rule for training, inference and reproduction."""

from __future__ import annotations

import torch

from cmrseg.errors import CmrsegError


def resolve_device(spec: str | torch.device = "auto") -> torch.device:
    """``auto`` (CUDA when torch sees a GPU, else the CPU), ``cpu``, ``cuda``, ``cuda:N`` or a
    device; asking for CUDA where torch sees none is one clear error, not a CUDA traceback."""
    if isinstance(spec, str) and spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(spec)
    except RuntimeError:
        raise CmrsegError(f"unknown device {spec!r} (auto, cpu, cuda or cuda:N)") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise CmrsegError(f"--device {spec} asked for, but torch sees no CUDA device")
    return dev
