"""Heart-centred inference: at inference the networks see the field of view they were trained on.

Training feeds the networks crops of ``augment.crop`` pixels, most of them centred on the heart
(``heart_crop_prob``). The networks are not indifferent to the size of their input: every SK
convolution pools over the whole input to weigh its two branches, and the fusion transformer
attends over all of it. On the larger canvas the same weights see other statistics and the
masks move: on ACDC val the shipped model's Seg stage over-segmented the myocardium by 25.6 g of
LV mass on the 192-px canvas and by 2.7 g on a heart-centred 128-px crop
(``experiments/bias_table.py``, docs/RESULTS.md, issue 11).

So a prediction takes two passes: a locator (the Seg stage of a two-stage model, else the
model itself) runs on the whole canvas to find the heart, then the whole model runs on a crop of
the training size centred on the heart's foreground mass, and its outputs are pasted back into
the canvas (background elsewhere). Training uses the same function for validation and for the
Ref stage's input maps, so what is selected and what the Ref stage learns from is what users get.
"""

from __future__ import annotations

from typing import Iterator

import torch

from cmrseg.models.outputs import SUPPRESSED_LOGIT, SegOutput


def locate_heart(probs: torch.Tensor) -> tuple[float, float] | None:
    """Centre (row, col) of the foreground probability mass of a stack ``[S, 4, H, W]``, or
    ``None`` when there is less than one pixel's worth of foreground."""
    fg = (1.0 - probs[:, 0].float()).clamp_(min=0.0).sum(dim=0)  # [H, W]
    total = float(fg.sum())
    if total < 1.0:
        return None
    rows = torch.arange(fg.shape[0], dtype=fg.dtype, device=fg.device)
    cols = torch.arange(fg.shape[1], dtype=fg.dtype, device=fg.device)
    return float((fg.sum(dim=1) * rows).sum()) / total, float((fg.sum(dim=0) * cols).sum()) / total


def crop_window(center: tuple[float, float], crop: int, size: tuple[int, int]) -> tuple[int, int]:
    """Top-left corner of a ``crop``-pixel window centred on ``center``, kept inside ``size``."""
    return tuple(int(round(min(max(c - crop / 2.0, 0.0), float(n - crop)))) for c, n in zip(center, size))  # type: ignore[return-value]


def _paste(t: torch.Tensor | None, corner: tuple[int, int], size: tuple[int, int]) -> torch.Tensor | None:
    """Crop logits ``[S, K, crop, crop]`` into canvas logits: background (class 0) wins outside."""
    if t is None or t.ndim != 4:
        return t
    full = torch.full((t.shape[0], t.shape[1], *size), SUPPRESSED_LOGIT, dtype=torch.float32, device=t.device)
    full[:, 0] = 0.0
    y0, x0 = corner
    full[..., y0:y0 + t.shape[-2], x0:x0 + t.shape[-1]] = t.float()
    return full


def _locator(model):
    """The network that finds the heart: the Seg stage of a two-stage model, else the model."""
    seg = getattr(model, "seg", None)
    return model if seg is None else seg


def _locate(model, x: torch.Tensor, crop: int | None) -> tuple[tuple[int, int] | None, SegOutput | None]:
    """The crop window (top-left corner) around the heart of stack ``x``, or ``None`` (no crop
    smaller than the canvas, or no heart found); and the locator's output when the locator is
    the whole model (it is then the whole-canvas prediction, not to be computed twice)."""
    size = tuple(x.shape[-2:])
    if not crop or crop >= min(size):
        return None, None
    locator = _locator(model)
    first = locator(x)
    logits = first.logits
    if locator is model and first.seg_logits is not None and first.seg_logits.shape == logits.shape:
        logits = first.seg_logits  # a whole two-stage model as locator (ONNX): its Seg stage's maps
    center = locate_heart(logits.float().softmax(dim=1))
    if center is None:
        return None, first if locator is model else None
    return crop_window(center, crop, size), None


def _forward_at(model, x: torch.Tensor, corner: tuple[int, int], crop: int) -> SegOutput:
    """``model`` on the ``crop``-pixel window of ``x`` at ``corner``, pasted back into the canvas."""
    size = tuple(x.shape[-2:])
    y0, x0 = corner
    out = model(x[..., y0:y0 + crop, x0:x0 + crop])
    return SegOutput(_paste(out.logits, corner, size), out.class_logits,
                     seg_logits=_paste(out.seg_logits, corner, size),
                     ungated_logits=_paste(out.ungated_logits, corner, size),
                     extras={**out.extras, "window": corner})


def _mirror(corner: tuple[int, int], dims: tuple[int, ...], crop: int, size: tuple[int, int]) -> tuple[int, int]:
    """The window ``corner`` of a stack as it lies in the stack flipped along ``dims``."""
    y0, x0 = corner
    return (size[0] - crop - y0 if -2 in dims else y0, size[1] - crop - x0 if -1 in dims else x0)


@torch.no_grad()
def heart_centred_forward(model, x: torch.Tensor, crop: int | None) -> SegOutput:
    """``model`` on one stack ``x`` ``[S, 1, C, C]``, heart-centred (module docstring).

    Returns the model's :class:`SegOutput` with every map in canvas size (``[S, K, C, C]``) and
    ``extras["window"] = (row, col)`` of the crop. With ``crop`` ``None`` or not smaller than
    the canvas, or when the locator finds no heart, the model runs on the whole canvas.
    """
    window, first = _locate(model, x, crop)
    if window is None:
        return first if first is not None else model(x)
    return _forward_at(model, x, window, crop)


@torch.no_grad()
def heart_centred_flips(model, x: torch.Tensor, crop: int | None, flips: tuple[tuple[int, ...], ...],
                        locate_once: bool = False) -> Iterator[tuple[tuple[int, ...], SegOutput]]:
    """:func:`heart_centred_forward` of ``x`` flipped along each of ``flips`` (test-time
    augmentation); yields ``(dims, output)``, the output in the flipped frame. By default the
    heart is located in every flipped stack (the locator runs on the whole canvas once per flip,
    the costliest pass); ``locate_once`` locates it once, on ``x`` as it is, and gives every flip
    the same crop of the stack, mirrored: about a third less CPU time, masks a pixel apart where a
    located crop moved by a pixel (docs/decisions.md, rule 12)."""
    window, first = _locate(model, x, crop) if locate_once else (None, None)
    size = tuple(x.shape[-2:])
    for dims in flips:
        xf = x.flip(dims) if dims else x
        if not locate_once:
            yield dims, heart_centred_forward(model, xf, crop)
        elif window is not None:
            yield dims, _forward_at(model, xf, _mirror(window, dims, crop, size), crop)
        else:
            yield dims, first if first is not None and not dims else model(xf)
