"""ONNX deployment: export a model folder to ``model.onnx`` and run it with onnxruntime.

The exported graph takes one stack ``image`` ``[S, 1, C, C]`` (S dynamic, C the model's
canvas) and returns ``logits`` ``[S, 4, C, C]`` (gated for multitask models) and
``class_logits`` ``[S, 3]`` (zeros for models without a classifier). Det+Seg is not
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
        return out.logits, cls


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
                          input_names=["image"], output_names=["logits", "class_logits"],
                          dynamic_axes={"image": {0: "slices"}, "logits": {0: "slices"}, "class_logits": {0: "slices"}})
    tmp.replace(out / "model.onnx")
    meta = {k: v for k, v in predictor.meta.items() if k != "path"}
    meta["onnx"] = {"file": "model.onnx", "opset": opset, "inputs": {"image": ["slices", 1, canvas, canvas]},
                    "outputs": {"logits": ["slices", 4, canvas, canvas], "class_logits": ["slices", 3]},
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
        self.session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        self.has_classifier = meta.get("onnx", {}).get("has_classifier", True)

    def to(self, *_args, **_kwargs):
        return self

    def eval(self):
        return self

    def __call__(self, x: torch.Tensor, stack_sizes=None) -> SegOutput:
        logits, cls = self.session.run(None, {"image": x.detach().float().cpu().numpy()})
        return SegOutput(torch.from_numpy(logits), torch.from_numpy(cls) if self.has_classifier else None)
