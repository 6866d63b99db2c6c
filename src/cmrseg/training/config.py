"""Training configuration: one dataclass, filled from a protocol YAML, a config file and
command-line overrides (in that order), and saved resolved into every run folder.

Protocols (``configs/protocols/``): ``paper`` (the paper's 200 epochs, 1.3 mm, its
augmentation), ``fast`` (about an hour on 2 CPU cores), ``smoke`` (seconds, for tests),
``demo`` (the phantom demo, a few minutes on 2 CPU cores).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from cmrseg.atomic import write_text
from cmrseg.data.augmentation import AugmentConfig
from cmrseg.data.preprocessing import PreprocessConfig
from cmrseg.errors import CmrsegError
from cmrseg.labels import ACDC_LABELS

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"
#: ``TrainConfig.compile``: off, on (torch's default mode), or a torch.compile mode
COMPILE_MODES = (False, True, "default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


@dataclass
class TrainConfig:
    """Everything a training run needs besides the data paths.

    Attributes:
        model: registered model name (``cmrseg.models.list_models()``).
        model_kwargs: overrides of the model defaults (widths, norm, heads, ...).
        epochs: passes over the training stacks (the paper: 200), per stage.
        batch_stacks: stacks per step for all-slice models (one stack = one time point).
        batch_slices: slices per step for single-slice models (same slices per epoch).
        lr: Adam learning rate (peak); ``warmup_epochs`` linear warm-up, then ``schedule``.
        dice_weight: soft-Dice weight added to cross-entropy (0 = the paper's CE only).
        lambda_cls: classification weight of the gated loss (the paper: 0.1).
        val_every: validate (and select the best epoch) every this many epochs.
        checkpoint_every: write the resumable checkpoint every this many epochs (and at the end).
        snapshot_fractions: points of Seg training at which weights are kept for the Ref
            stage's training inputs.
        ref_inputs: ``snapshots`` (Ref trains on Seg outputs from several points of Seg
            training, so it sees realistic errors, computed once on the plain images and then
            augmented), ``online`` (the same Seg weights, run on every augmented training
            batch, so intensity augmentation reaches the Seg outputs too) or ``final``
            (only the final Seg, cached).
        heart_crop_prob: share of training crops centred on the stack's heart (+- shift);
            the rest are centred anywhere on the canvas.
        amp: ``auto`` (bf16 autocast on CUDA), ``bf16`` or ``off``.
        channels_last: NHWC weights and activations on CUDA. Not on the CPU: there a lone
            training step is faster so (``benchmarks/bench_training.py``), whole epochs are not
            (docs/decisions.md, "Investigations").
        cudnn_benchmark: cuDNN autotuning on CUDA; ``None`` = only for batches of one shape
            (single-slice models, or ``fixed_shape``: all-slice batches otherwise vary with
            the stacks' sizes, and every new shape is tuned anew).
        fixed_shape: every training step has one shape: all-slice models get whole stacks
            packed into ``batch_slices`` slices (at least the longest stack) with the rest
            padded, the padding left out of batch statistics, attention and loss
            (``cmrseg.training.batching``; ``batch_stacks`` is then unused); single-slice
            models drop each epoch's short last batch; Det+Seg, whose crops follow each stack,
            ignores it. For cuDNN autotuning, ``compile`` and CUDA graphs; reported slices/s
            count real slices only.
        compile: ``torch.compile`` the trained network: ``false``, ``true`` (torch's default
            mode) or a torch.compile mode (``reduce-overhead``: CUDA graphs, which need
            ``fixed_shape``; ``max-autotune``, ``max-autotune-no-cudagraphs``). With
            ``fixed_shape`` the network is compiled once for its one shape, else for dynamic
            shapes. On a CPU it needs a C++ compiler; measure first (``benchmarks/bench_training.py
            --compile default``): compiling takes a minute or more.
        centred_inference: validate, compute the Ref stage's inputs and (through
            ``model.json``'s ``inference_crop``) segment heart-centred, on a crop of the
            training crop's size (``cmrseg.models.centred``); off = on the whole canvas.
        time_budget_s: seconds each stage may train: after its first epochs (timed, with one
            validation) the stage's epoch count becomes what fits, at most ``epochs``, and
            the learning-rate schedule follows. ``None`` = always ``epochs``.
        seg_stage_run: a trained Seg-stage run folder to reuse instead of training the Seg stage.
        init_weights: fine-tune: start from these weights (a run folder or a ``.safetensors``
            file of the same model and widths) instead of a random initialisation. For a
            two-stage model they initialise both stages; with ``seg_stage_run`` its Seg stage
            is that run's instead. A resumed run continues from its checkpoint instead.
        labels: the data's label value of each structure (``cmrseg train --labels``), e.g.
            ``LV=1,MYO=2,RV=3`` for M&Ms; default this project's (ACDC's) ``RV=1,MYO=2,LV=3``.
        teacher: distil a teacher into this (one-stage) model: a shipped model or ensemble name,
            or a run folder, whose class probabilities on the clean training images (with its
            flips, gate and ensemble averaging, as ``cmrseg segment`` runs it) are the student's
            soft targets; the student sees the augmented image (``cmrseg.training.distill``).
        teacher_weight: the soft targets' share of the student's loss; the experts' labels
            (cross-entropy + ``dice_weight`` x soft Dice) have the rest.
    """

    model: str = "seg_as+ref_as_mt"
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    protocol: str = "custom"
    epochs: int = 200
    batch_stacks: int = 4
    batch_slices: int = 40
    lr: float = 4e-4
    weight_decay: float = 0.0
    warmup_epochs: int = 5
    schedule: str = "cosine"
    grad_clip: float = 12.0
    dice_weight: float = 1.0
    lambda_cls: float = 0.1
    val_every: int = 5
    checkpoint_every: int = 1
    snapshot_fractions: list[float] = field(default_factory=lambda: [0.1, 0.25, 0.5])
    ref_inputs: str = "snapshots"
    heart_crop_prob: float = 0.7
    amp: str = "auto"
    channels_last: bool = True
    compile: bool | str = False
    cudnn_benchmark: bool | None = None
    fixed_shape: bool = False
    centred_inference: bool = True
    time_budget_s: float | None = None
    seed: int = 0
    device: str = "auto"
    num_threads: int | None = None
    seg_stage_run: str | None = None
    init_weights: str | None = None
    labels: str = ACDC_LABELS
    teacher: str | None = None
    teacher_weight: float = 0.7
    progress: bool = True
    preprocess: PreprocessConfig = field(default_factory=PreprocessConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """One clear line for a value that would train nothing or train wrongly (``epochs=-3``
        used to train nothing and mark the run complete)."""
        def need(ok: bool, key: str, what: str) -> None:
            if not ok:
                raise CmrsegError(f"config key {key!r} must be {what}, got {getattr(self, key)!r}")

        for key in ("epochs", "batch_stacks", "batch_slices", "val_every", "checkpoint_every"):
            value = getattr(self, key)
            need(isinstance(value, int) and not isinstance(value, bool) and value >= 1, key, "a whole number >= 1")
        need(isinstance(self.warmup_epochs, int) and self.warmup_epochs >= 0, "warmup_epochs", "a whole number >= 0")
        for key in ("lr", "weight_decay", "grad_clip", "dice_weight", "lambda_cls"):
            value = getattr(self, key)
            need(isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value >= 0,
                 key, "a number >= 0")
        need(self.schedule in ("cosine", "constant"), "schedule", "'cosine' or 'constant'")
        need(self.ref_inputs in ("snapshots", "online", "final"), "ref_inputs", "'snapshots', 'online' or 'final'")
        need(self.amp in ("auto", "bf16", "off"), "amp", "'auto', 'bf16' or 'off'")
        need(self.compile in COMPILE_MODES, "compile", f"one of {COMPILE_MODES}")
        need(not (self.compile in ("reduce-overhead", "max-autotune") and not self.fixed_shape), "compile",
             "a mode without CUDA graphs unless fixed_shape is true (CUDA graphs replay one shape)")
        need(0.0 <= self.heart_crop_prob <= 1.0, "heart_crop_prob", "between 0 and 1")
        need(isinstance(self.teacher_weight, (int, float)) and 0.0 <= self.teacher_weight <= 1.0, "teacher_weight",
             "between 0 and 1")
        need(all(0.0 < f < 1.0 for f in self.snapshot_fractions), "snapshot_fractions", "fractions between 0 and 1")
        need(self.time_budget_s is None or (isinstance(self.time_budget_s, (int, float)) and self.time_budget_s > 0),
             "time_budget_s", "a number of seconds > 0 (or null)")

    @property
    def inference_crop(self) -> int | None:
        """The heart-centred inference crop in pixels, or ``None`` (whole canvas)."""
        crop = self.augment.crop
        if not self.centred_inference or not crop or crop >= self.preprocess.canvas:
            return None
        return int(crop)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["preprocess"] = {k: list(v) if isinstance(v, tuple) else v for k, v in self.preprocess.to_dict().items()}
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TrainConfig":
        d = dict(d)
        if "stage1_run" in d:  # the name of config.yaml files written before it was seg_stage_run
            d.setdefault("seg_stage_run", d.pop("stage1_run"))
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise CmrsegError(f"unknown config keys: {sorted(unknown)}")
        if "preprocess" in d:
            d["preprocess"] = PreprocessConfig.from_dict(d["preprocess"])
        if "augment" in d:
            d["augment"] = AugmentConfig(**_as_floats(AugmentConfig, d["augment"]))
        if d.get("amp") is False:  # YAML 1.1 reads the documented choice ``off`` as false
            d["amp"] = "off"
        return cls(**_as_floats(cls, d))

    def save(self, path: str | Path) -> None:
        write_text(path, yaml.safe_dump(self.to_dict(), sort_keys=False))


def _as_floats(cls, d: dict[str, Any]) -> dict[str, Any]:
    """Values of ``cls``'s float fields as floats: YAML 1.1 reads ``5e-4`` (no dot) as a string."""
    out = dict(d)
    for f in dataclasses.fields(cls):
        v = out.get(f.name)
        if isinstance(f.default, float) and isinstance(v, (str, int)) and not isinstance(v, bool):
            try:
                out[f.name] = float(v)
            except ValueError:
                raise CmrsegError(f"config key {f.name!r} must be a number, got {v!r}") from None
    return out


def _read_yaml(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise CmrsegError(f"{path}: config file not found")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise CmrsegError(f"{path}: invalid YAML ({str(exc).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise CmrsegError(f"{path}: a config must be a mapping")
    return data


def _merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def protocol_path(name: str) -> Path:
    p = CONFIG_DIR / "protocols" / f"{name}.yaml"
    if not p.is_file():
        known = sorted(q.stem for q in (CONFIG_DIR / "protocols").glob("*.yaml"))
        raise CmrsegError(f"unknown protocol {name!r}; known: {', '.join(known)}")
    return p


def parse_override(text: str) -> tuple[list[str], Any]:
    """``augment.rotation_deg=20`` -> (["augment", "rotation_deg"], 20)."""
    if "=" not in text:
        raise CmrsegError(f"override {text!r} is not KEY=VALUE")
    key, value = text.split("=", 1)
    try:
        return key.strip().split("."), yaml.safe_load(value)
    except yaml.YAMLError as exc:  # a tag such as !!python/object, or broken YAML
        raise CmrsegError(f"override {text!r}: invalid value ({str(exc).splitlines()[0]})") from None


def load_config(config: str | Path | None = None, protocol: str | None = None, model: str | None = None,
                overrides: list[str] | None = None) -> TrainConfig:
    """Resolve a config: protocol YAML <- ``config`` file <- ``model`` <- overrides.

    A ``config`` file may name its ``protocol``; ``protocol`` given here wins.
    """
    data: dict[str, Any] = {}
    if config is not None:
        data = _read_yaml(Path(config))
    if model is not None:
        data["model"] = model
    proto = protocol or data.get("protocol")
    base = _read_yaml(protocol_path(proto)) if proto else {}
    merged = _merge(base, data)
    if proto:
        merged["protocol"] = proto
    for text in overrides or []:
        keys, value = parse_override(text)
        node = merged
        for k in keys[:-1]:
            node = node.setdefault(k, {})
        node[keys[-1]] = value
    return TrainConfig.from_dict(merged)
