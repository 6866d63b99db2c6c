"""Two-stage assembly: the Seg stage (trained into ``out/stage1`` or an earlier run reused,
``seg_stage_run``), frozen, then the Ref stage trained on the Seg stage's probability maps
(``ref_inputs``: the final Seg weights alone, or snapshots from along Seg training as well,
cached once per source or computed online on every augmented batch)."""

from __future__ import annotations

import copy
import time
from pathlib import Path

import torch
from tqdm.auto import tqdm

from cmrseg.checkpoint import load_weights, read_tensors
from cmrseg.data.dataset import StackDataset
from cmrseg.errors import CmrsegError, InputError
from cmrseg.models import TwoStageNet, create_model
from cmrseg.models.centred import heart_centred_forward
from cmrseg.models.registry import seg_stage_name
from cmrseg.training.config import TrainConfig
from cmrseg.training.context import TrainContext
from cmrseg.training.loop import train_one_stage
from cmrseg.training.run_folder import is_complete_run, run_meta
from cmrseg.training.stages import ImageStage, RefineStage, RefInputs, seed_everything


def train_two_stage(model: TwoStageNet, cfg: TrainConfig, train_ds: StackDataset, val_ds: StackDataset, out: Path,
                    ctx: TrainContext) -> None:
    s1_dir = seg_stage_run(model, cfg, train_ds, val_ds, out, ctx)
    load_weights(model.seg, s1_dir / "weights.safetensors")
    model.seg.requires_grad_(False)
    t0 = time.perf_counter()
    inputs = ref_inputs(model, s1_dir, train_ds, val_ds, cfg, ctx)
    stage = RefineStage(model, train_ds, cfg, ctx, inputs)
    train_one_stage(model, stage, val_ds, cfg, out, ctx, snapshots=False, setup_seconds=time.perf_counter() - t0,
                    extra={"seg_stage_run": str(s1_dir), "ref_inputs": cfg.ref_inputs,
                           "ref_input_sources": len(inputs.sources), "seg_stage_train_seconds": run_meta(s1_dir).get("train_seconds")})


def seg_stage_run(model: TwoStageNet, cfg: TrainConfig, train_ds: StackDataset, val_ds: StackDataset, out: Path,
                  ctx: TrainContext) -> Path:
    """The complete run of ``model``'s Seg stage: ``cfg.seg_stage_run`` (checked), else
    ``out/stage1``, trained now unless complete (fine-tuned from ``model.seg`` when the
    two-stage model was given ``init_weights``)."""
    if cfg.seg_stage_run:
        s1_dir = Path(cfg.seg_stage_run)
        if not is_complete_run(s1_dir):
            raise InputError(s1_dir, "seg_stage_run is not a complete run folder (model.json with complete: true)")
        if (found := run_meta(s1_dir)["model"]) != seg_stage_name(cfg.model):
            raise InputError(s1_dir, f"seg_stage_run is a {found} run; {cfg.model} needs {seg_stage_name(cfg.model)}")
        return s1_dir
    s1_dir = out / "stage1"
    if not is_complete_run(s1_dir):
        seed_everything(cfg.seed)
        seg = create_model(seg_stage_name(cfg.model), **cfg.model_kwargs).to(ctx.device)
        if cfg.init_weights:
            seg.load_state_dict(model.seg.state_dict())
        if ctx.channels_last:
            seg = seg.to(memory_format=torch.channels_last)
        train_one_stage(seg, ImageStage(seg, train_ds, cfg, ctx), val_ds, cfg, s1_dir, ctx, snapshots=True)
    return s1_dir


def ref_inputs(model: TwoStageNet, s1_dir: Path, train_ds: StackDataset, val_ds: StackDataset, cfg: TrainConfig,
               ctx: TrainContext) -> RefInputs:
    """The Seg-stage sources named by ``cfg.ref_inputs`` and their probability maps."""
    sources = [read_tensors(s1_dir / "weights.safetensors")]
    if cfg.ref_inputs in ("snapshots", "online"):
        sources += [read_tensors(p) for p in sorted((s1_dir / "snapshots").glob("epoch_*.safetensors"))]
    elif cfg.ref_inputs != "final":
        raise CmrsegError(f"ref_inputs must be 'snapshots', 'online' or 'final', got {cfg.ref_inputs!r}")
    sources = [{k: v.to(ctx.device) for k, v in sd.items()} for sd in sources]
    seg = copy.deepcopy(model.seg)  # model.seg keeps the final weights
    progress = cfg.progress and ctx.is_main
    train_probs = None if cfg.ref_inputs == "online" else [
        seg_probabilities(seg, sd, train_ds, ctx, cfg.inference_crop, progress) for sd in sources]
    val_probs = None if cfg.inference_crop else seg_probabilities(seg, sources[0], val_ds, ctx, None, progress)
    return RefInputs(sources, train_probs, val_probs)


@torch.no_grad()
def seg_probabilities(seg: torch.nn.Module, state_dict: dict, ds: StackDataset, ctx: TrainContext,
                      inference_crop: int | None, progress: bool) -> list[torch.Tensor]:
    """float16 probability maps of ``seg`` with ``state_dict`` on every stack of ``ds``, as at
    inference (heart-centred when ``inference_crop`` is set)."""
    seg.load_state_dict(state_dict)
    seg.eval()
    out = []
    for rec in tqdm(ds.records, desc="Seg-stage probabilities", disable=not progress, leave=False):
        x = torch.from_numpy(rec.image).to(ctx.device).float().div_(255)[:, None]
        with ctx.autocast():
            p = heart_centred_forward(seg, ctx.memory_format(x), inference_crop).logits.float().softmax(1)
        out.append(p.to(torch.float16))
    return out
