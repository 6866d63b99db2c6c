"""The AHA 17-segment model of the left ventricle (Cerqueira et al., Circulation 2002): regional
wall thickness and thickening per segment (issue 37).

**Rings.** The slices that hold an LV cavity, from the base (the first such slice) to the last,
are split into thirds along the long axis: basal (segments 1-6), mid (7-12), apical (13-16).
Slices beyond the last cavity slice that still hold myocardium are the apical cap, segment 17:
reported as present or absent, without a radial thickness (there is no cavity to measure from).

**Orientation.** On each slice the RV insertion points are the two ends of the arc of
myocardium the RV touches (myocardium within two pixels of the RV), seen from the LV cavity's
centre: the septum runs between them, its centre half-way. Which end is the anterior one comes
from the image geometry, the patient's anterior direction projected into the slice plane (the
NIfTI or DICOM affine). Without a geometry (h5 files) the slices are taken as the standard
display shows them, viewed from the apex, where anterior -> septum -> inferior turns
counterclockwise; the result says so (``orientation``). A slice the RV does not touch (apical
slices, mostly) takes the insertion points of the nearest slice that has them.

**Segments.** Six sectors of 60 degrees on basal and mid slices, the boundary between the
anteroseptal and the inferoseptal segment at the septum's centre; four of 90 degrees on apical
slices, the septal one centred on the septum.

**Thickness**: along radial chords from the cavity's centre, 120 rays 3 degrees apart: the
length of the first run of myocardium each ray crosses, the mask sampled every 0.1 mm with
linear interpolation (scipy ``map_coordinates``: sub-pixel on straight walls). A segment's
thickness on a slice is the mean of its rays when at least half of them cross myocardium (a
basal slice open to the outflow tract has rays that do not), else absent; a segment's thickness
in a phase is the mean over its ring's slices. Thickening = ES - ED (mm) and (ES - ED) / ED (%).
Radial chords lengthen where the wall is crossed obliquely (an oval cavity); centreline methods
do not, at the cost of a skeleton per slice; on circular walls both agree.

Written here rather than taken from a library: ukbb_cardiac computes AHA thickness from VTK
contours with MIRTK tools (a TensorFlow 1 era pipeline, not installable beside this project);
MONAI, scikit-image and SimpleITK have no AHA model.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy import ndimage

from cmrseg.labels import LV, MYO, RV

SEGMENT_NAMES = {
    1: "basal anterior", 2: "basal anteroseptal", 3: "basal inferoseptal", 4: "basal inferior",
    5: "basal inferolateral", 6: "basal anterolateral", 7: "mid anterior", 8: "mid anteroseptal",
    9: "mid inferoseptal", 10: "mid inferior", 11: "mid inferolateral", 12: "mid anterolateral",
    13: "apical anterior", 14: "apical septal", 15: "apical inferior", 16: "apical lateral", 17: "apex",
}
RINGS = ("basal", "mid", "apical")
RAYS = 120
STEP_MM = 0.1
MAX_RAY_MM = 120.0
#: a slice's segment is measured when at least this share of its rays cross myocardium
MIN_RAY_SHARE = 0.5
CONTACT_PX = 2  # myocardium this close to the RV (pixels) is where the RV touches it


@dataclass
class SliceWall:
    """One slice of one phase: its ring, the septum's centre and turning sense, and each
    segment's thickness (mm, NaN when absent)."""

    slice: int
    ring: str
    septum_deg: float | None
    turn: int  # +1: anterior -> septum -> inferior counterclockwise as displayed, -1 clockwise
    insertion_from: int | None  # the slice whose insertion points it uses
    thickness: dict[int, float] = field(default_factory=dict)


