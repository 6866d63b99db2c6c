"""Preprocessing shared by training and inference, and its exact inverse for outputs.

1. In-plane resampling to ``target_spacing`` mm (the paper: 1.3 mm) when the spacing is
   known; without spacing the native grid is used (pixel units, reported as such).
2. Robust intensity normalisation: clip to the volume's 0.5/99.5 percentiles, scale to [0, 1];
   for a model whose configuration holds ``landmarks``, then histogram standardisation
   (:func:`standardise_histogram`: the stack's foreground percentiles mapped onto its
   training stacks' mean ones, so another sequence's intensity curve gives the network the
   intensities it was trained on).
3. Centre crop/pad to a square ``canvas`` (the network size). The crop never looks at labels.

:func:`invert_to_input` maps per-class probabilities from the canvas back to the input grid
(bilinear on probabilities, then argmax by the caller), so masks land in the input geometry.
Resampling uses :func:`torch.nn.functional.interpolate` (bilinear with antialiasing), which
runs batched over slices on the CPU or the GPU.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F

from cmrseg.data.validation import MAX_STACK_VOXELS
from cmrseg.errors import CmrsegError, InputError
from cmrseg.labels import NUM_CLASSES


#: the foreground percentiles histogram standardisation maps (Nyul, Udupa and Zhang, IEEE TMI 2000)
LANDMARK_PERCENTILES = (1.0, 10.0, 20.0, 30.0, 40.0, 50.0, 60.0, 70.0, 80.0, 90.0)


@dataclass(frozen=True)
class PreprocessConfig:
    """Attributes:
    target_spacing: in-plane mm per pixel after resampling (``None``: keep the native grid).
    canvas: square crop/pad size in pixels the networks see.
    percentiles: intensity clipping percentiles before scaling to [0, 1].
    landmarks: the training stacks' mean foreground percentiles :data:`LANDMARK_PERCENTILES`
        after normalisation (``None``: no histogram standardisation); fitted by
        ``experiments/fit_intensity_landmarks.py``.
    landmark_window_mm: the landmarks are taken in the central square of this size (mm), where
        a short-axis field of view puts the heart (``None``: the whole slice).
    """

    target_spacing: float | None = 1.3
    canvas: int = 256
    percentiles: tuple[float, float] = (0.5, 99.5)
    landmarks: tuple[float, ...] | None = None
    landmark_window_mm: float | None = None

    def __post_init__(self):
        if self.landmarks is not None:
            values = np.asarray(self.landmarks, dtype=np.float64)
            if (values.shape != (len(LANDMARK_PERCENTILES),) or np.any(np.diff(values) <= 0)
                    or values[0] <= 0 or values[-1] >= 1):
                raise CmrsegError(f"preprocess.landmarks must be {len(LANDMARK_PERCENTILES)} increasing values "
                                  f"between 0 and 1 (the percentiles {LANDMARK_PERCENTILES}), got {list(self.landmarks)}")
        if self.landmark_window_mm is not None and not self.landmark_window_mm > 0:
            raise CmrsegError(f"preprocess.landmark_window_mm must be positive, got {self.landmark_window_mm}")

    def to_dict(self) -> dict:
        """The fields, without the histogram standardisation ones when unused (the form every
        model.json, cache and run fingerprint had before them)."""
        d = asdict(self)
        for key in ("landmarks", "landmark_window_mm"):
            if d[key] is None:
                del d[key]
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "PreprocessConfig":
        d = dict(d)
        for key in ("percentiles", "landmarks"):
            if d.get(key) is not None:
                d[key] = tuple(float(v) for v in d[key])
        return cls(**d)


@dataclass(frozen=True)
class CanvasMap:
    """How a stack of in-plane shape ``input_shape`` was put on the canvas: resampled to
    ``resampled_shape``, then ``src`` ranges copied into ``dst`` ranges of the canvas."""

    input_shape: tuple[int, int]
    resampled_shape: tuple[int, int]
    canvas: int
    src: tuple[tuple[int, int], tuple[int, int]]  # (start, stop) per axis in the resampled image
    dst: tuple[tuple[int, int], tuple[int, int]]  # (start, stop) per axis on the canvas


def resampled_shape(shape: tuple[int, int], spacing: tuple[float, float] | None, target: float | None) -> tuple[int, int]:
    if spacing is None or target is None:
        return (int(shape[0]), int(shape[1]))
    return tuple(max(1, int(round(n * s / target))) for n, s in zip(shape, spacing))  # type: ignore[return-value]


def _center_ranges(n: int, c: int) -> tuple[tuple[int, int], tuple[int, int]]:
    if n >= c:
        start = (n - c) // 2
        return (start, start + c), (0, c)
    start = (c - n) // 2
    return (0, n), (start, start + n)


def canvas_map(shape: tuple[int, int], spacing: tuple[float, float] | None, cfg: PreprocessConfig) -> CanvasMap:
    rs = resampled_shape(shape, spacing, cfg.target_spacing)
    (sy, dy), (sx, dx) = _center_ranges(rs[0], cfg.canvas), _center_ranges(rs[1], cfg.canvas)
    return CanvasMap(tuple(shape), rs, cfg.canvas, (sy, sx), (dy, dx))  # type: ignore[arg-type]


def normalize_intensity(image: np.ndarray, percentiles: tuple[float, float] = (0.5, 99.5)) -> np.ndarray:
    """Clip a whole stack to its intensity percentiles and scale to [0, 1] (float32)."""
    lo, hi = np.percentile(image, percentiles)
    if hi <= lo:
        lo, hi = float(image.min()), float(image.max())
    if hi <= lo:
        return np.zeros_like(image, dtype=np.float32)
    return ((np.clip(image, lo, hi) - lo) / (hi - lo)).astype(np.float32)


def central_window(x: np.ndarray, spacing: tuple[float, float] | None, window_mm: float | None) -> np.ndarray:
    """The central ``window_mm`` square of every slice of ``x`` ``[..., H, W]``; all of it without a
    window or a pixel size."""
    if window_mm is None or spacing is None:
        return x
    h, w = x.shape[-2:]
    ph, pw = min(h, max(1, round(window_mm / spacing[0]))), min(w, max(1, round(window_mm / spacing[1])))
    y0, x0 = (h - ph) // 2, (w - pw) // 2
    return x[..., y0:y0 + ph, x0:x0 + pw]


def intensity_landmarks(x: np.ndarray, spacing: tuple[float, float] | None = None,
                        window_mm: float | None = None) -> np.ndarray | None:
    """The percentiles :data:`LANDMARK_PERCENTILES` of a normalised stack's foreground (the voxels
    above the mean of its central ``window_mm``, :func:`central_window`); ``None`` without one."""
    x = central_window(x, spacing, window_mm)
    foreground = x[x > x.mean()]
    return np.percentile(foreground, LANDMARK_PERCENTILES) if foreground.size else None


def mean_intensity_landmarks(stacks: Iterable[tuple[np.ndarray, tuple[float, float] | None]],
                             percentiles: tuple[float, float] = (0.5, 99.5),
                             window_mm: float | None = None) -> np.ndarray:
    """The mean of :func:`intensity_landmarks` over training ``stacks`` (image, in-plane spacing),
    each normalised as :func:`preprocess_image` does: the ``landmarks`` a model standardises
    onto. Stacks without a foreground are skipped; none with one is an error."""
    found = [intensity_landmarks(normalize_intensity(image, percentiles), spacing, window_mm) for image, spacing in stacks]
    found = [f for f in found if f is not None]
    if not found:
        raise CmrsegError("no training stack has a foreground to take intensity landmarks from")
    return np.mean(found, axis=0)


def standardise_histogram(x: np.ndarray, landmarks, spacing: tuple[float, float] | None = None,
                          window_mm: float | None = None) -> np.ndarray:
    """Nyul-Udupa histogram standardisation of a stack normalised to [0, 1]: its landmarks
    (:func:`intensity_landmarks`) mapped piecewise-linearly onto ``landmarks``, 0 and 1 kept. A
    monotonic change of the intensity curve (another sequence, another gamma) then gives nearly
    the same result as the original. A stack without a one-to-one map (flat, or tied landmarks)
    is returned as it is.

    Written here (one ``np.interp``): TorchIO's ``HistogramStandardization`` trains on image files
    through its own readers and would be a new dependency for it."""
    found = intensity_landmarks(x, spacing, window_mm)
    if found is None:
        return x
    src = np.concatenate([[0.0], found, [1.0]])
    dst = np.concatenate([[0.0], np.asarray(landmarks, dtype=np.float64), [1.0]])
    if np.any(np.diff(src) <= 0) or np.any(np.diff(dst) <= 0):
        return x
    return np.interp(x, src, dst).astype(np.float32)


def _resize(x: torch.Tensor, size: tuple[int, int], mode: str) -> torch.Tensor:
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    if mode == "nearest":
        return F.interpolate(x, size=size, mode="nearest-exact")
    antialias = size[0] < x.shape[-2] or size[1] < x.shape[-1]
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=antialias)


def _to_canvas(x: torch.Tensor, cmap: CanvasMap, fill: float = 0.0) -> torch.Tensor:
    out = x.new_full((*x.shape[:-2], cmap.canvas, cmap.canvas), fill)
    (sy0, sy1), (sx0, sx1) = cmap.src
    (dy0, dy1), (dx0, dx1) = cmap.dst
    out[..., dy0:dy1, dx0:dx1] = x[..., sy0:sy1, sx0:sx1]
    return out


def check_working_set(num_slices: int, cmap: CanvasMap, where=None) -> None:
    """Refuse a stack whose input or resampled grid would need an unbounded working set
    (``MAX_STACK_VOXELS``; the probabilities of 4 classes are held on both grids)."""
    for name, (h, w) in (("input", cmap.input_shape), ("resampled", cmap.resampled_shape)):
        if num_slices * h * w > MAX_STACK_VOXELS:
            raise InputError(where, f"a stack of {num_slices} slices of {h} x {w} pixels ({name} grid) is larger than "
                                    f"the {MAX_STACK_VOXELS:,} voxels cmrseg segments at once; check the voxel size or "
                                    "crop the image")


def preprocess_image(
    image: np.ndarray, spacing: tuple[float, float] | None, cfg: PreprocessConfig, where=None
) -> tuple[torch.Tensor, CanvasMap]:
    """``[S, H, W]`` image -> float32 ``[S, 1, canvas, canvas]`` in [0, 1] and its map.
    ``where`` names the file in the error when the stack is too large (:func:`check_working_set`)."""
    cmap = canvas_map(image.shape[-2:], spacing, cfg)
    check_working_set(image.shape[0], cmap, where)
    x = normalize_intensity(image, cfg.percentiles)
    if cfg.landmarks is not None:
        x = standardise_histogram(x, cfg.landmarks, spacing, cfg.landmark_window_mm)
    x = torch.from_numpy(x)[:, None]
    x = _resize(x, cmap.resampled_shape, "bilinear").clamp_(0.0, 1.0)
    return _to_canvas(x, cmap), cmap


def preprocess_label(label: np.ndarray, cmap: CanvasMap) -> torch.Tensor:
    """``[S, H, W]`` uint8 label -> int64 ``[S, canvas, canvas]`` (one-hot bilinear + argmax,
    smoother than nearest neighbour when downsampling)."""
    y = torch.from_numpy(np.asarray(label, dtype=np.int64))
    if tuple(cmap.resampled_shape) != tuple(label.shape[-2:]):
        onehot = F.one_hot(y, NUM_CLASSES).permute(0, 3, 1, 2).float()
        y = _resize(onehot, cmap.resampled_shape, "bilinear").argmax(1)
    return _to_canvas(y[:, None], cmap, 0)[:, 0]


def derivable_canvas(src: PreprocessConfig, dst: PreprocessConfig) -> bool:
    """Whether canvases preprocessed with ``src`` can stand in for ``dst``'s by resampling
    (:func:`recanvas`): the same intensity percentiles and landmarks, pixels at least as coarse (no detail
    invented) and a field of view no wider (no image beyond the source canvas needed)."""
    if (src.target_spacing is None or dst.target_spacing is None or tuple(src.percentiles) != tuple(dst.percentiles)
            or (src.landmarks, src.landmark_window_mm) != (dst.landmarks, dst.landmark_window_mm)):
        return False
    return (dst.target_spacing >= src.target_spacing
            and dst.canvas * dst.target_spacing <= src.canvas * src.target_spacing + 1e-6)


def recanvas(image: torch.Tensor, label: np.ndarray, src: PreprocessConfig,
             dst: PreprocessConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """A stack already on ``src``'s canvas (image ``[S, 1, C, C]`` in [0, 1], label ``[S, C, C]``)
    moved onto ``dst``'s (:func:`derivable_canvas`): the canvas is treated as an input of
    ``src.target_spacing`` mm pixels and resampled and centre-cropped as any input is, the
    intensities kept (they are normalised already). Both canvases are centred on the input's
    centre, so the result matches preprocessing the original with ``dst`` up to the rounding
    of the two centre crops (at most a pixel) and the second interpolation."""
    if not derivable_canvas(src, dst):
        raise ValueError(f"canvases made with {src} cannot be resampled to {dst}")
    cmap = canvas_map(tuple(label.shape[-2:]), (src.target_spacing, src.target_spacing), dst)
    x = _to_canvas(_resize(image, cmap.resampled_shape, "bilinear").clamp_(0.0, 1.0), cmap)
    return x, preprocess_label(label, cmap)


def invert_to_input(probs: torch.Tensor, cmap: CanvasMap) -> torch.Tensor:
    """Canvas probabilities ``[S, C, canvas, canvas]`` -> ``[S, C, H, W]`` on the input grid.

    Regions of the input outside the canvas get background probability 1.
    """
    fill = torch.zeros(probs.shape[1], dtype=probs.dtype, device=probs.device)
    fill[0] = 1.0
    full = fill.view(1, -1, 1, 1).expand(probs.shape[0], -1, *cmap.resampled_shape).clone()
    (sy0, sy1), (sx0, sx1) = cmap.src
    (dy0, dy1), (dx0, dx1) = cmap.dst
    full[..., sy0:sy1, sx0:sx1] = probs[..., dy0:dy1, dx0:dx1]
    return _resize(full, cmap.input_shape, "bilinear")
