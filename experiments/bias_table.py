"""Where the clinical bias comes from (issue 11, item 1): signed errors of the clinical measures
on val with each suspect switched, one model forward per volume and model.

    python experiments/bias_table.py ../shared/data/acdc/val [--models seg_as+ref_as_mt seg_ss RUN ...]
           [--out docs/bias_table.md]

For every model the canvas probabilities are computed once and then taken through each
variant: the stage (Ref output, its Seg stage alone, Ref ungated), resampling back to the input
grid (probabilities bilinear then argmax, as ``cmrseg segment`` does, or the canvas argmax
taken to the input grid by nearest neighbour) and the clean-up (none, fill_holes, clean). The
table gives, per variant, the mean over patients of prediction minus truth (ED and ES volumes
of LV, RV, MYO, LV mass, EF) and the volume Dice, scored with ``cmrseg.evaluation``.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from cmrseg.data.io import load_labelled_dataset
from cmrseg.data.preprocessing import _resize, invert_to_input, preprocess_image
from cmrseg.evaluation.evaluate import EvalCase, clinical_rows, evaluate_cases
from cmrseg.inference import Predictor
from cmrseg.inference.centred import heart_centred_forward
from cmrseg.inference.postprocessing import postprocess

MEASURES = ["LVEDV (mL)", "LVESV (mL)", "RVEDV (mL)", "RVESV (mL)", "LVM (g)", "LVEF (%)", "RVEF (%)"]


def canvas_outputs(predictor: Predictor, vol, centred_crop: int | None = None):
    """(final probabilities, Seg-stage probabilities or None, ungated probabilities or None, map)."""
    x, cmap = preprocess_image(vol.image, vol.geometry.inplane_spacing, predictor.preprocess)
    if centred_crop:
        out = heart_centred_forward(predictor.model, x, centred_crop)
    else:
        with torch.no_grad():
            out = predictor.model(x)
    final = out.logits.float().softmax(1)
    seg = out.stage1_logits.float().softmax(1) if out.stage1_logits is not None and out.stage1_logits.shape[1] == 4 else None
    ungated = out.ungated_logits.float().softmax(1) if out.ungated_logits is not None else None
    return final, seg, ungated, cmap


def to_input(probs: torch.Tensor, cmap, resampling: str) -> np.ndarray:
    if resampling == "probabilities":
        return invert_to_input(probs, cmap).argmax(1).to(torch.uint8).numpy()
    # nearest neighbour: the canvas argmax on the resampled grid, then resized by nearest-exact
    canvas_labels = probs.argmax(1, keepdim=True).float()
    (sy0, sy1), (sx0, sx1) = cmap.src
    (dy0, dy1), (dx0, dx1) = cmap.dst
    grid = canvas_labels.new_zeros((probs.shape[0], 1, *cmap.resampled_shape))
    grid[..., sy0:sy1, sx0:sx1] = canvas_labels[..., dy0:dy1, dx0:dx1]
    return _resize(grid, cmap.input_shape, "nearest")[:, 0].to(torch.uint8).numpy()


def score(vols, masks) -> dict:
    cases = [EvalCase(v.name, m, v.label, v.geometry.spacing, v.meta) for v, m in zip(vols, masks)]
    results, summary = evaluate_cases(cases, with_hd95=False)
    rows = clinical_rows(results)
    out = {m: float(np.mean([r[f"error {m}"] for r in rows])) for m in MEASURES}
    myo = {ph: [] for ph in ("ED", "ES")}
    for r in results:
        if r.meta.get("phase") in myo:
            myo[r.meta["phase"]].append(r.pred_volumes["MYO"] - r.gt_volumes["MYO"])
    out["MYO ED (mL)"] = float(np.mean(myo["ED"]))
    out["MYO ES (mL)"] = float(np.mean(myo["ES"]))
    out["LVEF MAE"] = float(np.mean([abs(r["error LVEF (%)"]) for r in rows]))
    out["LVM MAE"] = float(np.mean([abs(r["error LVM (g)"]) for r in rows]))
    out["Dice"] = summary["levels"]["volume"]["avg"]
    out["apex"] = summary["levels"]["apex"]["avg"]
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("val", type=Path)
    ap.add_argument("--models", nargs="+", default=["seg_as+ref_as_mt", "seg_ss"])
    ap.add_argument("--canvas", type=int, help="inference canvas in pixels instead of the model's (suspect: crop size)")
    ap.add_argument("--centred-crop", type=int, help="two-pass inference on a heart-centred crop of this size")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args(argv)
    torch.set_num_threads(2)
    vols = load_labelled_dataset(args.val)
    cols = [*MEASURES, "MYO ED (mL)", "MYO ES (mL)", "LVEF MAE", "LVM MAE", "Dice", "apex"]
    lines = ["| model | stage | resampling | clean-up | " + " | ".join(cols) + " |", "|---" * (len(cols) + 4) + "|"]
    for spec in args.models:
        pred = Predictor.load(spec, device="cpu", postprocess="none")
        if args.canvas:

            pred.preprocess = replace(pred.preprocess, canvas=args.canvas)
        outs = [canvas_outputs(pred, v, args.centred_crop) for v in vols]
        name = Path(spec).name if "/" in spec else spec
        name += f" ({pred.preprocess.target_spacing} mm, {pred.preprocess.canvas} px"
        name += f", heart-centred {args.centred_crop} px)" if args.centred_crop else ")"
        stages = [("final", 0)] + ([("Seg only", 1)] if outs[0][1] is not None else []) \
            + ([("ungated", 2)] if outs[0][2] is not None else [])
        for stage, k in stages:
            for resampling in ("probabilities", "nearest"):
                for method in ("none", "fill_holes", "clean"):
                    if resampling == "nearest" and method != "none":
                        continue
                    if stage != "final" and (resampling != "probabilities" or method not in ("none", "clean")):
                        continue
                    masks = [postprocess(to_input(o[k], o[3], resampling), method) for o in outs]
                    s = score(vols, masks)
                    lines.append(f"| {name} | {stage} | {resampling} | {method} | "
                                 + " | ".join(f"{s[c]:+.2f}" if c not in ("Dice", "apex") else f"{s[c]:.3f}" for c in cols)
                                 + " |")
                    print(lines[-1], flush=True)
    text = "\n".join(lines) + "\n"
    if args.out:
        args.out.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
