"""How far off each measure of a study may be, in the measure's own units (issue 36).

From what the model and the masks say about one study:

* the **band** of each structure: its volume from the pixels the model is sure of against the
  pixels it thinks possible (:attr:`~cmrseg.inference.predictor.Prediction.bands`; for an
  ensemble the members' probabilities averaged, so their disagreement widens it; with flips,
  the flips' too), at ED and ES: half its width is the raw spread of EDV, ESV and LV mass, and
  propagated through EF = 100 (1 - ESV / EDV) the raw spread of LVEF and RVEF;
* the **stroke-volume mismatch** |LVSV - RVSV|: without a shunt or a leaking valve the two
  ventricles eject the same volume, so a mismatch says one of them (most often a basal
  end-systolic RV slice taken or dropped whole) is measured wrong; a calibration may count only
  the part beyond an allowance (``sv_allowance (mL)``: the mismatch the experts' own masks of its
  training patients show in half the hearts, :data:`ALLOWANCE_KEY`);
* the **basal stake** (:func:`basal_stake`): the volume on each structure's most basal slice,
  or on the slice further towards the base that the other phase has: the slice an expert and a
  model most often disagree on, whole, and the model may be sure of either way;

an estimate ``a + b raw + c mismatch + d stake`` (mismatch in mL for volumes, in points of the
EDV for ejection fractions) with constants fitted as the 85th percentile of the true errors
(:func:`fit_calibration`: quantile regression) on studies with experts' masks (optionally
widened until they cover 85 % of a patient left out of the fit, :func:`widened`; the shipped
calibrations are not: rule 20 in docs/decisions.md):
``qc_calibration.json`` beside the model's ``model.json`` / ``ensemble.json``
(``experiments/calibrate_qc.py`` makes it). A model without one takes the shipped default's, and
says so; without any, no estimates are made and the verdict rests on the flags alone.

Two estimates per measure, of the same form, fitted to two percentiles: the **interval**
shown to a reader (``RVEF 41.5 +- 13``; the 85th percentile, :data:`QUANTILE`) and the
**likely error** the verdict of :mod:`.quality` compares with its limit (:data:`DEFAULT_LIMITS`,
``--qc-limits``; the 60th percentile, :data:`VERDICT_QUANTILE`): a study goes to review when
its error is estimated to exceed a limit with a chance of 40 % or more, e.g. "RVEF likely off by
more than 10 points". An 85th-percentile bound over a limit says only that a large error cannot
be ruled out; on val under the shift benchmark, patient left out, that held for every good study.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from cmrseg.data.volume import Study, Volume, ed_es_by_patient
from cmrseg.errors import CmrsegError
from cmrseg.inference.predictor import DEFAULT_MODEL, WEIGHTS_DIR
from cmrseg.measures.clinical import MYOCARDIUM_DENSITY_G_PER_ML, cardiac_measures, disc_sum, structure_volumes_ml

CALIBRATION_FILE = "qc_calibration.json"
#: the error estimates' limits beyond which a study goes to review: the issue's definition of a
#: failed study (|LVEF error| > 8 or |RVEF error| > 10 points, |LV mass error| > 20 g, any
#: volume off by more than 25 mL)
DEFAULT_LIMITS = {"LVEF (%)": 8.0, "RVEF (%)": 10.0, "LVM (g)": 20.0, "LVEDV (mL)": 25.0, "LVESV (mL)": 25.0,
                  "RVEDV (mL)": 25.0, "RVESV (mL)": 25.0}
MEASURES = tuple(DEFAULT_LIMITS)
#: ``--qc-limits`` names: a measure's short name, or ``volume`` for the four volumes
SHORT = {"LVEF": ("LVEF (%)",), "RVEF": ("RVEF (%)",), "LVM": ("LVM (g)",), "LVEDV": ("LVEDV (mL)",),
         "LVESV": ("LVESV (mL)",), "RVEDV": ("RVEDV (mL)",), "RVESV": ("RVESV (mL)",),
         "volume": ("LVEDV (mL)", "LVESV (mL)", "RVEDV (mL)", "RVESV (mL)")}
#: the percentile of the true errors an interval is fitted to (an interval covering 85 % of the
#: studies it was fitted on, so that it covers the goal's 80 % of others; :func:`widened` makes
#: that hold for a patient left out, at a cost in width)
QUANTILE = 0.85
#: the percentile the verdict's likely error is fitted to: above the median, so that a study
#: whose error exceeds a limit with a chance of 40 % or more goes to review (chosen on the
#: shift benchmark of val, patient left out: see docs/explanation/quality-control.md)
VERDICT_QUANTILE = 0.6
#: the fewest studies with a measure's true error that its estimate is fitted on
MIN_STUDIES = 2
#: a calibration's stroke-volume allowance (mL): the mismatch its term does not count
ALLOWANCE_KEY = "sv_allowance (mL)"


def parse_limits(text: str | None) -> dict[str, float]:
    """``--qc-limits LVEF=8,RVEF=10,LVM=20,volume=25`` over :data:`DEFAULT_LIMITS` (a name left
    out keeps its default)."""
    limits = dict(DEFAULT_LIMITS)
    for item in (text or "").split(","):
        if not item.strip():
            continue
        name, _, value = item.partition("=")
        try:
            limit = float(value)
        except ValueError:
            limit = float("nan")
        if name.strip() not in SHORT or not np.isfinite(limit) or limit <= 0:
            raise CmrsegError(f"--qc-limits: {item.strip()!r} is not NAME=number > 0 with NAME one of "
                              f"{', '.join(SHORT)}")
        limits.update({m: limit for m in SHORT[name.strip()]})
    return limits


def _ef_spread(edv: float, esv: float, d_edv: float, d_esv: float) -> float:
    """The spread of EF = 100 (1 - ESV / EDV) from spreads of EDV and ESV (first order)."""
    if edv <= 0:
        return float("nan")
    return 100.0 * float(np.hypot(d_esv / edv, esv * d_edv / edv ** 2))


def error_features(study: Study, preds: list, meas: dict[str, Any]) -> dict[str, Any] | None:
    """The raw spread of each measure (:data:`MEASURES`) from the structures' bands at ED and
    ES, and the stroke-volume mismatch; None for a single frame or without a voxel size."""
    voxel_ml, ed, es, m = meas["voxel_ml"], meas["ed"], meas["es"], meas["measures"]
    if not voxel_ml or ed == es or any(p.bands is None for p in (preds[ed], preds[es])):
        return None

    def half_band(t: int) -> np.ndarray:  # [RV, MYO, LV] half-widths in mL
        sums = disc_sum(preds[t].bands, study.frames[t].meta.get("missing_slices") or ()) * voxel_ml  # [3, 2]
        return (sums[:, 1] - sums[:, 0]) / 2.0

    return {"raw": per_measure(half_band(ed), half_band(es), m),
            "stake": basal_stake(preds[ed].mask, preds[es].mask, voxel_ml, m),
            "sv_mismatch (mL)": float(abs(m["LVSV (mL)"] - m["RVSV (mL)"]))}


def per_measure(d_ed: np.ndarray, d_es: np.ndarray, m: dict[str, float]) -> dict[str, float]:
    """Spreads of each structure's volume ``[RV, MYO, LV]`` (mL) at ED and ES as spreads of each
    measure (:data:`MEASURES`): the volumes', LV mass's and, propagated, the EFs'."""
    out = {"LVEDV (mL)": d_ed[2], "LVESV (mL)": d_es[2], "RVEDV (mL)": d_ed[0], "RVESV (mL)": d_es[0],
           "LVM (g)": MYOCARDIUM_DENSITY_G_PER_ML * d_ed[1],
           "LVEF (%)": _ef_spread(m["LVEDV (mL)"], m["LVESV (mL)"], d_ed[2], d_es[2]),
           "RVEF (%)": _ef_spread(m["RVEDV (mL)"], m["RVESV (mL)"], d_ed[0], d_es[0])}
    return {k: float(v) for k, v in out.items() if np.isfinite(v)}


