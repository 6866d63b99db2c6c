"""A run folder: what ``cmrseg train`` leaves for inference (``model.json`` +
``weights.safetensors``) and for itself (``config.yaml``, ``last/`` to resume), and the
data splits a run trains and selects on."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import torch.nn as nn

from cmrseg import __version__
from cmrseg.atomic import write_json
from cmrseg.checkpoint import save_weights
from cmrseg.data.dataset import XZ_SUFFIX, StackDataset
from cmrseg.data.preprocessing import PreprocessConfig
from cmrseg.errors import InputError
from cmrseg.inference.predictor import WEIGHTS_DIR, shipped_models
from cmrseg.labels import label_map_json
from cmrseg.models import DetSegNet
from cmrseg.training.config import TrainConfig

RUN_FORMAT = "cmrseg-run/1"


#: the ACDC release's own split folders (``database/training``, ``database/testing``), taken for
#: train and val where ``train/`` and ``val/`` are absent
RELEASE_SPLITS = ("training", "testing")


def resolve_splits(data: str | Path, val: str | Path | None = None) -> tuple[Path, Path]:
    """``data`` holds ``train`` and ``val`` (folders or ``.npz`` / ``.npz.xz`` caches), unless
    ``val`` is given; the ACDC release as distributed (``training/`` and ``testing/`` patient
    folders) is taken as train and val, and said so once."""
    data = Path(data)
    if val is not None:
        return data, Path(val)
    release = [data / name for name in RELEASE_SPLITS]
    if not (data / "train").exists() and all(p.is_dir() for p in release):
        print(f"cmrseg: note: {data} is the ACDC release layout: training/ trains, testing/ selects the best epoch "
              "(give --val for another split)", file=sys.stderr)
        return release[0], release[1]
    for name in ("train", "train.npz", "train" + XZ_SUFFIX):
        if (data / name).exists():
            train = data / name
            break
    else:
        raise InputError(data, "no 'train' split inside (give --val, or a folder with train/ and val/)")
    for name in ("val", "val.npz", "val" + XZ_SUFFIX):
        if (data / name).exists():
            return train, data / name
    raise InputError(data, "no 'val' split inside (needed to select the best epoch)")


def split_caches(data: str | Path, folder: Path, preprocessings: set[PreprocessConfig | None],
                 labels: str | None = None, progress: bool = True) -> Path:
    """Preprocess ``data``'s train and val splits once for several runs: ``folder`` then holds
    ``train.npz`` and ``val.npz`` (:meth:`StackDataset.save_cache`, uncompressed: read in a
    fraction of a second), which the runs read instead of ``data`` (the same uint8 stacks they
    would make themselves; a cache made for another canvas is resampled to this one, as a run
    would). ``preprocessings``: the runs' preprocessing (None for a run whose config does not
    resolve: it fails on its own).
    Returns the data for the runs: ``folder``, or ``data`` itself when the runs preprocess
    differently. A cache whose sources (names, sizes, times), preprocessing and labels are
    unchanged is reused, else rebuilt."""
    data = Path(data)
    srcs = resolve_splits(data)
    preprocessings = preprocessings - {None}
    if len(preprocessings) != 1:
        return data
    (preprocess,) = preprocessings
    source = {"train": _fingerprint(srcs[0]), "val": _fingerprint(srcs[1]), "preprocess": preprocess.to_dict(),
              "labels": labels}
    stamp = folder / "source.json"
    if stamp.is_file() and json.loads(stamp.read_text()) == json.loads(json.dumps(source)):  # tuples as lists
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    stamp.unlink(missing_ok=True)  # a cache being rebuilt is never taken for a finished one
    for name, src in zip(("train", "val"), srcs):
        ds = StackDataset.from_folder(src, preprocess, progress=progress, labels=labels)
        ds.save_cache(folder / f"{name}.npz", compression="none")
    write_json(stamp, source)
    return folder


def remove_split_caches(folder: Path) -> None:
    """Delete what :func:`split_caches` wrote in ``folder``, and ``folder`` if that leaves it
    empty: nothing else there is touched."""
    for name in ("source.json", "train.npz", "val.npz"):  # the stamp first: no reuse of a half-removed cache
        (folder / name).unlink(missing_ok=True)
    try:
        folder.rmdir()
    except OSError:  # something else lives there
        pass


def _fingerprint(path: Path) -> list:
    """(relative path, size, modification time) of ``path`` or of every file under it."""
    files = [path] if path.is_file() else [f for f in path.rglob("*") if f.is_file()]
    return sorted([str(f.relative_to(path)) if f != path else f.name, st.st_size, st.st_mtime_ns]
                  for f in files if (st := f.stat()))


def run_metadata(model: nn.Module, cfg: TrainConfig, extra: dict | None = None) -> dict:
    return {
        "format": RUN_FORMAT,
        "model": model.cmrseg_name,
        "model_kwargs": model.cmrseg_kwargs,
        "preprocess": cfg.preprocess.to_dict(),
        "inference_crop": None if isinstance(model, DetSegNet) else cfg.inference_crop,
        "label_map": label_map_json(),
        "protocol": cfg.protocol,
        "cmrseg_version": __version__,
        **(extra or {}),
    }


def finish_run(out: Path, model: nn.Module, cfg: TrainConfig, state: dict, extra: dict | None = None) -> None:
    """Make ``out`` a complete run: best weights -> weights.safetensors, model.json."""
    best = out / "best.safetensors"
    if best.exists():
        os.replace(best, out / "weights.safetensors")
    elif not (out / "weights.safetensors").exists():
        save_weights(model, out / "weights.safetensors")
    meta = run_metadata(model, cfg, {"trained_epochs": state["epoch"], "planned_epochs": state.get("planned_epochs"),
                                     "time_budget_s": cfg.time_budget_s, "best_epoch": state["best_epoch"],
                                     "train_seconds": round(state.get("wall_seconds", 0.0), 1),
                                     "val_score": state["best_score"],
                                     "selection": "mean of base/mid/apex average Dice on val (canvas space)",
                                     "complete": True, **(extra or {})})
    write_json(out / "model.json", meta)


def weights_file(path: str | Path) -> Path:
    """The weights of ``init_weights``: a ``.safetensors`` file, a run folder's weights, or a
    shipped model's (by name)."""
    if str(path) in shipped_models() and not Path(path).exists():
        path = WEIGHTS_DIR / str(path)
    path = Path(path)
    if path.is_dir():
        path = path / "weights.safetensors"
    if not path.is_file():
        raise InputError(path, "init_weights: no such weights file")
    return path


def is_complete_run(path: Path) -> bool:
    """Whether ``path`` holds a run that finished (its ``model.json`` says ``complete``)."""
    try:
        return bool(json.loads((path / "model.json").read_text()).get("complete", False))
    except (OSError, ValueError):
        return False


def run_meta(path: Path) -> dict:
    """The ``model.json`` of a complete run folder."""
    return json.loads((path / "model.json").read_text())
