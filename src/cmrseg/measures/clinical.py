"""Clinical measures from masks (``shared/docs/PROTOCOL.md``; column names carry units).

EDV / ESV of LV and RV, SV = EDV - ESV, EF = SV / EDV x 100 %, LV mass = MYO volume at ED
x 1.05 g/mL; a single frame (no ED/ES pair) gets its structure volumes and myocardial mass.
Where the subject's height and weight are known, the volumes and mass indexed to body surface
area (Mosteller); where the heart rate is known, the LV cardiac output.
Voxel volume from the image header (mm^3 -> mL).

This module owns the measures: their names and units (the CSV columns), their plausible and
normal ranges, which ones evaluation scores, and which ones reports show. Adding a measure is
a change here only.
"""

from __future__ import annotations

import numpy as np

from cmrseg.labels import LV, MYO, RV

MYOCARDIUM_DENSITY_G_PER_ML = 1.05

MEASURE_COLUMNS = (
    "LVEDV (mL)", "LVESV (mL)", "LVSV (mL)", "LVEF (%)", "LVM (g)",
    "RVEDV (mL)", "RVESV (mL)", "RVSV (mL)", "RVEF (%)",
)
#: a single frame's measures (no ED/ES pair)
FRAME_MEASURE_COLUMNS = ("LV volume (mL)", "RV volume (mL)", "MYO volume (mL)", "MYO mass (g)")
#: the regional wall (:mod:`cmrseg.measures.aha`): the thickest AHA segment at ED
WALL_COLUMNS = ("max ED wall (mm)",)
#: a maximal end-diastolic wall thickness from which the wall is in the hypertrophic range (the
#: ESC's diagnostic threshold for hypertrophic cardiomyopathy in adults)
HYPERTROPHY_WALL_MM = 15.0
#: per-frame structure volume columns (volume curves)
STRUCTURE_COLUMNS = {"LV": "LV (mL)", "RV": "RV (mL)", "MYO": "MYO (mL)"}
#: the measures a study report's table shows
REPORT_MEASURES = ("LVEDV (mL)", "LVESV (mL)", "LVEF (%)", "LVM (g)", "RVEDV (mL)", "RVESV (mL)", "RVEF (%)")
#: measure -> (low, high): at or beyond these loose physiological limits a result cannot be a
#: heart's, and is a failure. An ejection fraction at or below 0 % (no ejection) or at or above
#: 95 % (no end-systolic cavity) cannot come from a right pair of masks. Volumes and mass are
#: failed only far outside every heart experts have drawn: over ACDC's 80 labelled patients
#: (Bernard et al., IEEE TMI 2018; DCM, HCM, infarction, RV disease) LVEDV 51-374 mL, RVEDV
#: 47-295 mL, LV mass 37-272 g, LVEF 10.7-81.9 %, RVEF 1.9-85.9 %; an external HCM study's
#: experts gave 403 g at LVEF 85 % (failed at the earlier 350 g limit). The limits sit at
#: less than a third of the smallest and more than twice the largest of these. Between NORMAL
#: and these: a finding, not a failure.
PLAUSIBLE = {"LVEF (%)": (0.0, 95.0), "RVEF (%)": (0.0, 95.0), "LVM (g)": (12.0, 1000.0),
             "LVEDV (mL)": (15.0, 1000.0), "RVEDV (mL)": (15.0, 1000.0)}
#: measure -> (low, high): adult normal ranges, both sexes pooled and rounded outward, of the
#: order CMR reference-value reviews report (e.g. Kawel-Boehm et al., JCMR 2020); outside them a
#: measure is a finding about the heart (:func:`findings`), never a quality-control verdict
NORMAL = {"LVEF (%)": (50.0, 80.0), "RVEF (%)": (45.0, 80.0), "LVM (g)": (50.0, 200.0),
          "LVEDV (mL)": (80.0, 240.0), "RVEDV (mL)": (80.0, 260.0)}

