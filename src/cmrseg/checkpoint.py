"""Weights and training state in safe formats: safetensors for tensors, JSON for the rest.

Nothing here ever unpickles: loading a checkpoint cannot run code. Used by training (save,
resume) and inference (load), hence at the package top level.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from cmrseg.atomic import atomic_path, fsync_path, write_text
from cmrseg.errors import InputError


def state_dict_of(module: nn.Module) -> dict[str, torch.Tensor]:
    """The module's state dict without a DistributedDataParallel / compile wrapper prefix."""
    inner = getattr(module, "module", module)
    inner = getattr(inner, "_orig_mod", inner)
    return {k: v.detach().contiguous().cpu() for k, v in inner.state_dict().items()}


def save_weights(module: nn.Module | dict, path: str | Path, dtype: torch.dtype | None = None,
                 metadata: dict[str, str] | None = None) -> Path:
    """Write weights to ``.safetensors`` (floating tensors cast to ``dtype`` if given). Atomic."""
    from safetensors.torch import save_file

    tensors = module if isinstance(module, dict) else state_dict_of(module)
    if dtype is not None:
        tensors = {k: (v.to(dtype) if v.is_floating_point() else v) for k, v in tensors.items()}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=metadata)
    return Path(path)


def half_precision(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Floating tensors as float16 for shipping, except the normalisation statistics
    (``running_mean`` / ``running_var``), which stay float32: small variances lose precision."""
    return {k: (v.half() if v.is_floating_point() and "running_" not in k else v) for k, v in tensors.items()}


def stage_tensors(tensors: dict[str, torch.Tensor], stage: str = "seg") -> dict[str, torch.Tensor]:
    """One stage's tensors of a two-stage model's weights (keys ``<stage>.*``), without the
    prefix and in float32: what a Seg-stage run starts from when it continues a two-stage model."""
    prefix = stage + "."
    return {k[len(prefix):]: v.float() if v.is_floating_point() else v
            for k, v in tensors.items() if k.startswith(prefix)}


def read_tensors(path: str | Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise InputError(path, "weights file not found")
    try:
        return load_file(str(path))
    except Exception as exc:
        raise InputError(path, f"not a valid safetensors file ({type(exc).__name__}: {exc})") from None


def tensor_shapes(path: str | Path) -> dict[str, tuple[int, ...]]:
    """Each tensor's shape from a safetensors file's header, without reading the tensors."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise InputError(path, "weights file not found")
    try:
        with safe_open(str(path), framework="pt") as fh:
            return {k: tuple(fh.get_slice(k).get_shape()) for k in fh.keys()}
    except Exception as exc:
        raise InputError(path, f"not a valid safetensors file ({type(exc).__name__}: {exc})") from None


def load_weights(module: nn.Module, path: str | Path, prefix: str = "", strict: bool = True) -> None:
    """Load safetensors weights into ``module`` (cast to the module's dtypes). ``prefix``
    selects a sub-module's entries (``"seg."``)."""
    tensors = read_tensors(path)
    if prefix:
        tensors = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
    target = module.state_dict()
    cast = {k: (v.to(target[k].dtype) if k in target else v) for k, v in tensors.items()}
    try:
        missing, unexpected = module.load_state_dict(cast, strict=False)
    except RuntimeError as exc:  # shape mismatch: other widths or another model
        raise InputError(path, f"weights do not fit the model ({str(exc).splitlines()[-1].strip()})") from None
    if strict and (missing or unexpected):
        raise InputError(path, f"weights do not fit the model (missing {missing[:3]}, unexpected {unexpected[:3]})")


# ----------------------------------------------------------------------------- optimizer

def _split_optimizer_state(opt_state: dict) -> tuple[dict[str, torch.Tensor], dict]:
    tensors: dict[str, torch.Tensor] = {}
    plain: dict[str, Any] = {"param_groups": opt_state["param_groups"], "state": {}}
    for pid, st in opt_state["state"].items():
        entry = {}
        for key, val in st.items():
            if torch.is_tensor(val):
                tensors[f"{pid}.{key}"] = val.detach().contiguous().cpu()
                entry[key] = "__tensor__"
            else:
                entry[key] = val
        plain["state"][str(pid)] = entry
    return tensors, plain


def _join_optimizer_state(tensors: dict[str, torch.Tensor], plain: dict) -> dict:
    state = {}
    for pid, entry in plain["state"].items():
        state[int(pid)] = {k: (tensors[f"{pid}.{k}"] if v == "__tensor__" else v) for k, v in entry.items()}
    return {"state": state, "param_groups": plain["param_groups"]}


def save_training_state(folder: str | Path, model: nn.Module, optimizer: torch.optim.Optimizer,
                        scheduler: Any, state: dict) -> None:
    """Write ``folder/`` = {model.safetensors, optimizer.safetensors, state.json} as one unit:
    built in a temporary folder, then swapped in, so a kill leaves either the old or the new
    checkpoint complete."""
    folder = Path(folder)
    tmp = folder.with_name(folder.name + ".tmp")
    old = folder.with_name(folder.name + ".old")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_weights(model, tmp / "model.safetensors")
    opt_tensors, opt_plain = _split_optimizer_state(optimizer.state_dict())
    save_weights(opt_tensors, tmp / "optimizer.safetensors")
    payload = {"state": state, "optimizer": opt_plain,
               "scheduler": scheduler.state_dict() if scheduler is not None else None}
    write_text(tmp / "state.json", json.dumps(payload, default=float))
    fsync_path(tmp, directory=True)
    if folder.exists():
        shutil.rmtree(old, ignore_errors=True)
        os.replace(folder, old)
    os.replace(tmp, folder)
    fsync_path(folder.parent, directory=True)
    shutil.rmtree(old, ignore_errors=True)


def find_training_state(folder: str | Path) -> Path | None:
    """The newest complete checkpoint folder (``folder`` or the ``.old`` left by a kill)."""
    folder = Path(folder)
    for cand in (folder, folder.with_name(folder.name + ".old")):
        if (cand / "state.json").is_file() and (cand / "model.safetensors").is_file():
            return cand
    return None


def load_training_state(folder: str | Path, model: nn.Module, optimizer: torch.optim.Optimizer,
                        scheduler: Any) -> dict:
    folder = Path(folder)
    payload = json.loads((folder / "state.json").read_text())
    inner = getattr(model, "module", model)
    load_weights(inner, folder / "model.safetensors")
    opt_tensors = read_tensors(folder / "optimizer.safetensors") if (folder / "optimizer.safetensors").stat().st_size else {}
    optimizer.load_state_dict(_join_optimizer_state(opt_tensors, payload["optimizer"]))
    if scheduler is not None and payload.get("scheduler") is not None:
        scheduler.load_state_dict(payload["scheduler"])
    return payload["state"]
