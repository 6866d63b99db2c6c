"""Where does a model lose Dice by slice level? Per-slice presence errors and classifier accuracy.

    PYTHONPATH=src python experiments/analyse_levels.py DATA_DIR [--model NAME|RUN_DIR ...] [--ungated] [--out FILE.md]

For every labelled volume of DATA_DIR (e.g. ../shared/data/acdc/val) and every model, each
slice gets its protocol level (base / mid / apex, ``cmrseg.evaluation.levels``) and, per
class (RV, MYO, LV): whether the truth has it, whether the predicted mask has it, whether the
classifier said so (multitask models), and the slice's Dice where both have it. The table
counts, per level and class, slices where the mask misses a class the truth has (FN), slices
where the mask has a class the truth lacks (FP), their share of all slices of that level, the
classifier's accuracy, and the mean Dice over slices where both have the class. That splits a
level's Dice loss into presence errors (whole slices wrong) and boundary errors.
``--ungated`` adds, for multitask models, the same table without the classifier gate.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from cmrseg.data.io import load_labelled_dataset
from cmrseg.evaluation.levels import LEVELS, slice_levels
from cmrseg.inference import Predictor
from cmrseg.labels import CLASS_NAMES


def analyse(predictor: Predictor, volumes) -> list[dict]:
    rows = []
    for vol in volumes:
        pred = predictor.predict_volume(vol)
        levels = slice_levels(vol.label)
        for s, level in enumerate(levels):
            if level is None:
                continue
            for ci, name in enumerate(CLASS_NAMES):
                c = ci + 1
                t, p = vol.label[s] == c, pred.mask[s] == c
                both = t.any() and p.any()
                rows.append({"volume": vol.name, "slice": s, "level": level, "class": name,
                             "truth": bool(t.any()), "mask": bool(p.any()),
                             "classifier": None if pred.class_probs is None else bool(pred.class_probs[s, ci] > 0.5),
                             "truth_px": int(t.sum()), "pred_px": int(p.sum()),
                             "dice": 2 * float((t & p).sum()) / float(t.sum() + p.sum()) if both else None})
    return rows


def table(model: str, rows: list[dict]) -> str:
    out = [f"### {model}\n", "| level | class | slices | truth has it | FN slices | FP slices | classifier accuracy | "
           "mean Dice where both | median truth px of FN |", "|---|---|---|---|---|---|---|---|---|"]
    for level in LEVELS:
        for name in CLASS_NAMES:
            r = [x for x in rows if x["level"] == level and x["class"] == name]
            n = len(r)
            fn = [x for x in r if x["truth"] and not x["mask"]]
            fp = [x for x in r if x["mask"] and not x["truth"]]
            cls = [x for x in r if x["classifier"] is not None]
            acc = f"{np.mean([x['classifier'] == x['truth'] for x in cls]):.3f}" if cls else "-"
            dice = [x["dice"] for x in r if x["dice"] is not None]
            out.append(f"| {level} | {name} | {n} | {sum(x['truth'] for x in r)} | {len(fn)} ({len(fn) / max(n, 1):.1%}) | "
                       f"{len(fp)} ({len(fp) / max(n, 1):.1%}) | {acc} | {np.mean(dice) if dice else float('nan'):.3f} | "
                       f"{int(np.median([x['truth_px'] for x in fn])) if fn else '-'} |")
    return "\n".join(out) + "\n"


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("data")
    ap.add_argument("--model", nargs="+", default=[None], help="shipped model names or run folders (default: the shipped default)")
    ap.add_argument("--ungated", action="store_true", help="also without the classifier gate")
    ap.add_argument("--out")
    args = ap.parse_args()
    volumes = load_labelled_dataset(args.data)
    text = []
    for m in args.model:
        predictor = Predictor.load(m, device="cpu")
        name = predictor.name if m is None else str(m)
        text.append(table(name, analyse(predictor, volumes)))
        if args.ungated and "_mt" in predictor.name:  # multitask models: gated by their classifier
            predictor.gate = "off"
            text.append(table(f"{name} (gate off)", analyse(predictor, volumes)))
    report = "\n".join(text)
    print(report)
    if args.out:
        Path(args.out).write_text(report)


if __name__ == "__main__":
    main()