#: measures indexed to body surface area (BSA), as CMR reference ranges give them, where the
#: subject's height and weight are known: indexed column -> the measure it divides
INDEXED = {"LVEDVi (mL/m2)": "LVEDV (mL)", "LVESVi (mL/m2)": "LVESV (mL)", "LVSVi (mL/m2)": "LVSV (mL)",
           "LVMi (g/m2)": "LVM (g)", "RVEDVi (mL/m2)": "RVEDV (mL)", "RVESVi (mL/m2)": "RVESV (mL)",
           "RVSVi (mL/m2)": "RVSV (mL)"}
#: the subject's body and heart rate, and what they give (``body_measures``)
BODY_COLUMNS = ("height (cm)", "weight (kg)", "BSA (m2)", *INDEXED, "heart rate (bpm)", "LVCO (L/min)")
#: of those, what a study report shows beside ``REPORT_MEASURES`` when a study has them
REPORT_BODY_MEASURES = ("BSA (m2)", "LVEDVi (mL/m2)", "LVMi (g/m2)", "RVEDVi (mL/m2)", "LVCO (L/min)")
#: plausible body and heart-rate values of a header; others are treated as unknown
BODY_LIMITS = {"height_cm": (50.0, 250.0), "weight_kg": (2.0, 400.0), "heart_rate_bpm": (20.0, 250.0)}

#: measures whose errors the protocol reports, with the unit of the error
ERROR_MEASURES = {"LVEF (%)": "pp", "RVEF (%)": "pp", "LVEDV (mL)": "mL", "LVESV (mL)": "mL",
                  "RVEDV (mL)": "mL", "RVESV (mL)": "mL", "LVM (g)": "g"}


def structure_volumes_ml(mask: np.ndarray, voxel_ml: float, missing: list[int] | tuple[int, ...] = ()) -> dict[str, float]:
    """{"LV", "MYO", "RV"} volumes in mL of a ``[S, H, W]`` mask.

    ``missing``: slices with no image in the input (a gap in a DICOM series): their areas are
    interpolated linearly between the nearest present slices, as the disc summation does
    for a missing disc, instead of counting them empty."""
    mask = np.asarray(mask, dtype=np.int64)
    per_slice = np.stack([np.bincount(m.ravel(), minlength=4)[:4] for m in mask]).astype(float)  # [S, 4]
    counts = disc_sum(per_slice, missing)
    return {"LV": counts[LV] * voxel_ml, "MYO": counts[MYO] * voxel_ml, "RV": counts[RV] * voxel_ml}


def disc_sum(per_slice: np.ndarray, missing: list[int] | tuple[int, ...] = ()) -> np.ndarray:
    """Per-slice counts ``[S, ...]`` summed over the slices, a ``missing`` slice's counts taken
    linearly between its nearest present neighbours (:func:`structure_volumes_ml`)."""
    per_slice = np.array(per_slice, dtype=float)
    present = np.array([k for k in range(per_slice.shape[0]) if k not in set(missing)])
    for k in missing:
        below, above = present[present < k], present[present > k]
        if below.size and above.size:
            lo, hi = below.max(), above.min()
            per_slice[k] = per_slice[lo] + (per_slice[hi] - per_slice[lo]) * (k - lo) / (hi - lo)
    return per_slice.sum(axis=0)


def findings(measures: dict[str, float]) -> list[str]:
    """The measures outside the adult normal ranges (:data:`NORMAL`), one sentence each: what the
    heart shows (disease, or an athlete's heart), reported apart from quality control, which asks
    whether the measurement can be trusted."""
    out = []
    for key, (lo, hi) in NORMAL.items():
        v = measures.get(key)
        if v is not None and np.isfinite(v) and not lo <= v <= hi:
            out.append(f"{key.split(' (')[0]} {v:.1f} {key.split('(')[1].rstrip(')')} "
                       f"{'below' if v < lo else 'above'} the adult normal {lo:g}-{hi:g}")
    wall = measures.get("max ED wall (mm)")
    if wall is not None and np.isfinite(wall) and wall >= HYPERTROPHY_WALL_MM:
        out.append(f"maximal ED wall thickness {wall:.1f} mm: {HYPERTROPHY_WALL_MM:g} mm or more (hypertrophic range)")
    return out


