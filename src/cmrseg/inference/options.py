"""What a user chooses about inference, each choice one field of one value:

* :class:`InferenceOptions`: how the networks run (device, backend, precision, clean-up, gate,
  flips); merged once with the model's own choices in ``model.json``
  (:meth:`InferenceOptions.merged`) when a predictor is built;
* :class:`SegmentOptions`: a ``cmrseg segment`` batch (model, the options above, voxel size,
  slice order, shard, workers, optional outputs).

The command line draws its ``segment`` options from these fields' ``cli`` metadata
(:func:`cmrseg.cli.add_options`), so an option is added here once. Nothing here imports torch:
``cmrseg --help`` stays fast.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from typing import Any

from cmrseg.errors import CmrsegError

PRECISIONS = ("auto", "fp32", "bf16")
BACKENDS = ("auto", "torch", "onnx")
GATES = ("hard", "soft", "seg", "off")  # cmrseg.inference.gating's modes
POSTPROCESS_METHODS = ("none", "largest_component", "fill_holes", "clean")  # cmrseg.inference.postprocessing's
#: ``--tta``: the model's own choice, flips on or off, or flips with the heart located once
TTA_MODES = ("auto", "on", "off", "fast")
SLICE_ORDERS = ("auto", "keep", "reverse")  # cmrseg.data.orientation's
SECOND_OPINIONS = ("auto", "off")  # cmrseg.inference.ensemble.SecondOpinion
#: the keys of a model's model.json that say how to read it (InferenceOptions.merged takes them)
MODEL_CHOICES = ("postprocess", "gate", "tta")


def option(default, help: str, **cli) -> Any:
    """A field with its command-line description (``cli``: argparse keywords besides ``help``)."""
    return field(default=default, metadata={"cli": {"help": help, **cli}})


@dataclass(frozen=True)
class InferenceOptions:
    """How the networks run; ``auto`` takes the model's own choice in ``model.json`` where it has one."""

    device: str = option("auto", "auto | cpu | cuda")
    backend: str = option("auto", "torch, or onnxruntime on an exported model folder (default: torch when "
                                  "weights exist)", choices=BACKENDS)
    precision: str = option("auto", "auto: bf16 on a GPU and on CPUs with native bf16 (AMX, AVX512-BF16), else "
                                    "float32", choices=PRECISIONS)
    # not argparse choices in the table's import path of torch: validated in merged()
    postprocess: str = option("auto", "mask clean-up: auto (the model's own choice in model.json, else none), none, "
                                      "largest_component, fill_holes or clean", metavar="METHOD")
    gate: str = option("auto", "how the classifier acts on the mask (auto: the model's choice in model.json)",
                       choices=("auto", *GATES))
    tta: str = option("auto", "average over in-plane flips (auto: the model's choice in model.json); fast: flips "
                              "with the heart located once, about a third less CPU time", choices=TTA_MODES)
    second_opinion: str = option("auto", "auto: where the model has one (ensemble.json's second_opinion), a study "
                                         "the networks are unsure of is segmented again on histogram-standardised "
                                         "intensities and the result they are surer of kept; off: never",
                                 choices=SECOND_OPINIONS)
    frames_per_forward: str = option("auto", "how many frames of a cine a whole-canvas model (the student) segments in "
                                             "one forward pass: a number, or auto (8 on a GPU; 1 on a CPU, where "
                                             "batching frames measured no faster: docs/RESULTS.md)", metavar="N")

    def __post_init__(self) -> None:
        for name, allowed in (("backend", BACKENDS), ("precision", PRECISIONS), ("gate", ("auto", *GATES)),
                              ("tta", TTA_MODES), ("postprocess", ("auto", *POSTPROCESS_METHODS)),
                              ("second_opinion", SECOND_OPINIONS)):
            if getattr(self, name) not in allowed:
                what = {"postprocess": "post-processing", "tta": "test-time augmentation"}.get(name, name)
                raise CmrsegError(f"unknown {what} {getattr(self, name)!r}; choose from {', '.join(allowed)}")
        if self.frames_per_forward != "auto" and not (str(self.frames_per_forward).isdigit()
                                                      and int(self.frames_per_forward) >= 1):
            raise CmrsegError(f"--frames-per-forward {self.frames_per_forward!r}: a whole number >= 1, or auto")

    def merged(self, meta: dict) -> "InferenceOptions":
        """These options with every ``auto`` choice of clean-up, gate and flips replaced by the
        model's own (``model.json``: ``postprocess``, ``gate``, ``tta``; else ``none``, ``hard``,
        no flips). Device, backend and precision stay as asked: they depend on the machine."""
        tta = self.tta if self.tta != "auto" else ("on" if meta.get("tta") else "off")
        return replace(self, postprocess=self.postprocess if self.postprocess != "auto" else meta.get("postprocess", "none"),
                       gate=self.gate if self.gate != "auto" else meta.get("gate", "hard"), tta=tta)

    @property
    def flips(self) -> bool:
        return self.tta in ("on", "fast")

    @property
    def locate_once(self) -> bool:
        return self.tta == "fast"


