"""Calibrate a model's error estimates for quality control (issue 36): ``qc_calibration.json``.

From ``cmrseg segment`` outputs of studies with experts' masks (the shift benchmark's folders:
val as it is and under every scanner-like shift, plus any other segment / truth folder pairs),
each study's raw spreads and stroke-volume mismatch (its record's ``error_features``) against
its true errors, this fits each measure's estimates ``a + b raw + c mismatch + d stake``: the
interval, at the 85th percentile of the true errors, and the verdict's likely error, at the 60th
(:func:`cmrseg.inference.error_estimates.fit_qc_calibration`), and reports how they do on
patients they were not fitted on: leave one patient out (all of that patient's shifted copies),
the intervals' coverage and the verdict (review when a likely error exceeds its limit or a review
flag is raised; the record's own ``fail`` kept) against the studies that really failed, with the
verdict's percentile also at other values, to show the trade-off.

    python experiments/calibrate_qc.py BENCH_OUT [BENCH_OUT ...] [--pairs PRED GT ...] \\
        [--write MODEL_FOLDER/qc_calibration.json --source "what it was fitted on"] [--report FILE.md] \\
        [--cache OUTCOMES.json] [--held-out OTHER_BENCH_OUT ... --held-out-name "what they are"]

BENCH_OUT: a folder ``benchmarks/shift_benchmark.py`` wrote (its ``pred/<shift>`` against its
``data/<shift>``), made with the code that records ``error_features``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from cmrseg.atomic import write_text
from cmrseg.evaluation.evaluate import evaluate_volumes, paired_volumes
from cmrseg.evaluation.quality_check import (
    FAILURE_LIMITS,
    number,
    percent,
    qc_performance,
    study_outcomes,
    tally_studies,
)
from cmrseg.data.io.readers import load_labelled_dataset
from cmrseg.inference.error_estimates import (
    VERDICT_QUANTILE,
    basal_stake,
    estimate,
    experts_sv_allowance,
    fit_qc_calibration,
)
from cmrseg.inference.quality import REVIEW_FLAGS, SV_TOLERANCE, qc_verdict


def outcomes_of(pred: Path, gt: Path, group: str) -> list[dict]:
    """The studies of one segment folder against their truth (:func:`study_outcomes`), each
    named ``group`` and keeping its patient for the leave-one-out. A record written before the
    basal stake was a feature gets it from its written masks (the same function ``cmrseg
    segment`` uses)."""
    cases = paired_volumes(pred, gt)
    results, _ = evaluate_volumes(cases, with_hd95=False)
    tally = tally_studies(cases, results, pred)
    if not tally:
        return []
    by_name = {c.name: c for c in cases}
    out = []
    for o in study_outcomes(tally["studies"]):
        if not o["features"]:
            continue
        if "stake" not in o["features"]:
            phases = tally["studies"][o["study"]]["phases"]
            ed, es = (by_name[phases[p].name] for p in ("ED", "ES"))
            voxel_ml = float(np.prod(ed.spacing)) / 1000.0
            o["features"] = {**o["features"], "stake": basal_stake(ed.pred, es.pred, voxel_ml, o["measures"])}
        out.append({**o, "group": group, "patient": o["study"]})
    return out


def simulated_verdict(outcome: dict, estimates: dict[str, float], limits: dict[str, float]) -> tuple[str, list[str]]:
    """The verdict and reasons ``cmrseg segment`` gives with ``estimates`` (its ``fail`` kept: that
    does not depend on the estimates; its review flags' reasons kept as the record wrote them)."""
    if outcome["qc"] == "fail":
        return "fail", outcome["qc_reasons"]
    reasons = qc_verdict([], None, estimates, limits)[1]
    reasons += [r for r in outcome["qc_reasons"] if r.split(":")[0] in REVIEW_FLAGS and _still_review(r, outcome)]
    return ("review" if reasons else "ok"), reasons


def _still_review(reason: str, outcome: dict) -> bool:
    """Whether a record's review reason still sends a study to review: before 2026-12-07
    ``stroke_volume_mismatch`` was raised whichever ventricle ejected more; now only when the RV
    does (the LV's larger is ``lv_stroke_volume_above_rv``, for the reader only)."""
    if not reason.startswith("stroke_volume_mismatch"):
        return True
    m = outcome["measures"]
    return m.get("RVSV (mL)", 0.0) > m.get("LVSV (mL)", 0.0)


def scored_with(calibration: dict, outcomes: list[dict]) -> list[dict]:
    """``outcomes`` with the intervals, likely errors and verdicts of ``calibration`` (fitted on
    other studies)."""
    out = []
    for o in outcomes:
        if o["qc"] == "fail":
            out.append({**o, "estimates": {}, "likely": {}})
            continue
        likely = estimate(o["features"], o["measures"], calibration, part="verdict")
        qc, reasons = simulated_verdict(o, likely, FAILURE_LIMITS)
        out.append({**o, "estimates": estimate(o["features"], o["measures"], calibration), "likely": likely,
                    "qc": qc, "qc_reasons": reasons})
    return out


def leave_one_patient_out(outcomes: list[dict], verdict_quantile: float = VERDICT_QUANTILE,
                          widen: bool = False, allowance: float = 0.0) -> list[dict]:
    """Every outcome with the interval, likely error and verdict of a calibration fitted without
    its patient (the likely error at ``verdict_quantile``; the intervals widened, or not, as
    :func:`fit_qc_calibration` does, the widening's own leave-one-out again without that patient;
    the stroke-volume term beyond ``allowance`` mL)."""
    out = []
    for patient in sorted({o["patient"] for o in outcomes}):
        calibration = fit_qc_calibration(measured([o for o in outcomes if o["patient"] != patient]), verdict_quantile,
                                         widen, allowance)
        out += scored_with(calibration, [o for o in outcomes if o["patient"] == patient])
    return out


def measured(outcomes: list[dict]) -> list[dict]:
    """The studies the estimates are fitted on: those whose verdict is not ``fail``. A failed
    study (an inverted image, noise for a heart) is not a measurement; its errors of 100 mL and
    more would make every estimate a large constant."""
    return [o for o in outcomes if o["qc"] != "fail"]


def verdict_row(name: str, perf: dict) -> str:
    auroc = "–" if perf["auroc"] is None else f"{perf['auroc']:.2f}"
    return (f"| {name} | {perf['studies']} | {perf['failed']} | {percent(perf['recall'])} | "
            f"{percent(perf['good_to_review'])} | {perf['gross_caught']} of {perf['gross']} "
            f"({perf['gross_named']}) | {auroc} |")


def report(fitted: dict, held_out: dict, held_out_measured: dict, in_sample: dict, groups: list[str],
           trade_off: dict[float, dict], verdict_quantile: float = VERDICT_QUANTILE) -> str:
    pct = percent

    lines = [f"Calibration on {in_sample['studies']} studies ({', '.join(groups)})", "",
             "| measure | a | b (raw) | c (mismatch) | d (stake) | widened by | coverage, fitted "
             "| coverage, patient left out | median interval, patient left out |",
             "|---|---|---|---|---|---|---|---|---|"]
    for m, k in fitted["measures"].items():
        widened = f"{k['widened_by']:.2f}" if "widened_by" in k else "–"
        lines.append(f"| {m} | {k['a']:.2f} | {k['b']:.2f} | {k['c']:.2f} | {k['d']:.2f} | {widened} "
                     f"| {pct(in_sample['coverage'][m]['covered'])} | {pct(held_out['coverage'][m]['covered'])} "
                     f"| {number(held_out['coverage'][m]['median'])} |")
    lines += ["", "| verdicts, patient left out: likely error's percentile | studies | failed | recall "
              "| good sent to review | gross caught (measure named) | AUROC |",
              "|---|---|---|---|---|---|---|",
              verdict_row(f"**{verdict_quantile:.2f}** (this calibration's)", held_out),
              verdict_row(f"{verdict_quantile:.2f}, the studies not `fail`", held_out_measured)]
    lines += [verdict_row(f"{q:.2f}", perf) for q, perf in sorted(trade_off.items()) if q != verdict_quantile]
    return "\n".join(lines) + "\n"


def _scored_studies(benches: list[Path], pairs: list[Path], cache: Path | None) -> list[dict]:
    """The studies of shift benchmark folders (the shifts it finished: evaluated) and PRED GT
    pairs against their truth (:func:`outcomes_of`), from ``cache`` when it exists (else kept there)."""
    if cache and cache.is_file():
        return json.loads(cache.read_text())
    found = [(b / "pred" / s.name, b / "data" / s.name, f"{b.name}/{s.name}", str(b))
             for b in benches for s in sorted((b / "pred").iterdir())
             if (b / "eval" / s.name / "summary.json").is_file()]
    found += [(p, g, p.name, str(p)) for p, g in zip(pairs[::2], pairs[1::2])]
    outcomes = [{**o, "source": source} for pred, gt, group, source in tqdm(found, desc="scoring", unit="folder")
                for o in outcomes_of(pred, gt, group)]
    if cache:
        write_text(cache, json.dumps(outcomes, default=float))
    return outcomes


def stroke_volume_line(outcomes: list[dict]) -> str:
    """How often LV and RV stroke volumes lay more than ``SV_TOLERANCE`` apart, in the masks (by
    which ventricle ejected more, with the share of those studies that failed) and in the experts'
    own masks: whether the mismatch tells an error from the heart on these studies."""
    rows = [o for o in measured(outcomes) if {"LVSV (mL)", "RVSV (mL)"} <= set(o["measures"])]
    if not rows:
        return ""

    def apart(lsv: float, rsv: float) -> bool:
        return max(lsv, rsv) > 0 and abs(lsv - rsv) / max(lsv, rsv) > SV_TOLERANCE

    def truth(o: dict, v: str) -> float:  # the experts' stroke volume: the masks' minus their error
        e, m = o["errors"], o["measures"]
        return (m[f"{v}EDV (mL)"] - e[f"{v}EDV (mL)"]) - (m[f"{v}ESV (mL)"] - e[f"{v}ESV (mL)"])

    parts = []
    for name, larger in (("the LV", "LVSV (mL)"), ("the RV", "RVSV (mL)")):
        other = "RVSV (mL)" if larger == "LVSV (mL)" else "LVSV (mL)"
        hit = [o for o in rows if apart(o["measures"]["LVSV (mL)"], o["measures"]["RVSV (mL)"])
               and o["measures"][larger] > o["measures"][other]]
        parts.append(f"{name} ejecting more in {len(hit)} ({percent(np.mean([o['failed'] for o in hit]) if hit else None)}"
                     " failed)")
    rest = [o for o in rows if not apart(o["measures"]["LVSV (mL)"], o["measures"]["RVSV (mL)"])]
    experts = np.mean([apart(truth(o, "LV"), truth(o, "RV")) for o in rows])
    return (f"Stroke volumes more than {100 * SV_TOLERANCE:.0f} % apart in the masks of the {len(rows)} studies not "
            f"`fail`: {'; '.join(parts)}; the others: {percent(np.mean([o['failed'] for o in rest]) if rest else None)} "
            f"failed. In the experts' own masks: {percent(experts)} of the studies.\n")


def missed_line(scored: list[dict]) -> str:
    """The failures the verdict let through (``ok``), by patient, each patient with why one of its
    studies failed: whether the misses are many patients or a few under many shifts."""
    missed = [o for o in measured(scored) if o["failed"] and o["qc"] == "ok"]
    if not missed:
        return "No failure let through.\n"
    by_patient: dict[str, list[dict]] = {}
    for o in missed:
        by_patient.setdefault(o["patient"], []).append(o)
    parts = [f"{p} {len(os_)} ({', '.join(os_[0]['why'])})"
             for p, os_ in sorted(by_patient.items(), key=lambda kv: -len(kv[1]))]
    return f"Failures let through ({len(missed)}), by patient: " + "; ".join(parts) + ".\n"


def held_out_section(name: str, perf: dict, perf_measured: dict, title: str | None = None) -> str:
    """The report's lines on studies of other patients scored with the calibration (never fitted
    on), or under ``title`` on any other set of scored studies."""
    lines = ["", title or f"Scored with this calibration, never fitted on: {name}", "",
             "| studies | number | failed | recall | good sent to review | gross caught (measure named) | AUROC | "
             "coverage LVEF / RVEF / LVM | median interval LVEF / RVEF / LVM |",
             "|---|---|---|---|---|---|---|---|---|"]
    for label, p in (("all", perf), ("not `fail`", perf_measured)):
        cov = " / ".join(percent(p["coverage"][m]["covered"]) for m in ("LVEF (%)", "RVEF (%)", "LVM (g)"))
        width = " / ".join(number(p["coverage"][m]["median"]) for m in ("LVEF (%)", "RVEF (%)", "LVM (g)"))
        lines.append(verdict_row(label, p).rstrip(" |") + f" | {cov} | {width} |")
    return "\n".join(lines) + "\n"


def source_of(outcome: dict) -> str:
    """The folder a study came from (a cache written before studies kept it: its group's first part)."""
    return outcome.get("source") or outcome["group"].split("/")[0]


def by_source_sections(left_out: list[dict], names: dict[str, str]) -> str:
    """The patient-left-out verdicts and coverage of each source's studies apart (val's and the
    out-of-fold ones, say; sources given the same name counted together): whether a calibration
    fitted on both serves each."""
    label = {o_src: names.get(o_src, o_src) for o_src in {source_of(o) for o in left_out}}
    labels = sorted(set(label.values()))
    if len(labels) < 2:
        return ""
    text = ""
    for name in labels:
        mine = [o for o in left_out if label[source_of(o)] == name]
        text += held_out_section(name, qc_performance(mine), qc_performance(measured(mine)),
                                 title=f"The studies of {name} alone, patient left out ({len(mine)} studies)")
    return text


def _source_names(benches: list[Path], names: list[str]) -> dict[str, str]:
    """``--source-names``' names of the bench folders, in order (the rest keep their paths)."""
    return {str(b): n for b, n in zip(benches, names)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("bench", type=Path, nargs="*", help="shift benchmark output folders")
    ap.add_argument("--pairs", type=Path, nargs="+", default=[], metavar="DIR", help="PRED GT PRED GT ...")
    ap.add_argument("--write", type=Path, help="where to write qc_calibration.json")
    ap.add_argument("--source", default="", help="what the calibration was fitted on, for the records")
    ap.add_argument("--report", type=Path, help="also write the report here")
    ap.add_argument("--cache", type=Path, help="keep the scored studies here and reuse them (scoring takes minutes)")
    ap.add_argument("--held-out", type=Path, nargs="+", default=[], metavar="BENCH_OUT",
                    help="shift benchmark folders of other patients: scored with the calibration fitted on BENCH_OUT, "
                         "never fitted on (their scores cached beside --cache, as CACHE.held_out.json)")
    ap.add_argument("--held-out-name", default="held out", help="what the --held-out studies are, for the report")
    ap.add_argument("--verdict-quantile", type=float, default=VERDICT_QUANTILE,
                    help=f"the likely error's percentile the verdict compares with the limits (default {VERDICT_QUANTILE})")
    ap.add_argument("--source-names", nargs="+", default=[], metavar="NAME",
                    help="a name per BENCH_OUT, in order (folders of one name counted together): with two or more "
                         "names the report also gives each name's studies apart, patient left out")
    ap.add_argument("--widen", action="store_true",
                    help="widen each interval to cover 85 %% of a patient left out of the fit (conformal; rule 20 in "
                         "docs/decisions.md, not shipped: on ACDC val it multiplied the LVEF constants by 1.69, the median "
                         "interval of a patient left out 4.6 to 8.4 points, for coverage 78 to 82 %%); scored nested, the widening found again without the "
                         "patient it is scored on")
    ap.add_argument("--sv-allowance-from", type=Path, metavar="LABELLED_FOLDER",
                    help="count only the stroke-volume mismatch beyond the median |LVSV - RVSV| of the experts' masks "
                         "in this folder (the model's training patients; rule 25 in docs/decisions.md)")
    args = ap.parse_args(argv)
    allowance = 0.0
    if args.sv_allowance_from:
        allowance = experts_sv_allowance(load_labelled_dataset(args.sv_allowance_from))
    outcomes = _scored_studies(args.bench, args.pairs, args.cache)
    if not outcomes:
        raise SystemExit("no study with error features and truth found (segment with the current code)")
    q = args.verdict_quantile
    fitted = fit_qc_calibration(measured(outcomes), q, widen=args.widen, allowance=allowance)
    in_sample = qc_performance([{**o, "estimates": estimate(o["features"], o["measures"], fitted)}
                                for o in measured(outcomes)])
    left_out = leave_one_patient_out(outcomes, q, widen=args.widen, allowance=allowance)
    held_out = qc_performance(left_out)
    # the verdict does not depend on the intervals: its trade-off without the widening's refits
    trade_off = {other: qc_performance(leave_one_patient_out(outcomes, other, widen=False, allowance=allowance))
                 for other in sorted({0.5, 0.6, 0.7, 0.85} - {q})}
    text = report(fitted, held_out, qc_performance(measured(left_out)), in_sample,
                  sorted({o["group"] for o in outcomes}), trade_off, q)
    text += by_source_sections(left_out, _source_names(args.bench, args.source_names))
    if allowance:
        text += (f"\nThe stroke-volume term counts the mismatch beyond {allowance:.1f} mL, the median of the experts' "
                 f"masks of {args.sv_allowance_from}.\n")
    if args.held_out:
        cache = args.cache.with_suffix(".held_out.json") if args.cache else None
        other = scored_with(fitted, _scored_studies(args.held_out, [], cache))
        text += held_out_section(args.held_out_name, qc_performance(other), qc_performance(measured(other)))
        text += "\nThe studies never fitted on. " + stroke_volume_line(other)
    text += "\nThe fitted studies, patient left out. " + missed_line(left_out)
    text += "\nThe fitted studies. " + stroke_volume_line(outcomes)
    print(text)
    if args.report:
        write_text(args.report, text)
    if args.write:
        fitted.update(source=args.source, fitted=time.strftime("%Y-%m-%d"), studies=len(outcomes),
                      leave_one_patient_out={k: held_out[k] for k in ("recall", "good_to_review", "auroc")},
                      coverage_left_out={m: c["covered"] for m, c in held_out["coverage"].items()})
        write_text(args.write, json.dumps(fitted, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