def slice_rings(mask: np.ndarray) -> list[str | None]:
    """Per slice (memory order, base -> apex): ``basal``, ``mid``, ``apical``, ``apex`` (segment
    17: myocardium beyond the last cavity slice) or ``None``."""
    cavity = [s for s in range(mask.shape[0]) if (mask[s] == LV).any()]
    out: list[str | None] = [None] * mask.shape[0]
    if not cavity:
        return out
    first, last = cavity[0], cavity[-1]
    n = last - first + 1
    for s in range(first, last + 1):
        out[s] = RINGS[min(2, (s - first) * 3 // n)]
    for s in range(last + 1, mask.shape[0]):
        if (mask[s] == MYO).any():
            out[s] = "apex"
    return out


def _centre_mm(sl: np.ndarray, spacing_rc: tuple[float, float]) -> tuple[float, float] | None:
    """The LV cavity's centroid as (x, y) in mm, x to the image's right, y up."""
    rows, cols = np.nonzero(sl == LV)
    if rows.size == 0:
        return None
    return float(cols.mean()) * spacing_rc[1], -float(rows.mean()) * spacing_rc[0]


def insertion_arc(sl: np.ndarray, centre: tuple[float, float], spacing_rc: tuple[float, float]
                  ) -> tuple[float, float] | None:
    """(start, end) angles in degrees (x right, y up) of the arc of myocardium the RV touches,
    counterclockwise from start to end: the RV insertion points; ``None`` without contact."""
    contact = (sl == MYO) & ndimage.binary_dilation(sl == RV, iterations=CONTACT_PX)
    rows, cols = np.nonzero(contact)
    if rows.size < 3:
        return None
    angles = np.sort(np.degrees(np.arctan2(-rows * spacing_rc[0] - centre[1], cols * spacing_rc[1] - centre[0])))
    gaps = np.diff(np.concatenate([angles, angles[:1] + 360.0]))
    widest = int(np.argmax(gaps))  # the arc is everything but the widest gap between contacts
    return float(angles[(widest + 1) % angles.size]), float(angles[widest])


def anterior_direction(affine: np.ndarray | None) -> tuple[float, float] | None:
    """The patient's anterior direction in the slice plane as displayed (x right along the
    columns, y up against the rows), unit length; ``None`` without an affine or when the plane
    holds almost none of it. ``affine``: voxel (column i, row j, slice k) -> RAS+ mm."""
    if affine is None:
        return None
    cols, rows = (np.asarray(affine[:3, a], float) for a in (0, 1))
    x, y = cols[1] / np.linalg.norm(cols), -rows[1] / np.linalg.norm(rows)
    norm = math.hypot(x, y)
    return None if norm < 0.2 else (x / norm, y / norm)


def _orientation(arc: tuple[float, float], anterior: tuple[float, float] | None) -> tuple[float, int]:
    """(the septum's centre in degrees, +1 or -1: the turn from the anterior insertion through
    the septum to the inferior one) for an insertion arc."""
    start, end = arc
    span = (end - start) % 360.0
    centre = start + span / 2.0
    if anterior is None:
        return centre, 1  # viewed from the apex: anterior -> septum -> inferior counterclockwise
    ax, ay = anterior
    cx, cy = math.cos(math.radians(centre)), math.sin(math.radians(centre))
    # the anterior insertion is the end on the anterior side of the septum's centre: when
    # anterior lies counterclockwise of it, the turn from there through the septum is clockwise
    return centre, -1 if cx * ay - cy * ax > 0 else 1


def segment_of(angle_deg: np.ndarray, ring: str, septum_deg: float, turn: int) -> np.ndarray:
    """The AHA segment of each angle (degrees, as displayed) on a slice of ``ring``."""
    u = ((np.asarray(angle_deg) - septum_deg) * turn) % 360.0  # from the septum's centre, anterior -> inferior
    if ring == "apical":
        return np.array([14, 15, 16, 13])[(((u + 45.0) % 360.0) // 90.0).astype(int)]
    first = {"basal": 1, "mid": 7}[ring]
    return first + np.array([2, 3, 4, 5, 0, 1])[(u // 60.0).astype(int) % 6]


def radial_thickness(sl: np.ndarray, centre: tuple[float, float], spacing_rc: tuple[float, float],
                     rays: int = RAYS) -> tuple[np.ndarray, np.ndarray]:
    """(ray angles in degrees, wall thickness along each ray in mm: its first run of
    myocardium; NaN for a ray that crosses none)."""
    angles = np.arange(rays) * 360.0 / rays
    t = np.arange(0.0, MAX_RAY_MM, STEP_MM)
    theta = np.radians(angles)[:, None]
    x = centre[0] + np.cos(theta) * t
    y = centre[1] + np.sin(theta) * t
    rows, cols = -y / spacing_rc[0], x / spacing_rc[1]
    inside = ndimage.map_coordinates((sl == MYO).astype(np.float32), [rows.ravel(), cols.ravel()], order=1,
                                     mode="constant", cval=0.0).reshape(rows.shape) > 0.5
    idx = np.arange(t.size)[None, :]
    has = inside.any(axis=1)
    first = np.argmax(inside, axis=1)
    after = (~inside) & (idx >= first[:, None])
    end = np.where(after.any(axis=1), np.argmax(after, axis=1), t.size)
    return angles, np.where(has, (end - first) * STEP_MM, np.nan)


def phase_walls(mask: np.ndarray, spacing_rc: tuple[float, float],
                anterior: tuple[float, float] | None) -> list[SliceWall]:
    """Every slice of one phase's mask ``[S, H, W]`` (base -> apex) that holds an LV cavity or
    the apical cap, with its segments' thickness."""
    rings = slice_rings(mask)
    centres = {s: _centre_mm(mask[s], spacing_rc) for s, r in enumerate(rings) if r in RINGS}
    arcs = {s: insertion_arc(mask[s], c, spacing_rc) for s, c in centres.items() if c is not None}
    own = [s for s, a in arcs.items() if a is not None]
    out = []
    for s, ring in enumerate(rings):
        if ring == "apex":
            out.append(SliceWall(s, ring, None, 1, None, {17: float("nan")}))
            continue
        if ring is None or centres.get(s) is None or not own:
            continue
        source = min(own, key=lambda k: (abs(k - s), k))
        septum, turn = _orientation(arcs[source], anterior)
        angles, thick = radial_thickness(mask[s], centres[s], spacing_rc)
        segments = segment_of(angles, ring, septum, turn)
        values = {}
        for n in np.unique(segments):
            rays = thick[segments == n]
            measured = rays[np.isfinite(rays)]
            values[int(n)] = float(measured.mean()) if measured.size >= MIN_RAY_SHARE * rays.size else float("nan")
        out.append(SliceWall(s, ring, septum, turn, source, values))
    return out


def segment_means(walls: list[SliceWall]) -> dict[int, float]:
    """Each segment's thickness in one phase: the mean over its ring's slices (NaN when no
    slice measured it; segment 17 NaN when present, absent from the dict when not)."""
    out: dict[int, float] = {}
    for n in SEGMENT_NAMES:
        values = [w.thickness[n] for w in walls if n in w.thickness]
        if values:
            finite = [v for v in values if np.isfinite(v)]
            out[n] = float(np.mean(finite)) if finite else float("nan")
    return out


def _finite(v: float | None) -> float | None:
    """A value, or ``None`` where there is none to give (absent, or not measurable)."""
    return float(v) if v is not None and np.isfinite(v) else None


def segment_row(aha: dict[str, Any], n: int) -> dict[str, Any]:
    """Segment ``n``'s row of an analysis, also as read back from JSON (keys then strings)."""
    segments = aha["segments"]
    return segments[n] if n in segments else segments[str(n)]


def aha_analysis(ed: np.ndarray, es: np.ndarray | None, spacing_rc: tuple[float, float],
                 affine: np.ndarray | None = None) -> dict[str, Any]:
    """The study's AHA analysis from its ED (and ES) masks: per segment its name, ED and ES
    thickness (mm), absolute (mm) and relative (%) thickening (``None`` where a segment is absent
    or not measurable: the apical cap, an outflow-tract gap); per slice the rows behind them; the
    maximal ED thickness and its segment; how the segments were oriented."""
    anterior = anterior_direction(affine)
    walls = {"ED": phase_walls(ed, spacing_rc, anterior)}
    if es is not None:
        walls["ES"] = phase_walls(es, spacing_rc, anterior)
    means = {phase: segment_means(w) for phase, w in walls.items()}
    segments = {}
    for n, name in SEGMENT_NAMES.items():
        e, s = means["ED"].get(n), means.get("ES", {}).get(n)
        row = {"name": name, "present": e is not None or s is not None, "ED (mm)": _finite(e), "ES (mm)": _finite(s)}
        if row["ED (mm)"] is not None and row["ES (mm)"] is not None:
            row.update({"thickening (mm)": s - e, "thickening (%)": _finite(100.0 * (s - e) / e if e > 0 else None)})
        segments[n] = row
    ed_values = {n: v for n, v in means["ED"].items() if np.isfinite(v)}
    top = max(ed_values, key=ed_values.get) if ed_values else None
    orientation = ("anterior from the image geometry" if anterior is not None else
                   "no image geometry: slices taken as viewed from the apex (standard display)")
    masks = {"ED": ed, "ES": es}
    notes = [f"{phase}: the RV touches the myocardium on no slice, so the segments cannot be numbered"
             for phase, w in walls.items() if (masks[phase] == LV).any() and not any(x.ring in RINGS for x in w)]
    return {"segments": segments, "orientation": orientation,
            "max ED wall (mm)": ed_values[top] if top is not None else None, "max ED wall segment": top,
            "slices": [{"phase": phase, "slice": w.slice, "ring": w.ring, "segment": n, "thickness (mm)": _finite(v),
                        "insertion from slice": w.insertion_from}
                       for phase, ws in walls.items() for w in ws for n, v in sorted(w.thickness.items())],
            "notes": notes}
