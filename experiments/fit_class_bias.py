"""Fit a model's class bias (prior correction) on its training data: ``class_bias`` in its
``model.json``.

A network whose masks hold systematically more (or less) of one class than it was taught, such as
the distilled student's myocardium (+6 % of its training images' pixels, against the teacher's
+1.6 %: a wall 0.4 mm too thick, LV mass +6 g on val), is corrected by adding a constant to that
class's logit before the softmax (the textbook prior-shift correction). This script finds the
four constants (background fixed at 0) for which the model's canvas masks of the TRAINING stacks
hold as many pixels of each class as the reference: the teacher's masks (``--match teacher``, the
run's ``teacher/targets.npz``: what a distilled student was taught) or the experts' labels
(``--match labels``). Val is never looked at, so scoring the corrected model on val stays one
look (docs/decisions.md, rule 18).

    python experiments/fit_class_bias.py MODEL --data ../shared/data/acdc/train \\
        [--match teacher --targets RUN/teacher/targets.npz] [--write]

MODEL: a shipped model's name or a model folder (one network). ``--write`` puts the constants
into that folder's ``model.json`` (atomically); without it they are printed only.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from cmrseg.atomic import write_json
from cmrseg.data.dataset import StackDataset
from cmrseg.inference.options import InferenceOptions
from cmrseg.inference.predictor import Predictor

#: logit margins beyond which no bias searched here flips a pixel's class (the search is over
#: [-SEARCH, SEARCH]); pixels surer than that are counted once, not re-scored per candidate
SEARCH = 3.0


def canvas_log_probs(predictor: Predictor, ds: StackDataset) -> list[torch.Tensor]:
    """The model's log class probabilities ``[S, 4, C, C]`` per stack, without any class bias
    (log-probabilities differ from logits by a per-pixel constant: the same argmax under any bias)."""
    out = []
    for rec in tqdm(ds.records, desc="model on the training stacks", leave=False):
        x = torch.from_numpy(rec.image).float().div_(255)[:, None]
        probs, _ = predictor.predict_canvas(x)
        out.append(probs.clamp_min(1e-12).log())
    return out


def class_counts(log_probs: torch.Tensor, fixed: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """Pixels of each class in ``argmax(log_probs + bias)`` ``[N, 4]`` plus ``fixed`` (the sure pixels' counts)."""
    return fixed + torch.bincount((log_probs + bias).argmax(1), minlength=4)


def fit_bias(log_probs: torch.Tensor, target: torch.Tensor, rounds: int = 4, steps: int = 61) -> torch.Tensor:
    """Constants ``[4]`` (background 0) making each foreground class's pixel count of
    ``argmax(log_probs + bias)`` closest to ``target`` ``[4]``: coordinate search, one class at a
    time over ``[-SEARCH, SEARCH]``, ``rounds`` times (the classes interact at shared borders).
    ``log_probs``: ``[N, 4]`` pixels (all of the training canvases, flattened)."""
    top2 = log_probs.topk(2, dim=1).values
    sure = (top2[:, 0] - top2[:, 1]) > 2 * SEARCH
    fixed = torch.bincount(log_probs[sure].argmax(1), minlength=4)
    unsure = log_probs[~sure]
    bias = torch.zeros(4)
    grid = torch.linspace(-SEARCH, SEARCH, steps)
    for _ in range(rounds):
        for c in (1, 2, 3):
            def miss(value: float) -> float:
                trial = bias.clone()
                trial[c] = value
                return abs(float(class_counts(unsure, fixed, trial)[c] - target[c]))
            bias[c] = float(min(grid, key=lambda v: miss(float(v))))
    return bias


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model", help="a shipped model's name or a model folder")
    ap.add_argument("--data", required=True, help="the training data (folder or cache) the model was trained on")
    ap.add_argument("--match", choices=("teacher", "labels"), default="labels",
                    help="the pixel counts to reach: the teacher's masks (distilled students) or the labels")
    ap.add_argument("--targets", type=Path, help="with --match teacher: the run's teacher/targets.npz")
    ap.add_argument("--write", action="store_true", help="write class_bias into the model folder's model.json")
    args = ap.parse_args(argv)
    if args.match == "teacher" and not args.targets:
        ap.error("--match teacher needs --targets RUN/teacher/targets.npz")
    with torch.no_grad():  # inference only, and the caller's autograd switch restored (main() runs in tests)
        return _fit(args)


def _fit(args) -> int:
    """The fit and its report for ``main``'s arguments (its docstring)."""
    predictor = Predictor.load(args.model, InferenceOptions(device="cpu", tta="off", postprocess="none"))
    if predictor.meta.get("class_bias"):
        raise SystemExit(f"{args.model}: model.json already has class_bias {predictor.meta['class_bias']}; "
                         "fit on a copy without it")
    ds = StackDataset.from_folder(args.data, predictor.preprocess)
    log_probs = canvas_log_probs(predictor, ds)
    if args.match == "teacher":
        with np.load(args.targets) as data:
            masks = [torch.from_numpy(data[f"stack{i}"]).argmax(1) for i in range(len(ds.records))]
    else:
        masks = [torch.from_numpy(rec.label.astype(np.int64)) for rec in ds.records]
    if any(m.shape != lp[:, 0].shape for m, lp in zip(masks, log_probs)):
        raise SystemExit("the reference masks do not match the training stacks (another canvas or data?)")
    target = sum(torch.bincount(m.ravel(), minlength=4) for m in masks)
    flat = torch.cat([lp.permute(0, 2, 3, 1).reshape(-1, 4) for lp in log_probs])
    before = torch.bincount(flat.argmax(1), minlength=4)
    reference = "teacher's masks" if args.match == "teacher" else "labels"
    bias = fit_bias(flat, target)
    after = torch.bincount((flat + bias).argmax(1), minlength=4)
    for c, name in enumerate(("background", "RV", "MYO", "LV")):
        print(f"{name:10s} bias {bias[c]:+.2f}: {int(before[c])} -> {int(after[c])} px "
              f"({100 * (after[c] / target[c] - 1):+.1f} % against the {reference}: {int(target[c])})")
    if args.write:
        path = Path(predictor.meta["path"]) / "model.json"
        meta = json.loads(path.read_text())
        meta["class_bias"] = [round(float(b), 3) for b in bias]
        meta["class_bias_fitted"] = (f"experiments/fit_class_bias.py --match {args.match} on "
                                     f"{len(ds.records)} training stacks of {Path(args.data).name}")
        write_json(path, meta)
        print(f"written to {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
