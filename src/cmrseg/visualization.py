"""Overlay pictures: masks on short-axis slices, RV red, MYO green, LV blue (the paper's
colours). Shared by the reproduce figure (Fig. 4 style) and the segmentation reports."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from cmrseg.atomic import atomic_path

COLORS = {1: (1.0, 0.15, 0.15), 2: (0.2, 0.9, 0.2), 3: (0.2, 0.45, 1.0)}


def pyplot():
    """matplotlib's pyplot with the Agg backend (no display needed), imported on first use: the
    commands that draw nothing do not pay its import."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def normalise_for_display(image: np.ndarray) -> np.ndarray:
    lo, hi = np.percentile(image, (1, 99.5))
    return np.clip((image - lo) / max(hi - lo, 1e-6), 0, 1)


def overlay(image: np.ndarray, mask: np.ndarray | None, alpha: float = 0.45) -> np.ndarray:
    """Grey image ``[H, W]`` + label mask -> RGB ``[H, W, 3]`` in [0, 1]."""
    g = normalise_for_display(image)
    rgb = np.repeat(g[..., None], 3, axis=-1)
    if mask is not None:
        for c, col in COLORS.items():
            m = mask == c
            rgb[m] = (1 - alpha) * rgb[m] + alpha * np.array(col)
    return rgb


def heart_box(masks: Sequence[np.ndarray], shape: tuple[int, int], margin: float = 0.35, min_size: int = 48):
    """A square (row0, row1, col0, col1) around every mask's foreground, for display."""
    fg = np.zeros(shape, dtype=bool)
    for m in masks:
        if m is not None:
            fg |= m > 0
    if not fg.any():
        return 0, shape[0], 0, shape[1]
    rows, cols = np.flatnonzero(fg.any(1)), np.flatnonzero(fg.any(0))
    cy, cx = (rows[0] + rows[-1]) / 2, (cols[0] + cols[-1]) / 2
    half = max(rows[-1] - rows[0], cols[-1] - cols[0], min_size) * (0.5 + margin)
    r0, c0 = int(max(0, cy - half)), int(max(0, cx - half))
    return r0, int(min(shape[0], cy + half)), c0, int(min(shape[1], cx + half))


def save_figure(fig, path: str | Path, dpi: int = 110) -> Path:
    plt = pyplot()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=dpi, bbox_inches="tight", format=Path(path).suffix.lstrip(".") or "png")
    plt.close(fig)
    return Path(path)


def comparison_grid(rows: Sequence[dict], columns: Sequence[str], path: str | Path, title: str | None = None) -> Path:
    """A Fig. 4-style grid: one row per example slice, one column per model + ground truth.

    ``rows``: dicts with ``image`` ``[H, W]``, ``masks`` {column: ``[H, W]``} and ``label``.
    """
    plt = pyplot()
    fig, axes = plt.subplots(len(rows), len(columns), figsize=(2.2 * len(columns), 2.3 * len(rows)), squeeze=False)
    for r, row in enumerate(rows):
        box = heart_box(list(row["masks"].values()), row["image"].shape)
        sl = (slice(box[0], box[1]), slice(box[2], box[3]))
        for c, col in enumerate(columns):
            ax = axes[r, c]
            mask = row["masks"].get(col)
            ax.imshow(overlay(row["image"][sl], None if mask is None else mask[sl]), interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(col, fontsize=9)
            if c == 0:
                ax.set_ylabel(row.get("label", ""), fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return save_figure(fig, path)
