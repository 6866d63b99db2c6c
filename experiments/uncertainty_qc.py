"""Does the model's own uncertainty tell where its masks are wrong?

``cmrseg segment`` sums, per slice, 1 - the top class probability into the pixels the model
expects to be wrong (``Prediction.expected_errors``), reports per study the share of its masks
that makes (``uncertainty`` in ``summary.json``, ``uncertainty (%)`` in ``measures.csv``) and
flags slices and studies where it is high (``cmrseg.inference.quality``). This script checks
those numbers against the truth on the folders ``benchmarks/shift_benchmark.py`` wrote (the val
split unchanged and under vendor-like shifts, segmented by ``cmrseg segment``):

    PYTHONPATH=src python benchmarks/shift_benchmark.py ../shared/data/acdc/val OUT --shifts none blur ...
    PYTHONPATH=src python experiments/uncertainty_qc.py OUT

Per shift, over the patients (ED and ES masks as written):

* expected share: ``summary.json``'s ``uncertainty``; actual share: the pixels where the written
  mask and the truth differ over the mask's pixels (the same ratio, :func:`share_of_mask`);
  their means and the Spearman rank correlation across patients;
* ``uncertain_slice`` flags: how many, and how many of them sit on a slice whose Dice (the mean
  over the classes in the mask or the truth) is below 0.7; and how many slices with a heart in
  the mask have such a Dice (the flags' recall);
* the study flags' verdicts (``uncertain_study``, ``unreliable_study``).

Writes ``OUT/uncertainty_qc.md`` and ``.json``. (``cmrseg evaluate`` now reports the flags'
precision on any ``cmrseg segment`` output, counting slices with a heart in the mask or the
truth: :mod:`cmrseg.evaluation.quality_check`; this script adds the maxima, the rank
correlation and the rows by shift.)
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from scipy.stats import spearmanr

from cmrseg.data.io.common import parse_frame_name, strip_suffix
from cmrseg.data.io.readers import read_label_volume
from cmrseg.evaluation.metrics import share_of_mask
from cmrseg.evaluation.quality_check import BAD_SLICE_DICE, error_pixels, slice_dice


def study_rows(pred_dir: Path, data_dir: Path, name: str, case: dict) -> dict:
    """One patient: expected and actual shares, its slices' Dice and which were flagged."""
    flagged = {(f["frame"], f["slice"]) for f in case["flags"] if f["flag"] == "uncertain_slice"}
    errors = area = 0
    slices = []  # (dice, flagged) of every slice with a heart in the mask
    for out in case["output_frames"]:  # the mask files (not a --save-probabilities file)
        pred, truth = read_label_volume(pred_dir / out).label, read_label_volume(data_dir / out).label
        wrong, mask = error_pixels(pred, truth)
        errors, area = errors + wrong, area + mask
        frame = f"frame {parse_frame_name(strip_suffix(Path(out)))[1]}"
        # the flags' k is the written file's voxel index; read_label_volume gives base -> apex,
        # which is the file's order for these h5 files (no geometry to reverse)
        slices += [(slice_dice(pred[k], truth[k]), (frame, k) in flagged)
                   for k in range(pred.shape[0]) if pred[k].any()]
    return {"study": name, "expected": case["uncertainty"], "actual": share_of_mask(errors, area),
            "slices": slices, "verdict_flags": sorted({f["flag"] for f in case["flags"]
                                                       if f["flag"] in ("uncertain_study", "unreliable_study")})}


def shift_row(out: Path, shift: str) -> dict:
    summary = json.loads((out / "pred" / shift / "summary.json").read_text())
    studies = [study_rows(out / "pred" / shift, out / "data" / shift, n, c) for n, c in sorted(summary["cases"].items())
               if c.get("status") == "ok"]
    exp, act = np.array([s["expected"] for s in studies]), np.array([s["actual"] for s in studies])
    slices = [x for s in studies for x in s["slices"]]
    flagged = [d for d, f in slices if f]
    return {"shift": shift, "patients": len(studies),
            "expected mean": float(exp.mean()), "actual mean": float(act.mean()),
            "expected max": float(exp.max()), "actual max": float(act.max()),
            "spearman": float(spearmanr(exp, act)[0]) if len(studies) > 2 else float("nan"),
            "slice flags": len(flagged), "flagged bad": sum(d < BAD_SLICE_DICE for d in flagged),
            "bad slices": sum(d < BAD_SLICE_DICE for d, _ in slices), "slices": len(slices),
            "study flags": {k: sum(k in s["verdict_flags"] for s in studies)
                            for k in ("uncertain_study", "unreliable_study")}}


def markdown(rows: list[dict]) -> str:
    head = ["shift", "expected share (mean / max)", "actual share (mean / max)", "Spearman (patients)",
            f"`uncertain_slice` flags (Dice < {BAD_SLICE_DICE})", f"slices with Dice < {BAD_SLICE_DICE} flagged",
            "`uncertain_study` / `unreliable_study`"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        lines.append(f"| {r['shift']} | {100 * r['expected mean']:.1f} / {100 * r['expected max']:.1f} % "
                     f"| {100 * r['actual mean']:.1f} / {100 * r['actual max']:.1f} % | {r['spearman']:.2f} "
                     f"| {r['slice flags']} ({r['flagged bad']}) | {r['flagged bad']} of {r['bad slices']} "
                     f"| {r['study flags']['uncertain_study']} / {r['study flags']['unreliable_study']} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", type=Path, help="benchmarks/shift_benchmark.py's output folder")
    ap.add_argument("--shifts", nargs="+", help="default: every shift segmented there")
    args = ap.parse_args(argv)
    shifts = args.shifts or sorted(p.name for p in (args.out / "pred").iterdir() if (p / "summary.json").is_file())
    rows = [shift_row(args.out, s) for s in shifts]
    (args.out / "uncertainty_qc.json").write_text(json.dumps(rows, indent=1))
    (args.out / "uncertainty_qc.md").write_text(markdown(rows))
    print(markdown(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
