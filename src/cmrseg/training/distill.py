"""Distillation (issue 35): one student network learns what a teacher (the shipped ensemble of
two proposed models, with its flips) outputs, so users get the teacher's masks from one forward
pass.

The teacher runs once on the clean training images, on the canvas, exactly as ``cmrseg
segment`` runs it (heart-centred, every flip, gate, members averaged:
:meth:`~cmrseg.inference.predictor.Predictor.predict_canvas`); its class probabilities are kept
as uint8 (``round(255 p)``, 194 MB for ACDC's 1,312 training slices on a 192-pixel canvas) in
``RUN/teacher/targets.npz`` and reused by a resumed run. The student sees each training stack
augmented (geometry applied to image, labels and targets alike; the vendor-like shifts to its
image only: :mod:`cmrseg.data.vendor_shifts`) and learns the teacher's targets beside the
experts' labels (:class:`~cmrseg.training.losses.DistillationLoss`): what the teacher says of the clean
image, the student learns to say of the shifted one.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from cmrseg.atomic import atomic_path, write_json
from cmrseg.data.dataset import StackDataset
from cmrseg.errors import CmrsegError
from cmrseg.inference.ensemble import load_predictor
from cmrseg.inference.options import InferenceOptions
from cmrseg.models.unet import SegmentationNet
from cmrseg.training.config import TrainConfig
from cmrseg.training.context import TrainContext
from cmrseg.training.distributed import barrier

TARGETS = "targets.npz"


def _stamp(cfg: TrainConfig, predictor, ds: StackDataset) -> dict:
    """What the cached targets were made from: teacher, canvas and every training stack."""
    return {"teacher": str(predictor.meta.get("path")), "tta": bool(predictor.tta),
            "preprocess": cfg.preprocess.to_dict(),
            "stacks": [[r.name, list(r.image.shape)] for r in ds.records]}


def check_student(model: torch.nn.Module) -> None:
    """A student is one network without a classifier (``seg_ss`` or ``seg_as``): it learns the
    teacher's class probabilities, which say nothing a classifier could learn from."""
    if not isinstance(model, SegmentationNet) or model.classifier is not None:
        raise CmrsegError(f"a distilled student must be one network without a classifier (seg_ss or seg_as), not "
                          f"{getattr(model, 'cmrseg_name', type(model).__name__)}")


def teacher_targets(cfg: TrainConfig, train_ds: StackDataset, out: Path, ctx: TrainContext) -> list[torch.Tensor]:
    """uint8 ``[S, 4, C, C]`` per training stack: the teacher's canvas probabilities x 255,
    from ``out/teacher`` when made for this teacher, canvas and data, else computed now (on the
    main process; the others wait for the file)."""
    predictor = load_predictor(cfg.teacher, InferenceOptions(device=str(ctx.device)))
    if predictor.preprocess != cfg.preprocess:
        raise CmrsegError(f"teacher {cfg.teacher} works on another canvas ({predictor.preprocess}) than the student "
                          f"({cfg.preprocess}); give the student the teacher's preprocess")
    folder = out / "teacher"
    stamp = json.loads(json.dumps(_stamp(cfg, predictor, train_ds)))  # tuples as lists, as read back
    if ctx.is_main and not _cached(folder, stamp):
        _compute(predictor, train_ds, folder, stamp, cfg.progress)
    barrier(ctx.dist)
    with np.load(folder / TARGETS) as data:
        return [torch.from_numpy(data[f"stack{i}"]) for i in range(len(train_ds.records))]


def _cached(folder: Path, stamp: dict) -> bool:
    try:
        return json.loads((folder / "stamp.json").read_text()) == stamp and (folder / TARGETS).is_file()
    except (OSError, ValueError):
        return False


@torch.no_grad()
def _compute(predictor, ds: StackDataset, folder: Path, stamp: dict, progress: bool) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "stamp.json").unlink(missing_ok=True)  # a half-made cache is never taken for a finished one
    arrays = {}
    for i, rec in enumerate(tqdm(ds.records, desc="teacher targets", disable=not progress, leave=False)):
        x = torch.from_numpy(rec.image).float().div_(255)[:, None]
        probs, _ = predictor.predict_canvas(x)
        arrays[f"stack{i}"] = probs.mul(255).round_().clamp_(0, 255).to(torch.uint8).cpu().numpy()
    with atomic_path(folder / TARGETS) as tmp:
        with open(tmp, "wb") as fh:
            np.savez(fh, **arrays)
    write_json(folder / "stamp.json", stamp)


def as_probabilities(targets: torch.Tensor) -> torch.Tensor:
    """uint8 targets ``[N, 4, H, W]`` -> float probabilities summing to 1 per pixel."""
    p = targets.float()
    return p / p.sum(dim=1, keepdim=True).clamp(min=1.0)
