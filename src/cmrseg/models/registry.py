"""Model registry: every model of the paper's Tables 1 and 2 by name.

``list_models()`` and ``create_model(name, **kwargs)``. Every model is built from the same
blocks and convolution settings (``widths``, ``norm``, ``sk_groups``), the paper's rule for
a fair comparison; ``kwargs`` change them for all stages alike.

| name | paper | stages |
|---|---|---|
| ``seg_ss`` | SS SK-UNet / Seg (SS) | single-slice SK-UNet |
| ``seg_as`` | AS After-UNet / Seg (AS) | SK-UNet + all-slice fusion |
| ``seg_as_mt`` | Seg (AS + MT) | ``seg_as`` + classifier on the image stage |
| ``seg_ss+ref_ss`` | Seg (SS) + Ref (SS w/o MT) | |
| ``seg_ss+ref_ss_mt`` | Seg (SS) + Ref (SS w/ MT) | |
| ``seg_as+ref_as`` | Seg (AS) + Ref (AS w/o MT) | |
| ``seg_as+ref_as_mt`` | Seg (AS) + Ref (AS w/ MT): **the proposed model** | |
| ``det_seg`` | Two-stage Det + Seg | heart detector + all-slice crop segmenter |
"""

from __future__ import annotations

from typing import Callable

import torch.nn as nn

from cmrseg.models.det_seg import DetSegNet
from cmrseg.models.two_stage import TwoStageNet
from cmrseg.models.unet import SegmentationNet

_REGISTRY: dict[str, Callable[..., nn.Module]] = {}

#: default settings of every model (overridable per call / config)
DEFAULTS = {"widths": (16, 32, 64, 128, 256), "norm": "batch", "sk_groups": 1, "fusion_depth": 1,
            "heads": 8, "mlp_ratio": 2.0, "dropout": 0.0, "ref_residual": True}
PROPOSED = "seg_as+ref_as_mt"


def register_model(name: str):
    def deco(fn):
        if name in _REGISTRY:
            raise ValueError(f"model {name!r} registered twice")
        _REGISTRY[name] = fn
        return fn
    return deco


def list_models() -> list[str]:
    return sorted(_REGISTRY)


def create_model(name: str, **kwargs) -> nn.Module:
    """Build a registered model; ``model.cmrseg_name`` / ``model.cmrseg_kwargs`` record how."""
    if name not in _REGISTRY:
        raise KeyError(f"unknown model {name!r}; registered: {', '.join(list_models())}")
    settings = {**DEFAULTS, **kwargs}
    settings["widths"] = tuple(settings["widths"])
    model = _REGISTRY[name](**settings)
    model.cmrseg_name = name
    model.cmrseg_kwargs = {k: (list(v) if isinstance(v, tuple) else v) for k, v in settings.items()}
    return model


def _net(in_channels=1, all_slice=False, classifier=False, **kw) -> SegmentationNet:
    return SegmentationNet(in_channels=in_channels, num_classes=4, all_slice=all_slice, classifier=classifier, **kw)


def _stage_kwargs(kw: dict) -> dict:
    """Settings of one SegmentationNet (drops Det+Seg's crop/zoom and the Ref option)."""
    return {k: v for k, v in kw.items() if k not in ("crop", "zoom", "ref_residual")}


@register_model("seg_ss")
def seg_ss(**kw):
    return _net(**_stage_kwargs(kw))


@register_model("seg_as")
def seg_as(**kw):
    return _net(all_slice=True, **_stage_kwargs(kw))


@register_model("seg_as_mt")
def seg_as_mt(**kw):
    return _net(all_slice=True, classifier=True, **_stage_kwargs(kw))


def _two_stage(seg_all_slice: bool, ref_all_slice: bool, ref_mt: bool, kw) -> TwoStageNet:
    residual = kw.get("ref_residual", True)
    kw = _stage_kwargs(kw)
    return TwoStageNet(_net(all_slice=seg_all_slice, **kw),
                       _net(in_channels=4, all_slice=ref_all_slice, classifier=ref_mt, residual_input=residual, **kw))


@register_model("seg_ss+ref_ss")
def seg_ss_ref_ss(**kw):
    return _two_stage(False, False, False, kw)


@register_model("seg_ss+ref_ss_mt")
def seg_ss_ref_ss_mt(**kw):
    return _two_stage(False, False, True, kw)


@register_model("seg_as+ref_as")
def seg_as_ref_as(**kw):
    return _two_stage(True, True, False, kw)


@register_model("seg_as+ref_as_mt")
def seg_as_ref_as_mt(**kw):
    return _two_stage(True, True, True, kw)


@register_model("det_seg")
def det_seg(crop=128, zoom=1.5, ref_residual=None, **kw):
    return DetSegNet(crop=crop, zoom=zoom, **kw)


def seg_stage_name(name: str) -> str | None:
    """``seg_as+ref_as_mt`` -> ``seg_as``; single-stage names -> ``None``."""
    return name.split("+", 1)[0] if "+" in name else None
