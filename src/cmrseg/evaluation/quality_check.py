"""Quality control against the truth: do ``cmrseg segment``'s flags point at real errors?

When the predictions ``cmrseg evaluate`` scores are a ``cmrseg segment`` output folder, its
``summary.json`` holds every study's QC flags (slice k of each mask file, frame label), verdict
and uncertainty. Against the truth this tells a reader whether the flags deserve their time on
*their* data (another scanner, another cohort):

* per slice flag, how many slices it names and how many of those are bad (Dice below
  ``BAD_SLICE_DICE``, the mean over the classes in the mask or the truth), and how many of the
  bad slices any flag names;
* per verdict (ok / review / fail), the studies' volume Dice;
* the share of its masks the model expected to be wrong (``uncertainty``) against the share
  that is (the pixels where mask and truth differ over the mask's pixels);
* the verdict against the studies that really failed (issue 36, :func:`qc_performance`): a study
  fails when a measure is off by more than :data:`FAILURE_LIMITS` or a structure's Dice is below
  :data:`FAILURE_DICE`; recall, good studies sent to review, gross failures caught, AUROC of the
  estimated errors, and per measure how often the estimated interval covered the true error.

Only the frames quality control checked (ED and ES of a cine) count.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import numpy as np

from cmrseg.inference.error_estimates import DEFAULT_LIMITS
from cmrseg.inference.quality import CLASS_MEASURES
from cmrseg.labels import CLASS_NAMES
from cmrseg.measures.clinical import cardiac_measures
from cmrseg.measures.metrics import dice_per_class, share_of_mask

BAD_SLICE_DICE = 0.7
#: a study fails (issue 36) when a measure is off by more than these (points, g, mL: the limits
#: the verdict sends a study to review beyond) ...
FAILURE_LIMITS = DEFAULT_LIMITS
#: ... or a structure's volume Dice is below this in either phase
FAILURE_DICE = 0.80
#: a gross failure: a structure's Dice below this, or an ejection fraction off by more than ``GROSS_EF``
GROSS_DICE, GROSS_EF = 0.6, 15.0


def slice_dice(pred: np.ndarray, truth: np.ndarray) -> float:
    """Mean Dice (:func:`dice_per_class`) over the classes in either slice; NaN when both are empty."""
    scores = dice_per_class(pred, truth)
    return float(np.nanmean(scores)) if np.isfinite(scores).any() else float("nan")


def error_pixels(pred: np.ndarray, truth: np.ndarray) -> tuple[int, int]:
    """(pixels where ``pred`` and ``truth`` differ, pixels of the mask ``pred``): their ratio
    (:func:`share_of_mask`) is the share the model's ``uncertainty`` estimates."""
    return int((pred != truth).sum()), int((pred > 0).sum())


def segment_records(pred_dir: Path) -> dict[tuple[str, int], tuple[dict[str, Any], str]] | None:
    """``(mask file relative to pred_dir, frame index in it)`` -> (that study's record from
    ``cmrseg segment``'s ``summary.json``, the frame's label), for the frames QC checked;
    ``None`` when ``pred_dir`` is not such a folder (or one written before the records named
    their frames)."""
    try:
        summary = json.loads((Path(pred_dir) / "summary.json").read_text())
        cases = summary["studies"] if "studies" in summary else summary["cases"]  # "cases": written before the renaming
    except (OSError, ValueError, KeyError, TypeError):
        return None
    out = {}
    for study, rec in cases.items() if isinstance(cases, dict) else ():
        if not isinstance(rec, dict) or rec.get("status") != "ok" or not rec.get("output_frames"):
            continue
        for file, labels in rec["output_frames"].items():
            for t, label in enumerate(labels):
                if label in rec.get("qc_frames", ()):
                    out[(Path(file).as_posix(), t)] = ({**rec, "study": study}, label)
    return out or None


def _frame_flags(rec: dict[str, Any], label: str, num_slices: int, reversed_: bool) -> dict[int, set[str]]:
    """In-memory slice index (base -> apex) -> the names of the flags on it in frame ``label``
    (flags name the mask file's k)."""
    out: dict[int, set[str]] = {}
    for f in rec.get("flags") or []:
        if f.get("slice") is not None and f.get("frame") in (label, ""):
            s = num_slices - 1 - int(f["slice"]) if reversed_ else int(f["slice"])
            out.setdefault(s, set()).add(str(f["flag"]))
    return out


