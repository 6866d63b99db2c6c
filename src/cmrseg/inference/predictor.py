"""Rebuild a trained model from its folder and segment volumes in their own geometry.

A model folder holds ``model.json`` (model name, constructor arguments, preprocessing,
label map) and ``weights.safetensors``; :meth:`Predictor.from_path` needs nothing else.
Shipped models live in ``cmrseg/weights/<name>/`` inside the package.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from cmrseg.checkpoint import load_weights, tensor_shapes
from cmrseg.data.preprocessing import PreprocessConfig, invert_to_input, preprocess_image
from cmrseg.data.volume import Volume
from cmrseg.device import cpu_has_fast_bf16, resolve_device
from cmrseg.errors import CmrsegError, InputError
from cmrseg.inference.gating import FLIPS, GATE_MODES, apply_gate
from cmrseg.inference.onnx import OnnxModel
from cmrseg.inference.options import InferenceOptions
from cmrseg.inference.postprocessing import POSTPROCESS, postprocess
from cmrseg.labels import NUM_CLASSES
from cmrseg.models import create_model
from cmrseg.models.centred import heart_centred_flips
from cmrseg.models.registry import PROPOSED

WEIGHTS_DIR = Path(__file__).resolve().parents[1] / "weights"
#: what ``cmrseg segment`` runs without ``--model``: the shipped proposed models averaged
#: (an ensemble, chosen on val by a rule written before scoring: docs/decisions.md, rule 10)
DEFAULT_MODEL = "proposed_ensemble"
#: the single proposed model: the default where one network is needed (``Predictor.load``,
#: ``cmrseg export-onnx``, benchmarks)
PROPOSED_MODEL = PROPOSED  # shipped under the registry's name
ENSEMBLE_FILE = "ensemble.json"  # a folder of member models (cmrseg.inference.ensemble)


def shipped_models() -> list[str]:
    """Names of the models (and ensembles, :mod:`.ensemble`) shipped inside the package."""
    if not WEIGHTS_DIR.is_dir():
        return []
    return sorted(p.name for p in WEIGHTS_DIR.iterdir()
                  if (p / "model.json").is_file() or (p / ENSEMBLE_FILE).is_file())


def inference_memory_format(device: torch.device, backend: str | None) -> torch.memory_format:
    """How the networks' tensors are laid out at inference: channels-last (NHWC) on the CPU,
    where oneDNN's convolutions and pooling run faster on it (2-core machine, one member's two
    stages on a 10-slice 128-px crop: 0.045 against 0.077 s in bf16, 0.062 against 0.108 s in
    float32; docs/decisions.md, rule 13); channels-first elsewhere (not measured on GPUs) and for
    an exported model (onnxruntime has its own layouts)."""
    if device.type == "cpu" and backend != "onnx":
        return torch.channels_last
    return torch.contiguous_format


def resolve_model(spec: str | Path | None, default: str = DEFAULT_MODEL) -> tuple[Path, str]:
    """``--model`` (``None``: ``default``) -> (model or ensemble folder, ``shipped`` | ``folder``);
    see :meth:`Predictor.load`."""
    text = str(spec) if spec is not None else default
    as_path = "/" in text or (os.sep in text)
    if not as_path and text in shipped_models():
        return WEIGHTS_DIR / text, "shipped"
    if Path(text).is_dir():
        return Path(text), "folder"
    raise CmrsegError(f"{text}: neither a shipped model nor a model folder "
                      f"(shipped: {', '.join(shipped_models()) or 'none'})")


#: ``--frames-per-forward auto``: frames of a cine in one forward pass of a whole-canvas model,
#: on a CPU and on a GPU. One on a CPU: there a batch of several stacks took the same time per
#: slice or more (docs/RESULTS.md, "Speed"); a GPU is kept busy by larger batches.
FRAMES_PER_FORWARD = {False: 1, True: 8}

#: the probabilities that bound a structure's pixels as the model sees them: at least ``BAND[0]``
#: possibly the structure's, at least ``BAND[1]`` surely (:attr:`Prediction.bands`)
BAND = (0.25, 0.75)


@dataclass
class Prediction:
    """Attributes:
    mask: uint8 ``[S, H, W]`` in the input's grid (0 bg, 1 RV, 2 MYO, 3 LV).
    class_probs: ``[S, 3]`` presence probabilities of (RV, MYO, LV) for multitask models.
    seconds: model time (preprocessing, forward, resampling back).
    expected_errors: ``[S]`` float, per slice the pixels the model itself expects to be wrong:
        the sum over the slice of 1 - the top class probability (the probabilities averaged
        over flips and ensemble members, in the input's grid). Quality control compares it
        with the mask's area (:func:`cmrseg.inference.quality.uncertainty_share`).
    probabilities: float16 ``[S, 4, H, W]``, the class probabilities the mask is the cleaned
        argmax of, when asked for (``keep_probabilities``; ``cmrseg segment --save-probabilities``).
    bands: ``[S, 3, 2]`` per slice and structure (RV, MYO, LV) the pixels the model is sure of
        (probability at least ``BAND[1]``) and the pixels it thinks possible (at least
        ``BAND[0]``): their volumes bound each structure's volume as the model sees it
        (:mod:`cmrseg.inference.error_estimates`).
    """

    mask: np.ndarray
    class_probs: np.ndarray | None
    seconds: float
    expected_errors: np.ndarray | None = None
    probabilities: np.ndarray | None = None
    bands: np.ndarray | None = None

    @classmethod
    def from_probabilities(cls, probs: torch.Tensor, presence: torch.Tensor | None, method: str,
                           started: float, keep_probabilities: bool = False) -> "Prediction":
        """Input-grid probabilities ``[S, 4, H, W]`` -> argmax mask cleaned up by ``method``,
        the expected errors per slice, and (``keep_probabilities``) the probabilities."""
        top = probs.max(dim=1)  # .indices is class_argmax (its docstring says why not argmax)
        mask = postprocess(top.indices.to(torch.uint8).cpu().numpy(), method)
        expected = (1.0 - top.values.float()).sum(dim=(1, 2)).cpu().numpy().astype(np.float64)
        kept = probs.to(torch.float16).cpu().numpy() if keep_probabilities else None
        fg = probs[:, 1:]
        bands = torch.stack([(fg >= BAND[1]).sum(dim=(2, 3)), (fg >= BAND[0]).sum(dim=(2, 3))], dim=-1)
        return cls(mask, None if presence is None else presence.cpu().numpy(), time.perf_counter() - started,
                   expected, kept, bands.cpu().numpy().astype(np.int64))


#: the most parameters a model folder may describe: the shipped networks have 4-8 M; a damaged or
#: foreign model.json could otherwise ask for tens of GB before anything fails
MAX_PARAMETERS = 200_000_000


def checked_model(meta: dict, meta_path: Path, weights: Path) -> torch.nn.Module:
    """The network ``model.json`` describes, built only after its description passed: it is
    first built on the ``meta`` device (shapes, no memory), its size held to ``MAX_PARAMETERS``
    and its tensors' shapes to those in the weights file's header; any misfit is one
    :class:`InputError` naming the file."""
    try:
        with torch.device("meta"):
            skeleton = create_model(meta["model"], **meta.get("model_kwargs", {}))
    except (KeyError, TypeError, ValueError, RuntimeError) as exc:
        raise InputError(meta_path, f"invalid model description ({type(exc).__name__}: {exc})") from None
    count = sum(p.numel() for p in skeleton.parameters())
    if count > MAX_PARAMETERS:
        raise InputError(meta_path, f"describes a network of {count / 1e6:,.0f} M parameters, more than the "
                                    f"{MAX_PARAMETERS / 1e6:.0f} M cmrseg builds: a damaged or foreign model.json")
    stored = tensor_shapes(weights)
    for key, tensor in skeleton.state_dict().items():
        if stored.get(key, tuple(tensor.shape)) != tuple(tensor.shape):
            raise InputError(weights, f"weights do not fit model.json: {key} is {list(stored[key])} in the file, "
                                      f"{list(tensor.shape)} in the network it describes")
    return create_model(meta["model"], **meta.get("model_kwargs", {}))


def _class_bias(meta: dict) -> torch.Tensor | None:
    """``model.json``'s ``class_bias``: one constant per class added to the logits before the
    softmax (a prior correction fitted on the training data by ``experiments/fit_class_bias.py``),
    shaped ``[1, 4, 1, 1]``; None without one."""
    bias = meta.get("class_bias")
    if bias is None:
        return None
    try:
        values = np.asarray(bias, dtype=np.float32)
    except (TypeError, ValueError):
        values = np.full(1, np.nan, np.float32)
    if values.shape != (NUM_CLASSES,) or not np.isfinite(values).all():
        raise InputError(meta.get("path"), f"model.json: class_bias must be one finite number per class, not {bias!r}")
    return torch.from_numpy(values).view(1, -1, 1, 1)


class Predictor:
    """Segment volumes with one model, loaded once.

    Args:
        model: a built cmrseg model (eval mode is set here).
        meta: its ``model.json`` content.
        options: how it runs (:class:`~cmrseg.inference.options.InferenceOptions`), merged here
            once with ``model.json``'s own choices: device (``auto``: CUDA when present),
            precision (``auto``: bf16 autocast on CUDA and on CPUs with native bf16, AMX or
            AVX512-BF16; float32 on other CPUs), clean-up (:mod:`.postprocessing`), gate
            (:mod:`.gating`: ``hard``, the paper's, where ``model.json`` names none) and flips.

    Attributes (the merged choices): ``options``; ``postprocess``, ``gate``; ``tta`` (average
    over in-plane flips) and ``locate_once`` (with flips, locate the heart once instead of per
    flip: :func:`~cmrseg.models.centred.heart_centred_flips`); ``amp`` (the autocast dtype or
    None); ``memory_format`` (:func:`inference_memory_format`); ``inference_crop``, the
    heart-centred crop (pixels) of :mod:`cmrseg.models.centred`, or ``None`` to run the model on
    the whole canvas (models trained without a crop, the distilled student);
    ``frames_per_forward``, how many stacks such a model takes in one pass
    (:meth:`predict_volumes`; :data:`FRAMES_PER_FORWARD` for ``auto``).
    """

    def __init__(self, model: torch.nn.Module, meta: dict, options: InferenceOptions = InferenceOptions()):
        self.options = options.merged(meta)
        if self.options.gate not in GATE_MODES:
            raise InputError(meta.get("path"), f"model.json: unknown gate {self.options.gate!r}")
        if self.options.postprocess not in POSTPROCESS:
            raise InputError(meta.get("path"), f"model.json: unknown post-processing {self.options.postprocess!r}")
        self.device = resolve_device(options.device)
        self.meta = meta
        self.memory_format = inference_memory_format(self.device, meta.get("backend"))
        self.model = model.to(self.device).eval()
        if self.memory_format is not torch.contiguous_format:
            self.model = self.model.to(memory_format=self.memory_format)
        self.preprocess = PreprocessConfig.from_dict(meta["preprocess"])
        self.postprocess, self.gate = self.options.postprocess, self.options.gate
        self.tta, self.locate_once = self.options.flips, self.options.locate_once
        bf16 = options.precision == "bf16" or (options.precision == "auto"
                                               and (self.device.type == "cuda" or cpu_has_fast_bf16()))
        self.amp = torch.bfloat16 if bf16 and meta.get("backend") != "onnx" else None
        self.inference_crop: int | None = meta.get("inference_crop")
        self.class_bias = _class_bias(meta)
        self.frames_per_forward = (int(self.options.frames_per_forward) if self.options.frames_per_forward != "auto"
                                   else FRAMES_PER_FORWARD[self.device.type == "cuda"])

    @classmethod
    def from_path(cls, path: str | Path, options: InferenceOptions = InferenceOptions()) -> "Predictor":
        """The model of a folder; ``options.backend``: ``torch`` (weights.safetensors), ``onnx``
        (model.onnx through onnxruntime, CPU) or ``auto`` (torch when the folder has weights)."""
        path = Path(path)
        meta_path = path / "model.json"
        if not meta_path.is_file() and (path / ENSEMBLE_FILE).is_file():
            raise InputError(path, "an ensemble of models (ensemble.json), not one model: use its member folders")
        if not meta_path.is_file():
            raise InputError(path, "not a model folder (no model.json)")
        try:
            meta = json.loads(meta_path.read_text())
        except ValueError as exc:
            raise InputError(meta_path, f"invalid model description ({exc})") from None
        backend = options.backend
        if backend == "auto":
            backend = "torch" if (path / "weights.safetensors").is_file() else "onnx"
        if backend == "onnx":
            if not (path / "model.onnx").is_file():
                raise InputError(path, "no model.onnx (make one with 'cmrseg export-onnx')")
            return cls(OnnxModel(path / "model.onnx", meta), {**meta, "path": str(path), "backend": "onnx"},
                       replace(options, device="cpu"))
        model = checked_model(meta, meta_path, path / "weights.safetensors")
        load_weights(model, path / "weights.safetensors")
        return cls(model, {**meta, "path": str(path), "backend": "torch"}, options)

    @classmethod
    def load(cls, spec: str | Path | None = None, options: InferenceOptions = InferenceOptions()) -> "Predictor":
        """The name of a shipped model (default: the proposed model, ``PROPOSED_MODEL``) or a
        run folder. One network; :func:`cmrseg.inference.ensemble.load_predictor` also takes
        ensembles (and defaults to the shipped one, ``DEFAULT_MODEL``).

        A shipped model's name always means the shipped weights, even when a folder of that
        name sits in the working directory: a folder is taken when the name is not a shipped
        model's or when it is written as a path (with a ``/``, e.g. ``./seg_ss``). The
        predictor's ``meta["source"]`` says which (``shipped`` or ``folder``).
        """
        folder, source = resolve_model(spec, default=PROPOSED_MODEL)
        predictor = cls.from_path(folder, options)
        predictor.meta["source"] = source
        return predictor

    @property
    def name(self) -> str:
        return self.meta["model"]

    @torch.no_grad()
    def predict_canvas(self, x: torch.Tensor,
                       stack_sizes: list[int] | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``[S, 1, C, C]`` canvas stack -> (probabilities ``[S, 4, C, C]``, presence ``[S, 3]``):
        heart-centred, averaged over flips when ``tta``, then gated (``gate``). ``stack_sizes``:
        ``x`` holds several stacks one after another (whole-canvas models only: the heart-centred
        crop is one window per stack)."""
        x = x.to(self.device).contiguous(memory_format=self.memory_format)
        ctx = torch.autocast(self.device.type, dtype=self.amp) if self.amp else torch.autocast("cpu", enabled=False)
        probs, presence, seg = [], [], []
        flips = FLIPS if self.tta else ((),)
        if stack_sizes is not None and len(stack_sizes) > 1:
            if self.inference_crop is not None:
                raise CmrsegError("several stacks in one forward pass need a whole-canvas model (no inference_crop)")
            passes = ((dims, self.model(x.flip(dims) if dims else x, stack_sizes=list(stack_sizes))) for dims in flips)
        else:
            passes = heart_centred_flips(self.model, x, self.inference_crop, flips, self.locate_once)
        while True:
            with ctx:  # the networks run in autocast (inside next()); probabilities are taken in float32
                step = next(passes, None)
            if step is None:
                break
            dims, out = step
            logits = out.ungated_logits if out.ungated_logits is not None else out.logits

            def back(t, bias=None):
                t = t.float() if bias is None else t.float() + bias.to(t.device)
                return t.softmax(dim=1).flip(dims) if dims else t.softmax(dim=1)

            probs.append(back(logits, self.class_bias))
            if out.class_logits is not None:
                presence.append(torch.sigmoid(out.class_logits.float()))
            if out.seg_logits is not None and out.seg_logits.shape == logits.shape:
                seg.append(back(out.seg_logits))
        mean = torch.stack(probs).mean(dim=0)
        cls = torch.stack(presence).mean(dim=0) if presence else None
        seg_probs = torch.stack(seg).mean(dim=0) if seg else None
        return apply_gate(mean, cls, self.gate, seg_probs), cls

    def predict_probabilities(self, volume: Volume) -> tuple[torch.Tensor, torch.Tensor | None]:
        """One stack -> (gated class probabilities ``[S, 4, H, W]`` in the volume's own grid,
        presence ``[S, 3]`` or ``None``)."""
        x, cmap = preprocess_image(volume.image, volume.geometry.inplane_spacing, self.preprocess, volume.path)
        probs, cls = self.predict_canvas(x)
        return invert_to_input(probs, cmap), cls

    def predict_volume(self, volume: Volume, keep_probabilities: bool = False) -> Prediction:
        """Segment one stack; the mask is in the volume's own grid (with its probabilities when
        ``keep_probabilities``)."""
        t0 = time.perf_counter()
        return Prediction.from_probabilities(*self.predict_probabilities(volume), self.postprocess, t0,
                                             keep_probabilities)

    def predict_volumes(self, volumes: list[Volume], keep_probabilities: bool = False) -> list[Prediction]:
        """Segment every stack of a study (its frames). A whole-canvas model runs up to
        :attr:`frames_per_forward` of them in one forward pass (``--frames-per-forward``: larger
        batches keep a GPU busy); a heart-centred or ONNX model, one stack per pass."""
        per = self.frames_per_forward
        if per <= 1 or self.inference_crop is not None or self.meta.get("backend") == "onnx":
            return [self.predict_volume(v, keep_probabilities) for v in volumes]
        out: list[Prediction] = []
        for i in range(0, len(volumes), per):
            group = volumes[i:i + per]
            t0 = time.perf_counter()
            prepared = [preprocess_image(v.image, v.geometry.inplane_spacing, self.preprocess, v.path) for v in group]
            if len({tuple(x.shape[1:]) for x, _ in prepared}) > 1:  # canvases differ: one stack at a time
                out += [self.predict_volume(v, keep_probabilities) for v in group]
                continue
            sizes = [x.shape[0] for x, _ in prepared]
            probs, cls = self.predict_canvas(torch.cat([x for x, _ in prepared]), sizes)
            each = (time.perf_counter() - t0) / len(group)  # the pass's time, shared among its stacks
            presence = cls.split(sizes) if cls is not None else [None] * len(sizes)
            for (_, cmap), p, c in zip(prepared, probs.split(sizes), presence):
                out.append(Prediction.from_probabilities(invert_to_input(p, cmap), c, self.postprocess,
                                                         time.perf_counter() - each, keep_probabilities))
        return out
