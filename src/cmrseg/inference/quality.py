"""Quality control of a segmented study: a verdict a reader can act on, the reasons for it, and
flags that say where to look.

The verdict (:func:`qc_verdict`, issue 36):

* ``fail``: the masks cannot be a heart or a measurement: nothing segmented, a measure beyond
  loose physiological limits (``implausible_measure``: no heart experts have drawn comes near),
  the model expecting half its masks wrong (``unreliable_study``), or an anatomy flag on at least
  half of a phase's mid-ventricular slices;
* ``review``: a measure's likely error (:mod:`.error_estimates`: from the model's own
  probability bands, the two ventricles' stroke volumes and the basal slices, calibrated on
  studies with experts' masks) exceeds its limit (``--qc-limits``, by default the issue's
  definition of a failed study: LVEF 8, RVEF 10 points, LV mass 20 g, any volume 25 mL), or the
  measures rest on something uncertain or inconsistent (:data:`REVIEW_FLAGS`: the base and apex,
  the ED and ES frames, a study the model doubts as a whole, no voxel size, a heart slice left
  empty between heart slices, a class missing on a mid-ventricular slice, the RV ejecting far
  more than the LV), each reason naming the measures it puts in doubt (``RVEF likely off by more
  than 10 points``; ``class_missing_mid: RV; in doubt: RVEF, RVEDV, RVESV``);
* ``ok`` otherwise.

Measures outside the adult normal ranges are findings about the heart
(:func:`cmrseg.measures.clinical.findings`), reported apart; they never set the verdict.

The flags, for a reader (they point at slices; only those above set the verdict). Per slice
(``slice_flags``; ``slice`` is the voxel index k of the written mask, ``frame`` the cine
frame): no heart at all; a class missing on a mid-ventricular slice; a slice without heart
between heart slices; the LV cavity not a single blob enclosed by myocardium on a mid slice;
myocardial thickness outside a plausible range (mm); the RV away from the LV; fragments and
holes; a multitask classifier and the mask disagreeing. Per study (``study_flags``): ED and ES
adjacent frames of a cine, LV and RV stroke volumes that disagree, implausible measures, no
voxel size. From the model itself (``uncertainty_flags``, the probabilities
:class:`~cmrseg.inference.predictor.Prediction` sums into ``expected_errors``): a slice whose
expected errors reach half its mask (``uncertain_slice``), a study whose expected errors reach a
fifth (``uncertain_study``) or half (``unreliable_study``) of its masks.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy import ndimage

from cmrseg.labels import CLASS_NAMES, LV, MYO, RV
from cmrseg.measures.clinical import PLAUSIBLE, mean_wall_mm
from cmrseg.measures.metrics import share_of_mask
from cmrseg.measures.topology import slice_topology

# mean myocardial thickness of a mid-ventricular slice, mm: hypertrophic walls reach 30 mm and more
# at end-diastole (the ESC's marker of risk) and thicken further at end-systole; the ACDC experts'
# own HCM masks reach 26.6 mm at ES (docs/RESULTS.md, "Quality control and the experts' own measures")
WALL_MM = (2.0, 35.0)
RV_GAP_MM = 15.0  # the RV's nearest pixel this far from the LV myocardium: not beside it
ENCLOSED = 0.8  # share of the LV cavity's border that must be myocardium on a mid slice
#: |LVSV - RVSV| / max(LVSV, RVSV) above this: flagged; review when the RV's is the larger
#: (``stroke_volume_mismatch``). The experts' own masks of 34 % of ACDC's training studies have
#: the two more than 35 % apart (regurgitation, shunts, the basal slices); with the LV's larger
#: (``lv_stroke_volume_above_rv``) the flag marked no more failures than chance there (RESULTS,
#: "Quality control")
SV_TOLERANCE = 0.35
MIN_PIXELS = 5  # a "present" class with fewer mask pixels disagrees with its classifier
#: flags that fail a study on their own; the per-slice anatomy flags fail it when they hit at
#: least half of a phase's mid-ventricular slices
FAIL_FLAGS = {"no_heart", "implausible_measure", "unreliable_study"}
#: flags that send a study to review on their own: the measures rest on an ordering, a phase, a
#: voxel size or a whole study the model itself doubts, or miss a whole slice inside the heart
REVIEW_FLAGS = {"base_apex_unsure", "ed_es_adjacent", "uncertain_study", "no_spacing", "slice_gap",
                "class_missing_mid", "stroke_volume_mismatch"}
ANATOMY_FLAGS = {"lv_not_enclosed", "wall_thickness", "rv_not_beside_lv"}
ALL_MEASURES = ("LVEF", "RVEF", "LVM", "LVEDV", "LVESV", "RVEDV", "RVESV")
#: the measures a review flag puts in doubt, named in its reason so that a reader knows what to
#: check (issue 36); ``class_missing_mid`` names those of the missing class (its detail)
IN_DOUBT = {"stroke_volume_mismatch": ("LVEF", "RVEF", "LVEDV", "LVESV", "RVEDV", "RVESV"),
            "ed_es_adjacent": ("LVEF", "RVEF", "LVESV", "RVESV"),
            "base_apex_unsure": ALL_MEASURES, "uncertain_study": ALL_MEASURES, "no_spacing": ALL_MEASURES,
            "slice_gap": ALL_MEASURES}
CLASS_MEASURES = {"RV": ("RVEF", "RVEDV", "RVESV"), "MYO": ("LVM",), "LV": ("LVEF", "LVEDV", "LVESV")}
#: the ejection fraction computed from each volume, EF = 100 (EDV - ESV) / EDV: a volume likely off
#: by its limit puts that EF in doubt too (25 mL of a 150 mL EDV is 17 points of EF)
DERIVED = {"LVEDV": "LVEF", "LVESV": "LVEF", "RVEDV": "RVEF", "RVESV": "RVEF"}
#: share of a mask the model expects to be wrong (:func:`uncertainty_share`) from which a slice
#: is flagged, and a study sent to review / failed (round values, not fitted: half of a slice's
#: mask, and twice / five times the 10 % the default expects of a whole ACDC study)
UNCERTAIN_SLICE = 0.5
UNCERTAIN_STUDY = (0.2, 0.5)


def _flag(frame: str, s: int | None, name: str, detail: str) -> dict[str, Any]:
    return {"frame": frame, "slice": s, "flag": name, "detail": detail}


def uncertainty_share(expected_errors: float, mask_pixels: float) -> float:
    """The share of a mask the model expects to be wrong: its expected errors (pixels,
    :attr:`Prediction.expected_errors`) over the mask's pixels, 1 where they outnumber the mask
    (the errors may lie outside it: pixels it missed), 0 without either."""
    return share_of_mask(expected_errors, mask_pixels)


def uncertainty_flags(expected_errors: np.ndarray, mask: np.ndarray, frame: str = "") -> list[dict[str, Any]]:
    """``uncertain_slice`` for each slice of ``mask`` (``[S, H, W]``) with a heart whose share
    (:func:`uncertainty_share`) reaches ``UNCERTAIN_SLICE``."""
    area = (mask > 0).reshape(mask.shape[0], -1).sum(1)
    flags = []
    for s in np.flatnonzero(area):
        share = uncertainty_share(expected_errors[s], area[s])
        if share >= UNCERTAIN_SLICE:
            flags.append(_flag(frame, int(s), "uncertain_slice", f"the model expects {expected_errors[s]:.0f} px wrong "
                                                                 f"on a mask of {area[s]} px"))
    return flags


def study_uncertainty_flags(share: float) -> list[dict[str, Any]]:
    """The study's share (:func:`uncertainty_share` of its checked frames' sums) against
    ``UNCERTAIN_STUDY``."""
    review, fail = UNCERTAIN_STUDY
    if share < review:
        return []
    name = "unreliable_study" if share >= fail else "uncertain_study"
    return [_flag("", None, name, f"the model expects {100 * share:.0f} % of its masks wrong "
                                  f"(review from {100 * review:.0f} %, fail from {100 * fail:.0f} %)")]


def slice_flags(mask: np.ndarray, class_probs: np.ndarray | None = None, frame: str = "",
                pixel_mm: float | None = None) -> list[dict[str, Any]]:
    """Flags of one ``[S, H, W]`` mask (slices base -> apex; ``slice`` in-memory index, turned
    into the written mask's k by the caller). ``pixel_mm``: in-plane pixel size, for the
    thickness and distance checks (skipped without it)."""
    s_count = mask.shape[0]
    present = np.stack([(mask == c).reshape(s_count, -1).sum(1) for c in (RV, MYO, LV)], axis=1)  # [S, 3]
    heart = np.flatnonzero(present.sum(1) > 0)
    if heart.size == 0:
        return [_flag(frame, None, "no_heart", "nothing segmented")]
    flags: list[dict[str, Any]] = []
    mid = np.array_split(heart, 3)[1]
    for s in mid:
        flags += [_flag(frame, int(s), "class_missing_mid", name) for k, name in enumerate(CLASS_NAMES)
                  if present[s, k] == 0]
        flags += _anatomy_flags(mask[s], frame, int(s), pixel_mm)
    flags += [_flag(frame, s, "slice_gap", "no heart between heart slices")
              for s in range(int(heart[0]) + 1, int(heart[-1])) if present[s].sum() == 0]
    if class_probs is not None:
        for s in range(s_count):
            flags += [_flag(frame, s, "classifier_mask_disagree", f"{name}: p={class_probs[s, k]:.2f}, "
                                                                  f"{int(present[s, k])} px")
                      for k, name in enumerate(CLASS_NAMES) if class_probs[s, k] > 0.5 and present[s, k] < MIN_PIXELS]
    for s in heart:
        comps, hole = slice_topology(mask[s])
        flags += [_flag(frame, int(s), "fragments", f"{name}: {comps[k]} pieces")
                  for k, name in enumerate(CLASS_NAMES) if comps[k] > 1]
        if hole:
            flags.append(_flag(frame, int(s), "hole", "LV or LV+MYO encloses background"))
    return flags


def _anatomy_flags(sl: np.ndarray, frame: str, s: int, pixel_mm: float | None) -> list[dict[str, Any]]:
    """A mid-ventricular slice: LV cavity one blob ringed by myocardium, plausible wall
    thickness, RV beside the LV."""
    lv, myo, rv = sl == LV, sl == MYO, sl == RV
    flags = []
    if lv.any():
        n_blobs = ndimage.label(lv, structure=np.ones((3, 3), bool))[1]
        border = ndimage.binary_dilation(lv) & ~lv
        ringed = float(myo[border].mean()) if border.any() else 0.0
        if n_blobs > 1 or ringed < ENCLOSED:
            flags.append(_flag(frame, s, "lv_not_enclosed",
                               f"LV cavity in {n_blobs} pieces, {100 * ringed:.0f} % of its border myocardium"))
    if pixel_mm and lv.any() and myo.any():
        wall = mean_wall_mm(sl, pixel_mm)
        if not WALL_MM[0] <= wall <= WALL_MM[1]:
            flags.append(_flag(frame, s, "wall_thickness",
                               f"mean myocardial thickness {wall:.1f} mm outside {WALL_MM[0]:g}-{WALL_MM[1]:g} mm"))
    if pixel_mm and rv.any() and (myo | lv).any():
        gap = float(ndimage.distance_transform_edt(~(myo | lv))[rv].min()) * pixel_mm
        if gap > RV_GAP_MM:
            flags.append(_flag(frame, s, "rv_not_beside_lv", f"RV {gap:.0f} mm from the LV"))
    return flags


def study_flags(measures: dict[str, float], spacing_known: bool, frames: int = 1, ed: int = 0,
                es: int = 0) -> list[dict[str, Any]]:
    """Study-level flags from the clinical measures and the cine's ED / ES frames. Measures
    outside the adult normal ranges are findings (:func:`cmrseg.measures.clinical.findings`),
    not flags: they report the heart, not the measurement."""
    if not spacing_known:
        return [_flag("", None, "no_spacing", "volumes not computed")]
    out = []
    for key, (lo, hi) in PLAUSIBLE.items():
        v = measures.get(key)
        if v is not None and np.isfinite(v) and not lo < v < hi:
            out.append(_flag("", None, "implausible_measure", f"{key} = {v:.1f}, not between {lo:g} and {hi:g}"))
    if frames > 4 and ed != es and min(abs(ed - es), frames - abs(ed - es)) <= 1:
        out.append(_flag("", None, "ed_es_adjacent", f"ED frame {ed + 1} and ES frame {es + 1} are neighbours"))
    lsv, rsv = measures.get("LVSV (mL)"), measures.get("RVSV (mL)")
    if lsv is not None and rsv is not None and np.isfinite(lsv) and np.isfinite(rsv) and max(lsv, rsv) > 0:
        if abs(lsv - rsv) / max(lsv, rsv) > SV_TOLERANCE:
            # the RV ejecting more than the LV: most often an RV slice dropped at ES (review); the
            # LV ejecting more: as often the heart (mitral or aortic regurgitation) as the masks
            name = "stroke_volume_mismatch" if rsv > lsv else "lv_stroke_volume_above_rv"
            out.append(_flag("", None, name,
                             f"LV {lsv:.0f} mL vs RV {rsv:.0f} mL (more than {100 * SV_TOLERANCE:.0f} % apart)"))
    return out


def qc_verdict(flags: list[dict[str, Any]], mid_slices: dict[str, int] | None = None,
               estimates: dict[str, float] | None = None,
               limits: dict[str, float] | None = None) -> tuple[str, list[str]]:
    """(``fail`` | ``review`` | ``ok``, the reasons a reader is given). ``fail`` when the masks
    cannot be a heart or a measurement (:data:`FAIL_FLAGS`, or an anatomy flag on at least half
    of a phase's mid-ventricular slices); ``review`` when a measure's likely error
    (``estimates``, :mod:`.error_estimates`) exceeds its limit, or a flag of :data:`REVIEW_FLAGS` says the
    measures rest on something uncertain; ``ok`` otherwise. The other flags point a reader at
    slices; they do not set the verdict."""
    fails = sorted({f["detail"] for f in flags if f["flag"] in FAIL_FLAGS})
    for frame, n_mid in (mid_slices or {}).items():
        hit = {f["slice"] for f in flags if f["frame"] == frame and f["flag"] in ANATOMY_FLAGS}
        if n_mid and len(hit) * 2 >= n_mid:
            fails.append(f"{frame}: the LV, its wall or the RV implausible on {len(hit)} of {n_mid} mid slices")
    if fails:
        return "fail", fails
    limits, estimates = limits or {}, estimates or {}
    over = [m for m, limit in limits.items() if estimates.get(m, 0.0) > limit]
    reasons = [_likely_reason(m, limits[m], estimates[m], {o.split(" (")[0] for o in over}) for m in over]
    reasons += sorted({_review_reason(f) for f in flags if f["flag"] in REVIEW_FLAGS})
    return ("review" if reasons else "ok"), reasons


def _likely_reason(measure: str, limit: float, likely: float, named: set[str]) -> str:
    """``RVESV likely off by more than 25 mL (likely error 28.4); in doubt: RVEF``: the EF of a
    volume (:data:`DERIVED`) named unless a reason of its own names it (``named``)."""
    short = measure.split(" (")[0]
    text = f"{short} likely off by more than {limit:g} {_unit(measure)} (likely error {likely:.1f})"
    derived = DERIVED.get(short)
    return text + (f"; in doubt: {derived}" if derived and derived not in named else "")


def measures_in_doubt(flag: dict[str, Any]) -> tuple[str, ...]:
    """The measures (short names: ``LVEF``, ``RVESV``, ...) a review flag puts in doubt
    (:data:`IN_DOUBT`, :data:`CLASS_MEASURES`)."""
    if flag["flag"] == "class_missing_mid":
        return CLASS_MEASURES.get(str(flag["detail"]), ())
    return IN_DOUBT.get(flag["flag"], ())


def _review_reason(flag: dict[str, Any]) -> str:
    named = measures_in_doubt(flag)
    return f"{flag['flag']}: {flag['detail']}" + (f"; in doubt: {', '.join(named)}" if named else "")


def _unit(measure: str) -> str:
    unit = measure.split("(")[1].rstrip(")")
    return "points" if unit == "%" else unit


def verdict(flags: list[dict[str, Any]], mid_slices: dict[str, int] | None = None,
            estimates: dict[str, float] | None = None, limits: dict[str, float] | None = None) -> str:
    """The verdict of :func:`qc_verdict` alone."""
    return qc_verdict(flags, mid_slices, estimates, limits)[0]


def mid_slices(mask: np.ndarray) -> np.ndarray:
    """The slices ``slice_flags`` treats as mid-ventricular in ``mask``: the middle third of
    those with a heart."""
    heart = np.flatnonzero((mask > 0).reshape(mask.shape[0], -1).any(1))
    return np.array_split(heart, 3)[1] if heart.size else heart


def mid_slice_count(mask: np.ndarray) -> int:
    """How many slices ``slice_flags`` treats as mid-ventricular in ``mask``."""
    return len(mid_slices(mask))
