"""The basal slices a model and the experts decide differently, and how sure the model was
(issue 36: why some failures are invisible to quality control).

For every labelled study of a folder: per structure and phase, the first slices (base first) with
the model's mask pixels, the experts' and the pixels the model thought possible (probability
>= 0.25, :attr:`cmrseg.inference.predictor.Prediction.bands`), and whether the two disagree on a
whole slice (one has the structure there, the other nothing). A whole-slice disagreement where
the model thought nothing possible cannot be seen in its probabilities: no estimate built on them
flags it.

    python experiments/basal_slice_decisions.py ../shared/data/acdc/val [--model NAME] [--slices 3]
    python experiments/basal_slice_decisions.py ../shared/data/acdc/train --experts-only

``--experts-only`` reads no model: per patient, whether the experts drew the RV at end-systole on
the first slice (base first) of their end-diastolic RV, and its volume there. Where experts of one
population decide that slice both ways, a model reading the image still decides some studies the
other way, and those fail by that slice's volume whatever the model's probabilities say.
"""

from __future__ import annotations

import argparse
import sys

import numpy as np

from cmrseg.data.io.readers import load_labelled_dataset
from cmrseg.data.volume import ed_es_by_patient
from cmrseg.inference.ensemble import load_predictor
from cmrseg.inference.options import InferenceOptions
from cmrseg.labels import CLASS_NAMES, LV, MYO, RV


def decisions(truth: np.ndarray, mask: np.ndarray, bands: np.ndarray, slices: int) -> list[dict]:
    """Per structure, its first ``slices`` slices: ``(mask px, truth px, possible px)``, and the
    whole-slice disagreements among them with the model's possible pixels there."""
    out = []
    for k, c in enumerate((RV, MYO, LV)):
        rows = [(int((mask[s] == c).sum()), int((truth[s] == c).sum()), int(bands[s, k, 1])) for s in range(slices)]
        whole = [(s, m, t, p) for s, (m, t, p) in enumerate(rows) if (m == 0) != (t == 0)]
        out.append({"structure": CLASS_NAMES[k], "rows": rows, "whole_slice": whole})
    return out


def basal_es_rv(ed_label: np.ndarray, es_label: np.ndarray, voxel_ml: float) -> tuple[bool, float] | None:
    """Whether the experts drew the RV at ES on the first slice of their ED RV, and its volume
    there (mL); None when the ED RV is empty."""
    slices = np.flatnonzero((ed_label == RV).any(axis=(1, 2)))
    if not slices.size:
        return None
    px = int((es_label[slices[0]] == RV).sum())
    return px > 0, px * voxel_ml


def experts_habit(volumes) -> list[tuple[str, bool, float]]:
    """``(patient, drawn, mL)`` of :func:`basal_es_rv` for every patient with both phases labelled."""
    out = []
    for patient, by in sorted(ed_es_by_patient(volumes).items()):
        if found := basal_es_rv(by["ED"].label, by["ES"].label, by["ED"].geometry.voxel_volume_ml):
            out.append((patient, *found))
    return out


def habit_line(rows: list[tuple[str, bool, float]]) -> str:
    drawn = [ml for _, d, ml in rows if d]
    if not rows:
        return "no patient with the RV labelled at ED and ES"
    where = f"; its volume there median {np.median(drawn):.1f} mL (range {min(drawn):.1f}-{max(drawn):.1f})" if drawn else ""
    return (f"{len(rows)} patients: the experts drew the RV at ES on the first slice of their ED RV in "
            f"{len(drawn)} ({100 * len(drawn) / len(rows):.0f} %){where}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("data", help="a labelled folder (the val split)")
    ap.add_argument("--model", default=None, help="shipped model or run folder (default: the shipped default)")
    ap.add_argument("--slices", type=int, default=3, help="how many basal slices to show")
    ap.add_argument("--experts-only", action="store_true",
                    help="no model: how often the experts drew the RV at ES on their first ED RV slice, and its volume")
    args = ap.parse_args(argv)
    if args.experts_only:
        rows = experts_habit(load_labelled_dataset(args.data))
        for patient, drawn, ml in rows:
            print(f"{patient}: {'drawn' if drawn else 'left out'}{f' ({ml:.1f} mL)' if drawn else ''}")
        print(habit_line(rows))
        return 0
    predictor = load_predictor(args.model, InferenceOptions())
    print("| volume | structure | basal slices: mask / experts / possible (px) | whole-slice disagreement |")
    print("|---|---|---|---|")
    for vol in load_labelled_dataset(args.data):
        pred = predictor.predict_volume(vol)
        for d in decisions(vol.label, pred.mask, pred.bands, min(args.slices, vol.label.shape[0])):
            if d["structure"] == "MYO" and not d["whole_slice"]:
                continue
            cells = "; ".join(f"{m} / {t} / {p}" for m, t, p in d["rows"])
            whole = ", ".join(f"slice {s}: mask {m}, experts {t}, possible {p}" for s, m, t, p in d["whole_slice"])
            print(f"| {vol.name} | {d['structure']} | {cells} | {whole or '-'} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
