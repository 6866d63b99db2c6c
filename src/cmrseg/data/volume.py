"""In-memory representation of cardiac short-axis data with its geometry.

Array convention everywhere in cmrseg: a stack is ``[S, H, W]`` = (slice, row, column),
slice 0 the most basal slice. The affine maps voxel indices ``(i=column, j=row, k=slice)``
to RAS+ millimetres, as nibabel does, so a NIfTI array ``data[i, j, k]`` is our
``stack[k, j, i]``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np


@dataclass
class Geometry:
    """Where the voxels of a stack are.

    Attributes:
        spacing: (slice, row, column) voxel size in mm, aligned with the array axes,
            or ``None`` when unknown (then everything works in pixel units and says so).
            The slice spacing alone may be NaN (in-plane given, slice spacing not).
        affine: 4x4 voxel (i, j, k) -> RAS+ mm matrix of the array *as stored in memory*
            (after any base->apex reordering), or ``None`` when the format has none.
        spacing_source: where the spacing came from: ``header``, ``metadata.csv``,
            ``option`` or ``unknown``.
        slices_reversed: the file stores the slices apex->base; the in-memory array was
            reversed and writers reverse masks back.
        header: format-specific template used to write masks back (a nibabel header).
        notes: what the reader decided that a user should know (a header read as ITK reads
            it, a sheared grid, files of a series left out), one sentence each; ``cmrseg
            segment`` puts them in the study's note.
    """

    spacing: tuple[float, float, float] | None = None
    affine: np.ndarray | None = None
    spacing_source: str = "unknown"
    slices_reversed: bool = False
    header: Any = None
    notes: tuple[str, ...] = ()

    @property
    def spacing_known(self) -> bool:
        """In-plane spacing is known (the slice spacing may still be unknown: NaN)."""
        return self.spacing is not None

    @property
    def inplane_spacing(self) -> tuple[float, float] | None:
        """(row, column) pixel size in mm, or ``None``."""
        return None if self.spacing is None else (float(self.spacing[1]), float(self.spacing[2]))

    @property
    def voxel_volume_ml(self) -> float | None:
        """Volume of one voxel in mL, or ``None`` when any spacing is unknown."""
        if self.spacing is None or not np.all(np.isfinite(self.spacing)):
            return None
        return float(np.prod(self.spacing)) / 1000.0

    @property
    def units(self) -> str:
        return "mm" if self.spacing_known else "pixels"


@dataclass
class Volume:
    """One 3D short-axis stack (one time point) of one study.

    Attributes:
        image: float32 ``[S, H, W]``, base -> apex.
        geometry: see :class:`Geometry`.
        path: the file (or DICOM folder) it came from.
        name: the case name outputs are named after (``patient001_frame01``).
        fmt: ``nifti``, ``h5`` or ``dicom``: the format masks are written back in.
        label: optional uint8 ``[S, H, W]`` ground truth (0 bg, 1 RV, 2 MYO, 3 LV).
        meta: what is known about the case: ``patient``, ``phase`` (``ED``/``ES``/None),
            ``frame`` (1-based cine frame or None), ``group``, ``height_cm``, ``weight_kg``,
            ``frame_index`` inside a 4D file, ``trigger_time_ms`` for DICOM.
    """

    image: np.ndarray
    geometry: Geometry
    path: Path
    name: str
    fmt: str
    label: np.ndarray | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def num_slices(self) -> int:
        return int(self.image.shape[0])

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(int(s) for s in self.image.shape)  # type: ignore[return-value]


@dataclass
class Study:
    """All time points of one subject's short-axis acquisition.

    ``frames`` are in time order; ``ed`` and ``es`` index into them when known (from
    ``Info.cfg``, ``metadata.csv`` or ``manifest.json``); otherwise the segmenter picks them
    from the LV volume curve.
    """

    name: str
    frames: list[Volume]
    source: Path
    kind: str  # "cine" (one 4D file or DICOM series), "frames" (separate files), "single"
    ed: int | None = None
    es: int | None = None
    info: dict[str, Any] = field(default_factory=dict)

    def frame_label(self, t: int) -> str:
        """How outputs name frame ``t``: ``frame N`` with its cine frame number (1-based), else
        its position in the study."""
        f = self.frames[t].meta.get("frame")
        return f"frame {f}" if f is not None else f"frame {t + 1}"

    def file_k(self, s: int) -> int:
        """The voxel index k in the input file (and the written mask) of in-memory slice ``s``
        (memory runs base -> apex: the reader may have reversed the file's order)."""
        return self.frames[0].num_slices - 1 - s if self.frames[0].geometry.slices_reversed else s


def ed_es_by_patient(volumes) -> dict[str, dict[str, Volume]]:
    """``{patient: {"ED": volume, "ES": volume}}`` of the labelled ``volumes`` with a voxel size
    (``meta["patient"]``, ``meta["phase"]``); a patient without both phases is left out."""
    phases: dict[str, dict[str, Volume]] = {}
    for v in volumes:
        if v.label is not None and v.meta.get("phase") in ("ED", "ES") and v.geometry.voxel_volume_ml:
            phases.setdefault(str(v.meta.get("patient")), {})[v.meta["phase"]] = v
    return {p: by for p, by in phases.items() if len(by) == 2}
