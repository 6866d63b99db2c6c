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
    private helpers; their absence means no. With torch's kernels held to AVX2
    (``ATEN_CPU_CAPABILITY=avx2``, :func:`cpu_kind`) the CPU counts as one without."""
    checks = (getattr(torch.cpu, "_is_amx_tile_supported", None), getattr(torch.cpu, "_is_avx512_bf16_supported", None))
    if _capability() in ("avx2", "default", "avx"):  # torch's kernels held below AVX-512 (ATEN_CPU_CAPABILITY)
        return False
    try:
        return any(bool(c()) for c in checks if c is not None)
    except Exception:
        return False


def cpu_description() -> str:
    """The CPU's model name and what bf16 costs on it, for benchmark records: e.g. ``AMD EPYC
    7R13 Processor (bf16 emulated)``. ``platform.processor()`` is empty on most Linux systems,
    so the name is read from ``/proc/cpuinfo`` where there is one."""
    import platform

    name = platform.processor() or platform.machine()
    fields = {}
    try:
        for line in open("/proc/cpuinfo", encoding="utf-8", errors="replace"):
            key, _, value = line.partition(":")
            if key.strip() in ("model name", "cpu family", "model"):
                fields.setdefault(key.strip(), value.strip())
            if not line.strip() and fields:  # the first processor's block is enough
                break
    except OSError:
        pass
    name = fields.get("model name", name)
    if not any(ch.isdigit() for ch in name) and "cpu family" in fields:
        # a virtual machine's bare "AMD EPYC": the family and model tell Zen 3 (25/1) from Zen 5 (26/2)
        name += f" family {fields['cpu family']} model {fields.get('model', '?')}"
    return f"{name} (bf16 {'native' if cpu_has_fast_bf16() else 'emulated'})"


def cpu_kind() -> str:
    """``amx``, ``avx512-bf16``, ``avx512`` or ``avx2`` (else ``other``): the instruction sets
    that decide what the networks cost on this CPU (bf16 native with AMX or AVX512-BF16, float32
    otherwise), so benchmarks keep one result per kind (``benchmarks/results/cpu_<kind>/``).
    ``ATEN_CPU_CAPABILITY=avx2`` makes a newer CPU count as an AVX2 one (torch then runs its AVX2
    kernels; set ``ONEDNN_MAX_CPU_ISA=AVX2`` too for oneDNN's convolutions)."""
    capability = _capability()
    if "avx512" in capability:
        if getattr(torch.cpu, "_is_amx_tile_supported", lambda: False)():
            return "amx"
        return "avx512-bf16" if getattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)() else "avx512"
    return "avx2" if "avx2" in capability else "other"


def _capability() -> str:
    """torch's CPU capability (``AVX512``, ``AVX2``, ...; ``ATEN_CPU_CAPABILITY`` lowers it), lower case."""
    return str(getattr(torch.backends.cpu, "get_cpu_capability", lambda: "")()).lower()
