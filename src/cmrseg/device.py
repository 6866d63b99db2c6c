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


def to_device(t: torch.Tensor, device: torch.device | str) -> torch.Tensor:
    """A host tensor on ``device`` without stopping the host: to CUDA it is copied from pinned
    memory with ``non_blocking`` (a plain ``.to("cuda")`` of pageable memory waits until the GPU
    has finished everything queued before it, which in a training step idles the GPU while
    Python queues the next kernels). The caching host allocator keeps the pinned buffer until
    the copy has run."""
    device = torch.device(device)
    if device.type != "cuda" or t.device.type != "cpu":
        return t.to(device)
    return t.pin_memory().to(device, non_blocking=True)


def cpu_has_fast_bf16() -> bool:
    """Whether this CPU computes bf16 natively (AMX tiles or AVX512-BF16): there bf16 autocast
    is faster than float32 and labels 99.99 % of val voxels the same (docs/RESULTS.md); elsewhere
    it is emulated and slower (training ``seg_as``: 17.7 against 38.6 slices/s in float32 on a
    2-core AVX-512 CPU without it), so ``auto`` keeps float32. torch exposes the check only as
    private helpers; their absence means no."""
    checks = (getattr(torch.cpu, "_is_amx_tile_supported", None), getattr(torch.cpu, "_is_avx512_bf16_supported", None))
    try:
        return any(bool(c()) for c in checks if c is not None)
    except Exception:
        return False
