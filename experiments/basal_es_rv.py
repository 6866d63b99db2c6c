"""How the experts label the RV on the most basal end-systolic slice: is the call the model gets
wrong there consistent in the labels themselves?

    PYTHONPATH=src python experiments/basal_es_rv.py ../shared/data/acdc/train [../shared/data/acdc/val ...] \
        [--pred PRED_DIR]

For every patient of a labelled split (any layout ``cmrseg evaluate`` reads; ED, ES and the
pathology group from its side files, for ACDC's h5 files ``metadata.csv``): the most basal ES slice with LV or MYO in
the truth, and whether the experts drew RV there, counted over the patients whose ED frame has
RV on that same slice (the slice holds ventricle at ED, so at ES the question is whether the
descended base still shows RV or already atrium / outflow tract). Per pathology group and in
all. With ``--pred`` (a ``cmrseg segment`` folder of the last split's files), the same slice
of the prediction: how often the mask has RV there where the experts drew it and where they
did not. docs/RESULTS.md ("The RVEF error is a handful of whole-slice decisions") reports it.
"""

from __future__ import annotations

import argparse
from collections import defaultdict
from pathlib import Path

import numpy as np

from cmrseg.data.io import load_labelled_dataset
from cmrseg.data.io.acdc import ed_es_pairs
from cmrseg.data.io.readers import read_label_volume
from cmrseg.labels import LV, MYO, RV


def basal_es_call(ed: np.ndarray, es: np.ndarray) -> bool | None:
    """For one patient's ED and ES labels ``[S, H, W]``: whether the most basal ES slice with
    LV or MYO has RV, or ``None`` when ED has no RV on that slice (or ES has no LV at all)."""
    k = basal_es_slice(es)
    if k is None or not (ed[k] == RV).any():
        return None
    return bool((es[k] == RV).any())


def basal_es_slice(es: np.ndarray) -> int | None:
    """The most basal slice of ES labels ``[S, H, W]`` with LV or MYO."""
    heart = [k for k in range(es.shape[0]) if np.isin(es[k], (MYO, LV)).any()]
    return heart[0] if heart else None


def count_calls(folder: Path, pred: Path | None = None) -> dict[str, list[int]]:
    """``{group: [patients with RV at ES there, patients counted]}``, with ``"all"``; with
    ``pred``, two more counts: the masks with RV there among the first, and among the rest."""
    counts: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0, 0])
    for ed, es in ed_es_pairs(load_labelled_dataset(folder)).values():
        call = basal_es_call(ed.label, es.label)
        if call is None:
            continue
        drawn = pred is not None and bool((read_label_volume(pred / es.path.name).label[basal_es_slice(es.label)]
                                           == RV).any())
        for group in (ed.meta.get("group", "?"), "all"):
            counts[group][0] += int(call)
            counts[group][1] += 1
            counts[group][2 if call else 3] += int(drawn)
    return dict(sorted(counts.items()))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("splits", type=Path, nargs="+")
    ap.add_argument("--pred", type=Path, help="cmrseg segment folder of the last split")
    args = ap.parse_args()
    for folder in args.splits:
        pred = args.pred if folder == args.splits[-1] else None
        counts = count_calls(folder, pred)
        print(f"{folder}: RV drawn on the most basal ES slice (of patients with RV there at ED): "
              + ", ".join(f"{g} {c[0]}/{c[1]}" for g, c in counts.items()))
        if pred is not None:
            c = counts["all"]
            print(f"{pred}: RV in the mask there on {c[2]} of the {c[0]} with RV drawn, "
                  f"on {c[3]} of the {c[1] - c[0]} without")


if __name__ == "__main__":
    main()