def _tally_case(case, rec: dict[str, Any], label: str, tally: dict[str, Any]) -> None:
    """Add one checked frame's slices, flags and error pixels to ``tally``."""
    reversed_ = case.source[2]
    flags = _frame_flags(rec, label, case.pred.shape[0], reversed_)
    for s in range(case.pred.shape[0]):
        if not (case.pred[s].any() or case.gt[s].any()):
            continue
        bad = slice_dice(case.pred[s], case.gt[s]) < BAD_SLICE_DICE
        tally["slices"] += 1
        tally["bad_slices"] += int(bad)
        tally["bad_flagged"] += int(bad and s in flags)
        for name in flags.get(s, ()):
            counts = tally["flags"].setdefault(name, {"slices": 0, "bad": 0})
            counts["slices"] += 1
            counts["bad"] += int(bad)
    wrong, area = error_pixels(case.pred, case.gt)
    study = tally["studies"].setdefault(rec["study"], {"qc": rec.get("qc"), "expected": rec.get("uncertainty"),
                                                       "wrong": 0, "area": 0, "volume_dice": []})
    study["wrong"] += wrong
    study["area"] += area


def check_quality(cases: list, results: list, pred_dir: Path) -> dict[str, Any] | None:
    """The QC flags, verdicts and uncertainty of ``cmrseg segment``'s ``summary.json`` in
    ``pred_dir`` against the truth of ``cases`` (:class:`~cmrseg.evaluation.evaluate.EvalVolume`
    with ``source``; ``results`` their :class:`VolumeResult` s); ``None`` when ``pred_dir`` holds
    no such records or none of them matches a case."""
    tally = tally_studies(cases, results, pred_dir)
    if tally is None:
        return None
    return {**_summary(tally), "measures": qc_performance(study_outcomes(tally["studies"]))}


def tally_studies(cases: list, results: list, pred_dir: Path) -> dict[str, Any] | None:
    """:func:`check_quality`'s tally: slices, flags, and per study its record, its checked
    phases' results and volume Dice; ``None`` when nothing matches a ``cmrseg segment`` record."""
    records = segment_records(pred_dir)
    if records is None:
        return None
    tally: dict[str, Any] = {"slices": 0, "bad_slices": 0, "bad_flagged": 0, "flags": {}, "studies": {}}
    for case, result in zip(cases, results):
        found = records.get((case.source[0], case.source[1])) if case.source else None
        if found is not None:
            _tally_case(case, *found, tally)
            study = tally["studies"][found[0]["study"]]
            study["volume_dice"].append(float(np.nanmean(result.volume_dice)))
            phase = {label: ph for ph, label in (found[0].get("phase_frames") or {}).items()}.get(found[1])
            if phase and result.pred_volumes is not None:
                study.setdefault("record", found[0])
                study.setdefault("phases", {})[phase] = result
    return tally if tally["studies"] else None


def _summary(tally: dict[str, Any]) -> dict[str, Any]:
    """JSON-ready summary of :func:`check_quality`'s tally."""
    verdicts: dict[str, Any] = {}
    for st in tally["studies"].values():
        v = verdicts.setdefault(str(st["qc"]), {"studies": 0, "dice": []})
        v["studies"] += 1
        v["dice"] += st["volume_dice"]
    scored = [st for st in tally["studies"].values() if st["expected"] is not None]
    return {
        "bad_slice_dice": BAD_SLICE_DICE, "slices": tally["slices"], "bad_slices": tally["bad_slices"],
        "bad_slices_flagged": tally["bad_flagged"], "flags": dict(sorted(tally["flags"].items())),
        "verdicts": {k: {"studies": v["studies"], "mean_volume_dice": float(np.mean(v["dice"])),
                         "lowest_volume_dice": float(np.min(v["dice"]))} for k, v in sorted(verdicts.items())},
        "uncertainty": {"studies": len(scored),
                        "expected": float(np.mean([st["expected"] for st in scored])) if scored else None,
                        "actual": (float(np.mean([share_of_mask(st["wrong"], st["area"]) for st in scored]))
                                   if scored else None)},
    }