def mean_wall_mm(sl: np.ndarray, pixel_mm: float) -> float:
    """Mean myocardial thickness of a slice with LV and MYO: the radii of the circles of the
    cavity's and the cavity-plus-wall's areas, apart."""
    lv, lv_myo = int((sl == LV).sum()), int(np.isin(sl, (LV, MYO)).sum())
    return float(np.sqrt(lv_myo / np.pi) - np.sqrt(lv / np.pi)) * pixel_mm


def _ef(edv: float, esv: float) -> float:
    return (edv - esv) / edv * 100.0 if edv > 0 else float("nan")


def frame_measures(volumes: dict[str, float]) -> dict[str, float]:
    """A single frame's measures from its structure volumes (mL)."""
    return {"LV volume (mL)": volumes["LV"], "RV volume (mL)": volumes["RV"], "MYO volume (mL)": volumes["MYO"],
            "MYO mass (g)": volumes["MYO"] * MYOCARDIUM_DENSITY_G_PER_ML}


def body_surface_area_m2(height_cm: float, weight_kg: float) -> float:
    """Mosteller's body surface area, sqrt(height x weight / 3600) (cm, kg -> m^2)."""
    return float(np.sqrt(height_cm * weight_kg / 3600.0))


def body_measures(measures: dict[str, float], facts: dict) -> dict[str, float]:
    """Height, weight, BSA and the BSA-indexed measures (:data:`INDEXED`) where ``facts``
    (a volume's ``meta``: ``height_cm``, ``weight_kg``, ``heart_rate_bpm`` from ``Info.cfg``,
    ``metadata.csv`` or the DICOM header) holds plausible values (:data:`BODY_LIMITS`); the
    heart rate and the LV cardiac output (LVSV x heart rate) where the heart rate is known."""
    known = {}
    for key, (lo, hi) in BODY_LIMITS.items():
        try:
            v = float(facts.get(key))
        except (TypeError, ValueError):
            continue
        if np.isfinite(v) and lo <= v <= hi:
            known[key] = v
    out: dict[str, float] = {}
    if "height_cm" in known and "weight_kg" in known:
        bsa = body_surface_area_m2(known["height_cm"], known["weight_kg"])
        out = {"height (cm)": known["height_cm"], "weight (kg)": known["weight_kg"], "BSA (m2)": bsa}
        out.update({col: measures[src] / bsa for col, src in INDEXED.items() if src in measures})
    if "heart_rate_bpm" in known:
        out["heart rate (bpm)"] = known["heart_rate_bpm"]
        if "LVSV (mL)" in measures:
            out["LVCO (L/min)"] = measures["LVSV (mL)"] * known["heart_rate_bpm"] / 1000.0
    return out


def cardiac_measures(ed: dict[str, float], es: dict[str, float]) -> dict[str, float]:
    """Measures from ED and ES structure volumes (mL) as produced by
    :func:`structure_volumes_ml`."""
    return {
        "LVEDV (mL)": ed["LV"], "LVESV (mL)": es["LV"], "LVSV (mL)": ed["LV"] - es["LV"],
        "LVEF (%)": _ef(ed["LV"], es["LV"]), "LVM (g)": ed["MYO"] * MYOCARDIUM_DENSITY_G_PER_ML,
        "RVEDV (mL)": ed["RV"], "RVESV (mL)": es["RV"], "RVSV (mL)": ed["RV"] - es["RV"],
        "RVEF (%)": _ef(ed["RV"], es["RV"]),
    }
