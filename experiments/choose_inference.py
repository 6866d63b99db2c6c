"""Score a model's inference choices on val (issue 11, items 3 and 4): clean-up, gate mode,
test-time flips and CPU precision, each as ``cmrseg segment`` would run it.

    python experiments/choose_inference.py ../shared/data/acdc/val RUN_OR_NAME [--variants ...] [--out table.md]

For every variant the val volumes go through ``Predictor.predict_volume`` (preprocess,
heart-centred forward, flips, gate, back to the input grid, clean-up) and are scored with
``cmrseg.evaluation``: volume and apical average Dice, apical RV Dice, signed bias and MAE of
LV mass, EDV/ESV and EF, fragment and hole rates, CPU seconds per 10-slice stack, and for
bf16 the share of voxels labelled as in float32. Apical slices where the classifier says RV
with p > 0.9 and the mask has no RV are counted (``rv_p90_empty``).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from cmrseg.data.io import load_labelled_dataset
from cmrseg.evaluation.evaluate import EvalCase, evaluate_cases
from cmrseg.evaluation.levels import level_indices
from cmrseg.inference import Predictor
from cmrseg.inference.predictor import PROPOSED_MODEL, WEIGHTS_DIR

MEASURES = ["LVM (g)", "LVEDV (mL)", "LVESV (mL)", "RVEDV (mL)", "RVESV (mL)", "LVEF (%)", "RVEF (%)"]


def run(predictor: Predictor, vols) -> tuple[list[np.ndarray], float, int]:
    masks, seconds, rv_empty = [], [], 0
    for v in vols:
        t0 = time.perf_counter()
        p = predictor.predict_volume(v)
        seconds.append((time.perf_counter() - t0) * 10 / v.num_slices)
        masks.append(p.mask)
        if p.class_probs is not None:
            for s in level_indices(v.label)["apex"]:
                rv_empty += int(p.class_probs[s, 0] > 0.9 and not (p.mask[s] == 1).any())
    return masks, float(np.median(seconds)), rv_empty


def score(vols, masks) -> dict:
    cases = [EvalCase(v.name, m, v.label, v.geometry.spacing, v.meta) for v, m in zip(vols, masks)]
    _, summary = evaluate_cases(cases, with_hd95=False)
    clinical = summary["clinical"]["all"]  # per patient: signed bias and mean absolute error
    out = {"vol": summary["levels"]["volume"]["avg"], "apex": summary["levels"]["apex"]["avg"],
           "apex RV": summary["levels"]["apex"]["RV"], "frag %": 100 * summary["fragment_rate"],
           "hole %": 100 * summary["hole_rate"]}
    for m in MEASURES:
        out[f"{m} bias"], out[f"{m} MAE"] = clinical[f"{m} bias"], clinical[f"{m} MAE"]
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("val", type=Path)
    ap.add_argument("model")
    ap.add_argument("--variants", default="postprocess,gate,tta,precision",
                    help="comma-separated; 'shipped' alone scores only the shipped default's choices")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args(argv)
    torch.set_num_threads(2)
    vols = load_labelled_dataset(args.val)
    base = Predictor.load(args.model, device="cpu", postprocess="none")
    wanted = args.variants.split(",")
    plan = [] if wanted == ["shipped"] else [("none", "hard", False, "fp32")]
    if "shipped" in wanted:  # the shipped proposed model's choices (its model.json), on any model
        shipped = json.loads((WEIGHTS_DIR / PROPOSED_MODEL / "model.json").read_text())
        plan += [(shipped.get("postprocess", "none"), shipped.get("gate", "hard"), bool(shipped.get("tta")), "auto")]
    if "postprocess" in wanted:
        plan += [(m, "hard", False, "fp32") for m in ("fill_holes", "clean")]
    if "gate" in wanted and base.name.endswith("_mt"):
        plan += [("none", g, False, "fp32") for g in ("soft", "seg", "off")]
    if "tta" in wanted:
        plan += [("none", "hard", True, "fp32")]
    if "precision" in wanted:
        plan += [("none", "hard", False, "bf16")]
    cols = ["vol", "apex", "apex RV", "frag %", "hole %", "LVM (g) bias", "LVM (g) MAE", "LVEDV (mL) bias",
            "LVESV (mL) bias", "RVEDV (mL) bias", "RVESV (mL) bias", "LVEF (%) bias", "LVEF (%) MAE",
            "RVEF (%) bias", "RVEF (%) MAE"]
    lines = ["| clean-up | gate | flips | precision | " + " | ".join(cols) + " | s / 10 slices | RV p>0.9 empty (apex) "
             "| voxels as fp32 |", "|---" * (len(cols) + 7) + "|"]
    reference = None
    for post, gate, tta, precision in plan:
        p = Predictor.load(args.model, device="cpu", postprocess=post, precision=precision)
        p.gate, p.tta = gate, tta
        masks, secs, rv_empty = run(p, vols)
        if reference is None:
            reference = masks
        agree = ""
        if precision == "bf16":
            same = sum(int((a == b).sum()) for a, b in zip(masks, reference))
            agree = f"{100 * same / sum(m.size for m in masks):.3f} %"
        s = score(vols, masks)
        lines.append(f"| {post} | {gate} | {'on' if tta else 'off'} | {precision} | "
                     + " | ".join(f"{s[c]:.4f}" if c in ("vol", "apex", "apex RV") else f"{s[c]:+.2f}"
                                  if "bias" in c else f"{s[c]:.2f}" for c in cols)
                     + f" | {secs:.2f} | {rv_empty} | {agree} |")
        print(lines[-1], flush=True)
    if args.out:
        args.out.write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
