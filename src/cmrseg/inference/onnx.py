"""ONNX deployment: export a model folder to ``model.onnx`` and run it with onnxruntime.

The exported graph takes one stack ``image`` ``[S, 1, H, W]`` (S, H and W dynamic: the
canvas, or the heart-centred crop of :mod:`.centred`, where the whole model also serves as the
locator) and returns ``logits`` ``[S, 4, H, W]`` (gated for multitask models) and
``class_logits`` ``[S, 3]`` (zeros for models without a classifier), ``stage1_logits``
(the Seg stage's logits of two-stage models, else the logits again: the heart locator) and
``ungated_logits`` (before the classifier's gate, so every gate mode of :mod:`.gating` works). Det+Seg is not
exportable: its crop depends on the detector's output (data-dependent shapes).
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import torch
import torch.nn as nn

from cmrseg.errors import CmrsegError
from cmrseg.models import DetSegNet
from cmrseg.models.outputs import SegOutput


class _ExportWrapper(nn.Module):
    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x):
        out = self.model(x)
        cls = out.class_logits if out.class_logits is not None else x.new_zeros(x.shape[0], 3)
        seg = out.stage1_logits if out.stage1_logits is not None and out.stage1_logits.shape == out.logits.shape else out.logits
        ungated = out.ungated_logits if out.ungated_logits is not None else out.logits
        return out.logits, cls, seg, ungated


def export_onnx(model_spec: str | Path | None, out_dir: str | Path, opset: int = 17) -> Path:
    """Export a shipped model or run folder to ``out_dir/model.onnx`` (+ its ``model.json``)."""
    from cmrseg.inference.predictor import Predictor

    predictor = Predictor.load(model_spec, device="cpu")
    if isinstance(predictor.model, DetSegNet):
        raise CmrsegError("det_seg cannot be exported to ONNX: its crop position depends on the detector's output")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    wrapper = _ExportWrapper(predictor.model).eval()  # eval on the wrapper: export restores its mode after
    canvas = predictor.preprocess.canvas
    example = torch.rand(8, 1, canvas, canvas)
    tmp = out / ".model.onnx.tmp"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(wrapper, (example,), str(tmp), dynamo=False, opset_version=opset,
                          input_names=["image"], output_names=["logits", "class_logits", "stage1_logits",
                                                               "ungated_logits"],
                          dynamic_axes={"image": {0: "slices", 2: "height", 3: "width"},
                                        "logits": {0: "slices", 2: "height", 3: "width"},
                                        "class_logits": {0: "slices"},
                                        "stage1_logits": {0: "slices", 2: "height", 3: "width"},
                                        "ungated_logits": {0: "slices", 2: "height", 3: "width"}})
    tmp.replace(out / "model.onnx")
    meta = {k: v for k, v in predictor.meta.items() if k not in ("path", "source")}
    meta["onnx"] = {"file": "model.onnx", "opset": opset, "inputs": {"image": ["slices", 1, "height", "width"]},
                    "outputs": {"logits": ["slices", 4, "height", "width"], "class_logits": ["slices", 3],
                                "stage1_logits": ["slices", 4, "height", "width"],
                                "ungated_logits": ["slices", 4, "height", "width"]},
                    "has_classifier": getattr(predictor.model, "classifier", None) is not None
                    or getattr(getattr(predictor.model, "ref", None), "classifier", None) is not None}
    (out / "model.json").write_text(json.dumps(meta, indent=2))
    return out / "model.onnx"


class OnnxModel:
    """Callable like a cmrseg model (``model(x) -> SegOutput``), backed by onnxruntime."""

    def __init__(self, path: str | Path, meta: dict, threads: int | None = None):
        import onnxruntime as ort

        opts = ort.SessionOptions()
        if threads:
            opts.intra_op_num_threads = threads
        try:
            self.session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own types for invalid or truncated graphs
            from cmrseg.errors import InputError

            raise InputError(path, f"cannot load the ONNX model ({type(exc).__name__}: "
                                   f"{str(exc).splitlines()[0][:200]})") from None
        self.has_classifier = meta.get("onnx", {}).get("has_classifier", True)

    def to(self, *_args, **_kwargs):
        return self

    def eval(self):
        return self

    def __call__(self, x: torch.Tensor, stack_sizes=None) -> SegOutput:
        outs = self.session.run(None, {"image": x.detach().float().cpu().numpy()})
        logits, cls = outs[0], outs[1]
        stage1 = torch.from_numpy(outs[2]) if len(outs) > 2 else None  # the Seg stage's, for the locator
        ungated = torch.from_numpy(outs[3]) if len(outs) > 3 and self.has_classifier else None
        return SegOutput(torch.from_numpy(logits), torch.from_numpy(cls) if self.has_classifier else None,
                         stage1_logits=stage1, ungated_logits=ungated)
