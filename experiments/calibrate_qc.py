"""Calibrate a model's error estimates for quality control (issue 36): ``qc_calibration.json``.

From ``cmrseg segment`` outputs of studies with experts' masks (the shift benchmark's folders:
val as it is and under every scanner-like shift, plus any other segment / truth folder pairs),
each study's raw spreads and stroke-volume mismatch (its record's ``error_features``) against
its true errors, this fits each measure's estimate ``a + b raw + c consistency`` to the 85th
percentile of the true errors (:func:`cmrseg.inference.error_estimates.fit_calibration`), and
reports how it does on patients it was not fitted on: leave one patient out (all of that
patient's shifted copies), the estimates' coverage and the verdict they give (review when an
estimate exceeds its limit or a review flag is raised; the record's own ``fail`` kept) against the
studies that really failed.

    python experiments/calibrate_qc.py BENCH_OUT [BENCH_OUT ...] [--pairs PRED GT ...] \\
        [--write MODEL_FOLDER/qc_calibration.json --source "what it was fitted on"] [--report FILE.md]

BENCH_OUT: a folder ``benchmarks/shift_benchmark.py`` wrote (its ``pred/<shift>`` against its
``data/<shift>``), made with the code that records ``error_features``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from cmrseg.evaluation.evaluate import evaluate_volumes, paired_volumes
from cmrseg.evaluation.quality_check import FAILURE_LIMITS, percent, qc_performance, study_outcomes, tally_studies
from cmrseg.inference.error_estimates import estimate, fit_calibration
from cmrseg.inference.quality import REVIEW_FLAGS


def outcomes_of(pred: Path, gt: Path, group: str) -> list[dict]:
    """The studies of one segment folder against their truth (:func:`study_outcomes`), each
    named ``group`` and keeping its patient for the leave-one-out."""
    cases = paired_volumes(pred, gt)
    results, _ = evaluate_volumes(cases, with_hd95=False)
    tally = tally_studies(cases, results, pred)
    found = study_outcomes(tally["studies"]) if tally else []
    return [{**o, "group": group, "patient": o["study"]} for o in found if o["features"]]


def simulated_verdict(outcome: dict, estimates: dict[str, float], limits: dict[str, float]) -> str:
    """The verdict ``cmrseg segment`` gives with ``estimates`` (its ``fail`` kept: that does not
    depend on the estimates)."""
    if outcome["qc"] == "fail":
        return "fail"
    if any(estimates.get(m, 0.0) > lim for m, lim in limits.items()) or REVIEW_FLAGS & set(outcome["flags"]):
        return "review"
    return "ok"


def leave_one_patient_out(outcomes: list[dict]) -> list[dict]:
    """Every outcome with the estimates and verdict of a calibration fitted without its patient."""
    out = []
    for patient in sorted({o["patient"] for o in outcomes}):
        calibration = fit_calibration([o for o in outcomes if o["patient"] != patient])
        for o in (o for o in outcomes if o["patient"] == patient):
            est = estimate(o["features"], o["measures"], calibration)
            out.append({**o, "estimates": est, "qc": simulated_verdict(o, est, FAILURE_LIMITS)})
    return out


def report(fitted: dict, held_out: dict, in_sample: dict, groups: list[str]) -> str:
    pct = percent
    auroc = "–" if held_out["auroc"] is None else f"{held_out['auroc']:.2f}"

    lines = [f"Calibration on {in_sample['studies']} studies ({', '.join(groups)})", "",
             "| measure | a | b | c | coverage, fitted | coverage, patient left out |", "|---|---|---|---|---|---|"]
    for m, k in fitted["measures"].items():
        lines.append(f"| {m} | {k['a']:.2f} | {k['b']:.2f} | {k['c']:.2f} | {pct(in_sample['coverage'][m]['covered'])} "
                     f"| {pct(held_out['coverage'][m]['covered'])} |")
    lines += ["", "| verdicts, patient left out | studies | failed | recall | good sent to review | gross caught "
              "| AUROC |",
              "|---|---|---|---|---|---|---|",
              f"| | {held_out['studies']} | {held_out['failed']} | "
              f"{pct(held_out['recall'])} | "
              f"{pct(held_out['good_to_review'])} | {held_out['gross_caught']} of {held_out['gross']} | "
              f"{auroc} |"]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("bench", type=Path, nargs="*", help="shift benchmark output folders")
    ap.add_argument("--pairs", type=Path, nargs="+", default=[], metavar="DIR", help="PRED GT PRED GT ...")
    ap.add_argument("--write", type=Path, help="where to write qc_calibration.json")
    ap.add_argument("--source", default="", help="what the calibration was fitted on, for the records")
    ap.add_argument("--report", type=Path, help="also write the report here")
    args = ap.parse_args(argv)
    pairs = [(b / "pred" / s.name, b / "data" / s.name, f"{b.name}/{s.name}")
             for b in args.bench for s in sorted((b / "pred").iterdir()) if (b / "data" / s.name).is_dir()]
    pairs += [(p, g, p.name) for p, g in zip(args.pairs[::2], args.pairs[1::2])]
    outcomes = [o for pred, gt, group in pairs for o in outcomes_of(pred, gt, group)]
    if not outcomes:
        raise SystemExit("no study with error features and truth found (segment with the current code)")
    fitted = fit_calibration(outcomes)
    in_sample = qc_performance([{**o, "estimates": estimate(o["features"], o["measures"], fitted)} for o in outcomes])
    held_out = qc_performance(leave_one_patient_out(outcomes))
    text = report(fitted, held_out, in_sample, [g for _, _, g in pairs])
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
