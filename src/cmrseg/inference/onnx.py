"""ONNX deployment: run an exported ``model.onnx`` with onnxruntime (the export itself is
:mod:`cmrseg.inference.export`).

The exported graph takes one stack ``image`` ``[S, 1, H, W]`` (S, H and W dynamic: the
canvas, or the heart-centred crop of :mod:`.centred`, where the whole model also serves as the
locator) and returns ``logits`` ``[S, 4, H, W]`` (gated for multitask models) and
``class_logits`` ``[S, 3]`` (zeros for models without a classifier), ``seg_logits``
(the Seg stage's logits of two-stage models, else the logits again: the heart locator) and
``ungated_logits`` (before the classifier's gate, so every gate mode of :mod:`.gating`
works). Det+Seg is not exportable: its crop depends on the detector's output.
"""

from __future__ import annotations

from pathlib import Path

import torch

from cmrseg.errors import InputError
from cmrseg.models.outputs import SegOutput


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
        seg = torch.from_numpy(outs[2]) if len(outs) > 2 else None  # the Seg stage's, for the locator
        ungated = torch.from_numpy(outs[3]) if len(outs) > 3 and self.has_classifier else None
        return SegOutput(torch.from_numpy(logits), torch.from_numpy(cls) if self.has_classifier else None,
                         seg_logits=seg, ungated_logits=ungated)