def basal_stake(ed_mask: np.ndarray, es_mask: np.ndarray, voxel_ml: float, m: dict[str, float]) -> dict[str, float]:
    """What rests on the most basal slice, per measure (:func:`per_measure`): for each structure
    and phase, the volume on its most basal slice (a slice the experts may leave out: atrium, or
    outflow tract), or, when the other phase has the structure one slice further towards the
    base, that slice's volume there (a slice the mask may have dropped), whichever is larger.
    Masks in memory order, base first."""
    counts = {p: np.stack([np.bincount(sl.ravel(), minlength=4)[1:4] for sl in np.asarray(mask, np.int64)])
              for p, mask in (("ED", ed_mask), ("ES", es_mask))}  # [S, (RV, MYO, LV)]

    def stake(phase: str, other: str) -> np.ndarray:
        out = np.zeros(3)
        for c in range(3):
            present = np.flatnonzero(counts[phase][:, c])
            if present.size:
                s0 = present[0]
                out[c] = max(counts[phase][s0, c], counts[other][s0 - 1, c] if s0 > 0 else 0)
        return out * voxel_ml

    return per_measure(stake("ED", "ES"), stake("ES", "ED"), m)


def experts_sv_allowance(volumes: list[Volume]) -> float:
    """The median |LVSV - RVSV| (mL) of the experts' masks of labelled ``volumes`` (each
    patient's ED and ES frames, ``meta["patient"]`` and ``meta["phase"]``): the mismatch a
    population's own hearts and its experts' basal slices bring, which a stroke-volume term
    should not read as an error (docs/decisions.md, rule 25). Patients without both phases or a
    voxel size are skipped; none left is an error."""
    mismatch = []
    for by_phase in ed_es_by_patient(volumes).values():
        ed, es = (structure_volumes_ml(by_phase[p].label, by_phase[p].geometry.voxel_volume_ml) for p in ("ED", "ES"))
        m = cardiac_measures(ed, es)
        mismatch.append(abs(m["LVSV (mL)"] - m["RVSV (mL)"]))
    if not mismatch:
        raise CmrsegError("no patient with experts' masks at ED and ES and a voxel size to take the "
                          "stroke-volume allowance from")
    return float(np.median(mismatch))


