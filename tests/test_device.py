"""What the CPU is taken for: its kind for benchmark records and the ``auto`` precision."""

import torch

from cmrseg import device


def _cpu(monkeypatch, capability: str, amx: bool, bf16: bool) -> None:
    monkeypatch.setattr(device, "_capability", lambda: capability)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx, raising=False)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: bf16, raising=False)


def test_each_cpu_kind_and_whether_bf16_is_native(monkeypatch):
    for capability, amx, bf16, kind, native in (("avx512", True, True, "amx", True),
                                                ("avx512", False, True, "avx512-bf16", True),
                                                ("avx512", False, False, "avx512", False),
                                                ("avx2", False, False, "avx2", False),
                                                # a Zen 4 held to AVX2 (ATEN_CPU_CAPABILITY=avx2): an AVX2 CPU
                                                ("avx2", False, True, "avx2", False),
                                                ("default", False, False, "other", False)):
        _cpu(monkeypatch, capability, amx, bf16)
        assert device.cpu_kind() == kind, capability
        assert device.cpu_has_fast_bf16() is native, (capability, amx, bf16)
        assert device.cpu_description().endswith("(bf16 native)" if native else "(bf16 emulated)")
