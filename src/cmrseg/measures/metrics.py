"""Overlap and surface metrics on label stacks, computed with MONAI's kernels.

* Dice: ``monai.metrics.compute_dice`` with ``ignore_empty=False`` (it gives 0 for an empty
  truth with a non-empty prediction, as the protocol wants); the protocol's "skip when
  prediction and truth are both empty" is applied on top (NaN).
* HD95: ``monai.metrics.compute_hausdorff_distance`` (percentile 95, symmetric) with the
  voxel spacing, so it is in mm; NaN when either mask is empty.
"""

from __future__ import annotations

import warnings

import numpy as np
import torch

from cmrseg.labels import CLASS_NAMES, NUM_CLASSES
from cmrseg.measures.levels import LEVELS, slice_levels

FOREGROUND = (1, 2, 3)


def _as_tensor(mask: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(mask, dtype=np.int64))[None, None]


def share_of_mask(wrong: float, mask_pixels: float) -> float:
    """``wrong`` pixels (expected or counted) over a mask's pixels, 1 where they outnumber it
    (wrong pixels may lie outside the mask: pixels it missed), 0 without any wrong."""
    return float(wrong / max(mask_pixels, wrong)) if wrong > 0 else 0.0


def dice_per_class(pred: np.ndarray, gt: np.ndarray) -> np.ndarray:
    """Dice of RV, MYO, LV over all voxels of ``pred``/``gt`` (any shape, same shape).

    Returns float64 ``[3]``; NaN where prediction and truth are both empty.
    """
    from monai.metrics import compute_dice

    if pred.shape != gt.shape:
        raise ValueError(f"prediction shape {pred.shape} != truth shape {gt.shape}")
    if pred.size == 0:
        return np.full(3, np.nan)
    d = compute_dice(_as_tensor(pred), _as_tensor(gt), include_background=False,
                     ignore_empty=False, num_classes=NUM_CLASSES)[0].double().numpy()
    for i, c in enumerate(FOREGROUND):
        if not (pred == c).any() and not (gt == c).any():
            d[i] = np.nan
    return d


def hd95_per_class(pred: np.ndarray, gt: np.ndarray, spacing: tuple[float, float, float] | None) -> np.ndarray:
    """95th-percentile symmetric Hausdorff distance of RV, MYO, LV over a ``[S, H, W]``
    stack; in mm with ``spacing`` (slice, row, column), else in voxels. NaN where either
    mask is empty."""
    from monai.metrics import compute_hausdorff_distance
    from monai.networks.utils import one_hot

    out = np.full(3, np.nan)
    present = [(pred == c).any() and (gt == c).any() for c in FOREGROUND]
    if not any(present):
        return out
    p = one_hot(_as_tensor(pred), NUM_CLASSES)
    g = one_hot(_as_tensor(gt), NUM_CLASSES)
    sp = None if spacing is None or not np.all(np.isfinite(spacing)) else [float(s) for s in spacing]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # MONAI warns about empty masks, which we mark NaN
        hd = compute_hausdorff_distance(p, g, include_background=False, percentile=95, spacing=sp)[0].double().numpy()
    for i, ok in enumerate(present):
        if ok:
            out[i] = hd[i]
    return out


def level_dice_fast(cases: list[tuple[np.ndarray, np.ndarray]]) -> dict[str, dict[str, float]]:
    """The protocol's level and volume Dice table from (pred, gt) stacks via per-slice
    confusion counts (one ``np.bincount`` per stack).

    Written by hand because training validates every few epochs and the MONAI path with
    its one-hot tensors costs seconds per call; a test checks it equals
    :func:`cmrseg.evaluation.evaluate.evaluate_volumes` to 1e-6 (MONAI runs in float32). Used only for epoch
    selection; reports use the MONAI path.
    """
    per_level: dict[str, list[list[float]]] = {lv: [[], [], []] for lv in (*LEVELS, "volume")}
    for pred, gt in cases:
        s = gt.shape[0]
        idx = (pred.reshape(s, -1).astype(np.int64) * 4 + gt.reshape(s, -1).astype(np.int64))
        conf = np.stack([np.bincount(row, minlength=16) for row in idx]).reshape(s, 4, 4)  # [slice, pred, gt]
        levels = slice_levels(gt)
        groups = {lv: [i for i, l in enumerate(levels) if l == lv] for lv in LEVELS}
        groups["volume"] = list(range(s))
        for lv, sl in groups.items():
            if not sl:
                continue
            c = conf[sl].sum(axis=0)
            for k, cls in enumerate(FOREGROUND):
                p, g, both = c[cls].sum(), c[:, cls].sum(), c[cls, cls]
                if p + g:
                    per_level[lv][k].append(2.0 * both / (p + g))
    out = {}
    for lv, vals in per_level.items():
        row = {name: (float(np.mean(v)) if v else float("nan")) for name, v in zip(CLASS_NAMES, vals)}
        finite = [row[n] for n in CLASS_NAMES if np.isfinite(row[n])]
        row["avg"] = float(np.mean(finite)) if len(finite) == 3 else float("nan")
        out[lv] = row
    return out