@dataclass(frozen=True)
class SegmentOptions:
    """A ``cmrseg segment`` batch."""

    model: tuple[str, ...] | None = option(None, "shipped model name or a trained run folder (default: the shipped "
                                                  "default); several, or a folder with ensemble.json, make an ensemble "
                                                  "(probabilities averaged)", nargs="+", metavar="MODEL")
    inference: InferenceOptions = field(default_factory=InferenceOptions)
    spacing: tuple[float, ...] | None = option(None, "SX SY [SZ] in mm, overriding the files", type=float, nargs="+",
                                               metavar="MM")
    shard: str | None = option(None, "i/n: the i-th of n interleaved parts of the batch; auto: from a Slurm job "
                                     "array (SLURM_ARRAY_TASK_ID, SLURM_ARRAY_TASK_COUNT)")
    overwrite: bool = option(False, "redo studies already finished in OUT", action="store_true")
    workers: int = option(2, "reader processes (default 2; 0: read in this process)", type="count")
    slice_order: str = option("auto", "base->apex rule (README); default auto", choices=SLICE_ORDERS)
    dicom_seg: bool = option(False, "also write a DICOM study's ED and ES masks as DICOM SEG objects referencing its "
                                    "images (<mask>_seg_ED.dcm, <mask>_seg_ES.dcm), for PACS viewers, OHIF or 3D "
                                    "Slicer", action="store_true")
    qc_limits: str | None = option(None, "the estimated errors beyond which a study goes to review, e.g. "
                                         "LVEF=8,RVEF=10,LVM=20,volume=25 (the defaults: points, g, mL; names LVEF, "
                                         "RVEF, LVM, LVEDV, LVESV, RVEDV, RVESV, volume)", metavar="LIMITS")
    save_probabilities: bool = option(False, "also write each mask's class probabilities as "
                                             "<mask>_probabilities.npz (float16 [frames, 4, slices, rows, columns], "
                                             "the mask file's slice order)", action="store_true")
    progress: bool = True

    @property
    def extras(self) -> tuple[str, ...]:
        """The optional outputs asked for (``dicom_seg``, ``probabilities``)."""
        return tuple(name for name, on in (("dicom_seg", self.dicom_seg), ("probabilities", self.save_probabilities))
                     if on)


def parse_shard(text: str | None, environ=None) -> tuple[tuple[int, int], str]:
    """``"i/n"`` (1-based i) -> ((i - 1, n), where it came from); ``"auto"`` takes the shard from a
    Slurm job array (``SLURM_ARRAY_TASK_ID`` counted from ``SLURM_ARRAY_TASK_MIN`` in steps of
    ``SLURM_ARRAY_TASK_STEP``, of ``SLURM_ARRAY_TASK_COUNT`` tasks) and names the variables it
    read; ``None`` is the whole batch."""
    if not text:
        return (0, 1), "the whole batch"
    source = "--shard"
    if text == "auto":
        env = os.environ if environ is None else environ
        try:
            task, count = int(env["SLURM_ARRAY_TASK_ID"]), int(env["SLURM_ARRAY_TASK_COUNT"])
            first, step = int(env.get("SLURM_ARRAY_TASK_MIN") or 0), int(env.get("SLURM_ARRAY_TASK_STEP") or 1)
        except (KeyError, ValueError):
            raise CmrsegError("--shard auto: SLURM_ARRAY_TASK_ID and SLURM_ARRAY_TASK_COUNT are not set to numbers "
                              "(not a Slurm job array); give --shard i/n") from None
        text = f"{(task - first) // max(step, 1) + 1}/{count}"
        source = (f"Slurm: SLURM_ARRAY_TASK_ID={task}, SLURM_ARRAY_TASK_MIN={first}, SLURM_ARRAY_TASK_STEP={step}, "
                  f"SLURM_ARRAY_TASK_COUNT={count}")
    try:
        i, n = (int(v) for v in text.split("/"))
    except ValueError:
        raise CmrsegError(f"--shard must be i/n or auto, got {text!r}") from None
    if not 1 <= i <= n:
        raise CmrsegError(f"--shard {text}: need 1 <= i <= n" + (f" ({source})" if source != "--shard" else ""))
    return (i - 1, n), source
