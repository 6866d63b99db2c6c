"""``cmrseg export-onnx``: a shipped model or run folder -> ``model.onnx`` + ``model.json``,
for :class:`cmrseg.inference.onnx.OnnxModel` (the graph's inputs and outputs are described
there)."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import torch
import torch.nn as nn

from cmrseg.errors import CmrsegError
from cmrseg.inference.options import InferenceOptions
from cmrseg.inference.predictor import Predictor
from cmrseg.models import DetSegNet


class _ExportWrapper(nn.Module):
    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x):
        out = self.model(x)
        cls = out.class_logits if out.class_logits is not None else x.new_zeros(x.shape[0], 3)
        seg = out.seg_logits if out.seg_logits is not None and out.seg_logits.shape == out.logits.shape else out.logits
        ungated = out.ungated_logits if out.ungated_logits is not None else out.logits
        return out.logits, cls, seg, ungated


def export_onnx(model_spec: str | Path | None, out_dir: str | Path, opset: int = 17) -> Path:
    """Export a shipped model or run folder to ``out_dir/model.onnx`` (+ its ``model.json``)."""
    predictor = Predictor.load(model_spec, InferenceOptions(device="cpu"))
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
                          input_names=["image"], output_names=["logits", "class_logits", "seg_logits",
                                                               "ungated_logits"],
                          dynamic_axes={"image": {0: "slices", 2: "height", 3: "width"},
                                        "logits": {0: "slices", 2: "height", 3: "width"},
                                        "class_logits": {0: "slices"},
                                        "seg_logits": {0: "slices", 2: "height", 3: "width"},
                                        "ungated_logits": {0: "slices", 2: "height", 3: "width"}})
    tmp.replace(out / "model.onnx")
    meta = {k: v for k, v in predictor.meta.items() if k not in ("path", "source")}
    meta["onnx"] = {"file": "model.onnx", "opset": opset, "inputs": {"image": ["slices", 1, "height", "width"]},
                    "outputs": {"logits": ["slices", 4, "height", "width"], "class_logits": ["slices", 3],
                                "seg_logits": ["slices", 4, "height", "width"],
                                "ungated_logits": ["slices", 4, "height", "width"]},
                    "has_classifier": getattr(predictor.model, "classifier", None) is not None
                    or getattr(getattr(predictor.model, "ref", None), "classifier", None) is not None}
    (out / "model.json").write_text(json.dumps(meta, indent=2))
    return out / "model.onnx"