def quality_table(qc: dict[str, Any]) -> list[str]:
    """Markdown lines of :func:`check_quality`'s summary."""
    bad = qc["bad_slice_dice"]
    md = ["\nQuality control against the truth (`cmrseg segment`'s flags in the predictions' summary.json; "
          f"a slice is bad when its Dice is below {bad:g}; frames QC checked)\n",
          "| flag | slices flagged | of them bad |", "|---|---|---|"]
    md += [f"| {name} | {c['slices']} | {c['bad']} |" for name, c in qc["flags"].items()]
    md += [f"\nBad slices any flag names: {qc['bad_slices_flagged']} of {qc['bad_slices']} "
           f"({qc['slices']} slices with a heart in the mask or the truth).\n",
           "| verdict | studies | mean volume Dice | lowest volume Dice |", "|---|---|---|---|"]
    md += [f"| {k} | {v['studies']} | {v['mean_volume_dice']:.3f} | {v['lowest_volume_dice']:.3f} |"
           for k, v in qc["verdicts"].items()]
    u = qc["uncertainty"]
    if u["studies"]:
        md.append(f"\nShare of the masks the model expected to be wrong: {100 * u['expected']:.1f} %; "
                  f"wrong: {100 * u['actual']:.1f} % (mean over {u['studies']} studies).")
    return md + (performance_table(qc["measures"]) if qc.get("measures") else [])