#: the features an estimate adds up, each with its constant (``a`` is the constant term)
TERMS = ("b", "c", "d")


def terms(measure: str, features: dict[str, Any], measures: dict[str, float],
          allowance: float = 0.0) -> list[float] | None:
    """The estimate's terms for ``measure``: raw spread, stroke-volume mismatch beyond
    ``allowance`` mL, basal stake (0 where a record made before the stake was added has none);
    ``None`` without a raw spread."""
    if measure not in features["raw"]:
        return None
    return [features["raw"][measure], consistency(measure, features, measures, allowance),
            (features.get("stake") or {}).get(measure, 0.0)]


def consistency(measure: str, features: dict[str, Any], measures: dict[str, float], allowance: float = 0.0) -> float:
    """The stroke-volume mismatch beyond ``allowance`` mL, in the measure's units: mL for
    volumes, points of the ventricle's EDV for an ejection fraction, none for LV mass."""
    mismatch = max(0.0, features["sv_mismatch (mL)"] - allowance)
    if measure == "LVM (g)":
        return 0.0
    if measure.endswith("EF (%)"):
        edv = measures.get(measure.replace("EF (%)", "EDV (mL)"), 0.0)
        return 100.0 * mismatch / edv if edv > 0 else 0.0
    return mismatch


def estimate(features: dict[str, Any], measures: dict[str, float], calibration: dict[str, Any],
             part: str = "measures") -> dict[str, float]:
    """Each measure's estimated error (its units): ``a + b raw + c mismatch + d stake`` with
    the calibration's constants (:func:`terms`): the interval (``part="measures"``) or the
    verdict's likely error (``part="verdict"``; ``{}`` from a calibration without one)."""
    out = {}
    constants = calibration.get(part) or {}
    allowance = calibration.get(ALLOWANCE_KEY, 0.0)
    for m in MEASURES:
        x = terms(m, features, measures, allowance)
        if x is None or m not in constants:
            continue
        k = constants[m]
        value = k["a"] + sum(k.get(name, 0.0) * v for name, v in zip(TERMS, x))
        if np.isfinite(value):
            out[m] = float(value)
    return out


def load_calibration(model_paths: list[str]) -> dict[str, Any]:
    """The calibration beside the model (the first of ``model_paths`` with one: an ensemble's
    folder, then its members), else the shipped default's, marked as such; ``{}`` when there is
    none at all (no estimates)."""
    for path in model_paths:
        found = Path(path) / CALIBRATION_FILE
        if found.is_file():
            return json.loads(found.read_text())
    shipped = WEIGHTS_DIR / DEFAULT_MODEL / CALIBRATION_FILE
    if not shipped.is_file():
        return {}
    default = json.loads(shipped.read_text())
    return {**default, "source": f"the shipped default's ({default.get('source', '')}), not this model's"}


