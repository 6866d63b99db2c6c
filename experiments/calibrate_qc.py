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
        [--cache OUTCOMES.json]

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

from cmrseg.evaluation.evaluate import evaluate_volumes, paired_volumes
from cmrseg.evaluation.quality_check import FAILURE_LIMITS, percent, qc_performance, study_outcomes, tally_studies
from cmrseg.inference.error_estimates import VERDICT_QUANTILE, basal_stake, estimate, fit_qc_calibration
from cmrseg.inference.quality import REVIEW_FLAGS, qc_verdict


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
    reasons += [r for r in outcome["qc_reasons"] if r.split(":")[0] in REVIEW_FLAGS]
    if REVIEW_FLAGS & set(outcome["flags"]) and not reasons:  # a record whose reasons were not kept
        reasons = sorted(REVIEW_FLAGS & set(outcome["flags"]))
    return ("review" if reasons else "ok"), reasons


def leave_one_patient_out(outcomes: list[dict], verdict_quantile: float = VERDICT_QUANTILE) -> list[dict]:
    """Every outcome with the interval, likely error and verdict of a calibration fitted without
    its patient (the likely error at ``verdict_quantile``)."""
    out = []
    for patient in sorted({o["patient"] for o in outcomes}):
        rest = measured([o for o in outcomes if o["patient"] != patient])
        calibration = fit_qc_calibration(rest, verdict_quantile)
        for o in (o for o in outcomes if o["patient"] == patient):
            if o["qc"] == "fail":  # no measures to estimate: the verdict is fail whatever they say
                out.append({**o, "estimates": {}, "likely": {}})
                continue
            est = estimate(o["features"], o["measures"], calibration)
            likely = estimate(o["features"], o["measures"], calibration, part="verdict")
            qc, reasons = simulated_verdict(o, likely, FAILURE_LIMITS)
            out.append({**o, "estimates": est, "likely": likely, "qc": qc, "qc_reasons": reasons})
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
           trade_off: dict[float, dict]) -> str:
    pct = percent

    lines = [f"Calibration on {in_sample['studies']} studies ({', '.join(groups)})", "",
             "| measure | a | b (raw) | c (mismatch) | d (stake) | coverage, fitted | coverage, patient left out |",
             "|---|---|---|---|---|---|---|"]
    for m, k in fitted["measures"].items():
        lines.append(f"| {m} | {k['a']:.2f} | {k['b']:.2f} | {k['c']:.2f} | {k['d']:.2f} "
                     f"| {pct(in_sample['coverage'][m]['covered'])} | {pct(held_out['coverage'][m]['covered'])} |")
    lines += ["", "| verdicts, patient left out: likely error's percentile | studies | failed | recall "
              "| good sent to review | gross caught (measure named) | AUROC |",
              "|---|---|---|---|---|---|---|",
              verdict_row(f"**{VERDICT_QUANTILE:.2f}** (shipped)", held_out),
              verdict_row(f"{VERDICT_QUANTILE:.2f}, the studies not `fail`", held_out_measured)]
    lines += [verdict_row(f"{q:.2f}", perf) for q, perf in sorted(trade_off.items()) if q != VERDICT_QUANTILE]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("bench", type=Path, nargs="*", help="shift benchmark output folders")
    ap.add_argument("--pairs", type=Path, nargs="+", default=[], metavar="DIR", help="PRED GT PRED GT ...")
    ap.add_argument("--write", type=Path, help="where to write qc_calibration.json")
    ap.add_argument("--source", default="", help="what the calibration was fitted on, for the records")
    ap.add_argument("--report", type=Path, help="also write the report here")
    ap.add_argument("--cache", type=Path, help="keep the scored studies here and reuse them (scoring takes minutes)")
    args = ap.parse_args(argv)
    # the shifts the benchmark finished (evaluated), not one it is still segmenting
    pairs = [(b / "pred" / s.name, b / "data" / s.name, f"{b.name}/{s.name}")
             for b in args.bench for s in sorted((b / "pred").iterdir())
             if (b / "eval" / s.name / "summary.json").is_file()]
    pairs += [(p, g, p.name) for p, g in zip(args.pairs[::2], args.pairs[1::2])]
    if args.cache and args.cache.is_file():
        outcomes = json.loads(args.cache.read_text())
    else:
        outcomes = [o for pred, gt, group in pairs for o in outcomes_of(pred, gt, group)]
        if args.cache:
            args.cache.write_text(json.dumps(outcomes, default=float))
    if not outcomes:
        raise SystemExit("no study with error features and truth found (segment with the current code)")
    fitted = fit_qc_calibration(measured(outcomes))
    in_sample = qc_performance([{**o, "estimates": estimate(o["features"], o["measures"], fitted)}
                                for o in measured(outcomes)])
    left_out = leave_one_patient_out(outcomes)
    held_out = qc_performance(left_out)
    trade_off = {q: qc_performance(leave_one_patient_out(outcomes, q)) for q in (0.5, 0.7, 0.85)}
    text = report(fitted, held_out, qc_performance(measured(left_out)), in_sample,
                  sorted({o["group"] for o in outcomes}), trade_off)
    print(text)
    if args.report:
        args.report.write_text(text)
    if args.write:
        fitted.update(source=args.source, fitted=time.strftime("%Y-%m-%d"), studies=len(outcomes),
                      leave_one_patient_out={k: held_out[k] for k in ("recall", "good_to_review", "auroc")},
                      coverage_left_out={m: c["covered"] for m, c in held_out["coverage"].items()})
        args.write.write_text(json.dumps(fitted, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