def study_outcomes(studies: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """Per study with its ED and ES volumes scored: the verdict and estimated errors ``cmrseg
    segment`` gave, the true errors of the measures (prediction - truth), the structures' volume
    Dice per phase, and whether and why it failed (:data:`FAILURE_LIMITS`, :data:`FAILURE_DICE`)
    or failed grossly (:data:`GROSS_DICE`, :data:`GROSS_EF`)."""
    out = []
    for name, st in sorted(studies.items()):
        phases = st.get("phases") or {}
        if set(phases) != {"ED", "ES"}:
            continue
        pred = cardiac_measures(phases["ED"].pred_volumes, phases["ES"].pred_volumes)
        true = cardiac_measures(phases["ED"].gt_volumes, phases["ES"].gt_volumes)
        errors = {m: pred[m] - true[m] for m in FAILURE_LIMITS}
        dice = {ph: dict(zip(CLASS_NAMES, (float(v) for v in r.volume_dice))) for ph, r in phases.items()}
        why = [f"{m} off by {errors[m]:+.1f}" for m, lim in FAILURE_LIMITS.items() if abs(errors[m]) > lim]
        why += [f"{c} Dice {d:.2f} at {ph}" for ph, ds in dice.items() for c, d in ds.items() if d < FAILURE_DICE]
        gross = any(d < GROSS_DICE for ds in dice.values() for d in ds.values()) or \
            any(abs(errors[m]) > GROSS_EF for m in ("LVEF (%)", "RVEF (%)"))
        rec = st["record"]
        out.append({"study": name, "qc": rec.get("qc"), "qc_reasons": rec.get("qc_reasons") or [],
                    "flags": sorted({f["flag"] for f in rec.get("flags") or []}),
                    "estimates": rec.get("estimated_errors") or {}, "likely": rec.get("likely_errors") or {},
                    "features": rec.get("error_features"),
                    "measures": rec.get("measures") or {}, "errors": errors, "dice": dice, "failed": bool(why),
                    "why": why, "gross": gross})
    return out


def names_gross_measure(outcome: dict[str, Any]) -> bool:
    """Whether the verdict's reasons name a measure the study got grossly wrong (issue 36): an
    ejection fraction off by more than :data:`GROSS_EF`, or a measure of a structure whose Dice
    is below :data:`GROSS_DICE` (:data:`~cmrseg.inference.quality.CLASS_MEASURES`). A ``fail``
    rejects every measure, so it names them all."""
    if outcome["qc"] == "fail":
        return True
    off = [m.split(" ")[0] for m in ("LVEF (%)", "RVEF (%)") if abs(outcome["errors"][m]) > GROSS_EF]
    off += [m for ds in (outcome.get("dice") or {}).values() for c, d in ds.items() if d < GROSS_DICE
            for m in CLASS_MEASURES[c]]
    text = " ".join(outcome.get("qc_reasons") or [])
    return any(re.search(rf"\b{m}\b", text) for m in off)


def _auroc(scores: list[float], labels: list[bool]) -> float | None:
    """The area under the ROC curve of ``scores`` for ``labels`` (the Mann-Whitney U over the
    product of the two groups' sizes); None without both groups."""
    from scipy.stats import mannwhitneyu

    pos = [s for s, y in zip(scores, labels) if y]
    neg = [s for s, y in zip(scores, labels) if not y]
    if not pos or not neg:
        return None
    return float(mannwhitneyu(pos, neg).statistic / (len(pos) * len(neg)))


def qc_performance(outcomes: list[dict[str, Any]], limits: dict[str, float] | None = None) -> dict[str, Any]:
    """How well the verdict and the estimated errors did (issue 36): per measure, how often the
    estimated interval covered the true error; the share of failed studies sent to review or
    failed (recall), the share of good ones sent (the reader's wasted time), the gross failures
    caught, and the AUROC of the largest likely error over its limit (the verdict's score; the
    interval where a record has no likely error) as a failure score."""
    limits = limits or FAILURE_LIMITS
    coverage = {}
    for m in limits:
        hits = [abs(o["errors"][m]) <= o["estimates"][m] for o in outcomes if m in o["estimates"]]
        widths = [o["estimates"][m] for o in outcomes if m in o["estimates"]]
        coverage[m] = {"studies": len(hits), "covered": float(np.mean(hits)) if hits else None,
                       "median": float(np.median(widths)) if widths else None}
    failed = [o for o in outcomes if o["failed"]]
    good = [o for o in outcomes if not o["failed"]]
    gross = [o for o in outcomes if o["gross"]]
    flagged = [o for o in outcomes if o["qc"] in ("review", "fail")]
    named = [o for o in gross if o in flagged and names_gross_measure(o)]
    scores = [max(((o.get("likely") or o["estimates"]).get(m, 0.0) / lim for m, lim in limits.items()), default=0.0)
              for o in outcomes]
    return {"studies": len(outcomes), "failed": len(failed), "good": len(good),
            "recall": len([o for o in failed if o in flagged]) / len(failed) if failed else None,
            "good_to_review": len([o for o in good if o in flagged]) / len(good) if good else None,
            "gross": len(gross), "gross_caught": len([o for o in gross if o in flagged]), "gross_named": len(named),
            "auroc": _auroc(scores, [o["failed"] for o in outcomes]), "coverage": coverage}


def number(value: float | None) -> str:
    """``4.6``, or ``–`` for none."""
    return "–" if value is None else f"{value:.1f}"


def percent(share: float | None) -> str:
    """``85 %``, or ``–`` for no share."""
    return "–" if share is None else f"{100 * share:.0f} %"


def performance_table(perf: dict[str, Any]) -> list[str]:
    """Markdown lines of :func:`qc_performance`."""
    if not perf["studies"]:
        return []
    pct = percent
    auroc = "–" if perf["auroc"] is None else f"{perf['auroc']:.2f}"
    md = [f"\nThe verdict against real failures ({perf['studies']} studies with ED and ES; a study fails when "
          "|LVEF error| > 8 or |RVEF error| > 10 points, |LV mass error| > 20 g, a volume is off by more than 25 mL, "
          "or a structure's Dice is below 0.80 in either phase): "
          f"{perf['failed']} failed, {pct(perf['recall'])} of them sent to review or failed; "
          f"{pct(perf['good_to_review'])} of the {perf['good']} good ones sent to review or failed; "
          f"gross failures caught {perf['gross_caught']} of {perf['gross']} ({perf['gross_named']} with the measure "
          f"named); AUROC of the estimated error {auroc}.\n",
          "| measure | studies | true error inside the estimated interval | median interval (+-) |",
          "|---|---|---|---|"]
    md += [f"| {m} | {c['studies']} | {pct(c['covered'])} | {number(c['median'])} |"
           for m, c in perf["coverage"].items()]
    return md