def fit_qc_calibration(rows: list[dict[str, Any]], verdict_quantile: float = VERDICT_QUANTILE,
                       widen: bool = False, allowance: float = 0.0) -> dict[str, Any]:
    """Both estimates' constants (:func:`fit_calibration`): the interval's at :data:`QUANTILE`
    (``measures``; with ``widen``, widened to that coverage of a patient left out:
    :func:`widened`), and the verdict's at ``verdict_quantile`` (``verdict``); the stroke-volume
    term counting the mismatch beyond ``allowance`` mL."""
    interval = fit_calibration(rows, QUANTILE, allowance)
    if widen:
        interval = widened(interval, rows)
    return {**interval, "verdict_quantile": verdict_quantile,
            "verdict": fit_calibration(rows, verdict_quantile, allowance)["measures"]}


def widened(fitted: dict[str, Any], rows: list[dict[str, Any]]) -> dict[str, Any]:
    """``fitted`` (the intervals of :func:`fit_calibration` on ``rows``) with each measure's
    constants multiplied by the factor that makes it cover its quantile of a patient it was
    not fitted on (rule 20 in docs/decisions.md): a study's |true error| / estimate, with the fit
    made without its patient (``row["patient"]``, all of that patient's copies), and of those
    ratios the ``ceil(q (n + 1))``-th smallest of n, split-conformal's finite-sample rank
    (written here: one sort and one rank; a conformal library such as MAPIE would be a new
    dependency for that). The factor is kept as ``widened_by``; a measure
    whose factor is not finite (an estimate of 0 beside an error), or rows of fewer than two
    patients, stay as fitted."""
    patients = sorted({r["patient"] for r in rows if "patient" in r})
    if len(patients) < 2:
        return fitted
    quantile, allowance = fitted["quantile"], fitted.get(ALLOWANCE_KEY, 0.0)
    ratios: dict[str, list[float]] = {m: [] for m in fitted["measures"]}
    for patient in patients:
        other = fit_calibration([r for r in rows if r.get("patient") != patient], quantile, allowance)
        for r in (r for r in rows if r.get("patient") == patient):
            for m, est in estimate(r["features"], r["measures"], other).items():
                err = abs(r["errors"].get(m, np.nan))
                if m in ratios and np.isfinite(err):
                    ratios[m].append(err / est if est > 0 else (0.0 if err == 0 else np.inf))
    out = {}
    for m, k in fitted["measures"].items():
        r = np.sort(ratios[m])
        if len(r) < MIN_STUDIES:
            out[m] = k
            continue
        factor = float(r[min(int(np.ceil(quantile * (len(r) + 1))), len(r)) - 1])
        if not np.isfinite(factor):
            out[m] = k
            continue
        out[m] = {**{t: v * factor for t, v in k.items() if t in ("a", *TERMS)}, "studies": k["studies"],
                  "widened_by": factor}
    return {**fitted, "measures": out}


def fit_calibration(rows: list[dict[str, Any]], quantile: float = QUANTILE, allowance: float = 0.0) -> dict[str, Any]:
    """Constants ``a, b, c, d >= 0`` per measure with ``a + b raw + c mismatch + d stake`` the
    ``quantile`` of the absolute errors (quantile regression as a linear programme, scipy's HiGHS; written here
    because statsmodels' QuantReg, the usual tool, is not a dependency and allows no sign
    constraints). ``rows``: one per study, ``{"features", "measures", "errors"}`` (signed errors
    of the measures against the experts'); ``allowance``: the stroke-volume mismatch (mL) the
    term does not count, kept in the result (:data:`ALLOWANCE_KEY`) when not 0."""
    from scipy.optimize import linprog

    out = {}
    k = 1 + len(TERMS)
    for m in MEASURES:
        use = [(terms(m, r["features"], r["measures"], allowance), abs(r["errors"][m])) for r in rows
               if np.isfinite(r["errors"].get(m, np.nan))]
        use = [(x, y) for x, y in use if x is not None and np.all(np.isfinite(x))]
        if len(use) < MIN_STUDIES:
            continue  # too few to fit: no estimate of this measure
        x = np.array([[1.0, *t] for t, _ in use])
        y = np.array([e for _, e in use])
        n = len(y)
        cost = np.concatenate([np.zeros(k), quantile * np.ones(n), (1 - quantile) * np.ones(n)])
        a_eq = np.hstack([x, np.eye(n), -np.eye(n)])  # x beta + over - under = y
        res = linprog(cost, A_eq=a_eq, b_eq=y, bounds=[(0, None)] * (k + 2 * n), method="highs")
        out[m] = {"a": float(res.x[0]), **{t: float(v) for t, v in zip(TERMS, res.x[1:k])}, "studies": n}
    return {"quantile": quantile, **({ALLOWANCE_KEY: float(allowance)} if allowance else {}), "measures": out}
