"""Regional wall thickness against the truth (issue 37): each AHA segment's thickness
(:mod:`cmrseg.measures.aha`) from the prediction and from the experts' mask of the same volume,
each oriented by its own RV insertion points, and their agreement per segment and phase: bias
and Bland-Altman limits of agreement (bias -+ 1.96 SD of the differences).

What is compared: a segment's mean thickness over its ring's slices (mm, radial chords), one
value per volume and segment where both masks measured it. The apical cap (segment 17) has no
radial thickness and is left out.
"""

from __future__ import annotations

import csv
import io
from typing import Any, Sequence

import numpy as np

from cmrseg.evaluation.figures import limits_of_agreement
from cmrseg.measures.aha import SEGMENT_NAMES, aha_analysis

SEGMENTS = tuple(range(1, 17))


def segment_pairs(pred: np.ndarray, gt: np.ndarray, spacing_rc: tuple[float, float]) -> dict[int, tuple[float, float]]:
    """{segment: (truth mm, prediction mm)} of one volume, the segments both masks measured."""
    truth = aha_analysis(gt, None, spacing_rc)["segments"]
    predicted = aha_analysis(pred, None, spacing_rc)["segments"]
    return {n: (truth[n]["ED (mm)"], predicted[n]["ED (mm)"]) for n in SEGMENTS
            if truth[n]["ED (mm)"] is not None and predicted[n]["ED (mm)"] is not None}


def _stats(pairs: np.ndarray) -> dict[str, float]:
    """Means, bias and limits of agreement (:func:`~cmrseg.evaluation.figures.limits_of_agreement`)
    of ``[n, (truth, prediction)]`` pairs."""
    bias, low, high = limits_of_agreement(pairs[:, 1] - pairs[:, 0])
    return {"n": int(pairs.shape[0]), "truth mm": float(pairs[:, 0].mean()), "prediction mm": float(pairs[:, 1].mean()),
            "bias mm": bias, "loa low mm": low, "loa high mm": high}


def aha_agreement(results: Sequence[Any]) -> dict[str, Any]:
    """{phase: {segment or ``all``: :func:`_stats`}} over the volumes' :attr:`aha_mm` (the
    volumes without a phase under ``volumes``)."""
    out: dict[str, Any] = {}
    for phase in ("ED", "ES", "volumes"):
        rows = [r.aha_mm for r in results if r.aha_mm and (r.meta.get("phase") or "volumes") == phase]
        if not rows:
            continue
        by_segment = {n: np.array([r[n] for r in rows if n in r], dtype=float).reshape(-1, 2) for n in SEGMENTS}
        pooled = np.concatenate(list(by_segment.values()))
        if pooled.shape[0]:
            out[phase] = {"all": _stats(pooled), **{str(n): _stats(p) for n, p in by_segment.items() if p.shape[0]}}
    return out


def aha_table(agreement: dict[str, Any]) -> list[str]:
    """Markdown lines of :func:`aha_agreement`: one row per segment, a column pair per phase."""
    if not agreement:
        return []
    phases = list(agreement)
    md = ["", "### Regional wall thickness by AHA segment (prediction - truth, mm)", "",
          "Each segment's mean radial thickness over its ring's slices, each mask oriented by its own RV insertion "
          "points; bias and Bland-Altman limits of agreement over the volumes (n).", "",
          "| segment | " + " | ".join(f"{p} n | {p} truth | {p} bias | {p} limits" for p in phases) + " |",
          "|---|" + "---|---|---|---|" * len(phases)]
    for key in ("all", *(str(n) for n in SEGMENTS)):
        cells = []
        for p in phases:
            s = agreement[p].get(key)
            cells += (["", "", "", ""] if s is None else
                      [str(s["n"]), f"{s['truth mm']:.2f}", f"{s['bias mm']:+.2f}",
                       f"{s['loa low mm']:+.2f} to {s['loa high mm']:+.2f}"])
        name = "all 16" if key == "all" else f"{key} {SEGMENT_NAMES[int(key)]}"
        md.append(f"| {name} | " + " | ".join(cells) + " |")
    return md


def aha_csv(results: Sequence[Any]) -> str:
    """One row per volume and segment both masks measured: volume, patient, phase, segment,
    its name, both thicknesses (mm)."""
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["volume", "patient", "phase", "segment", "name", "truth wall (mm)", "prediction wall (mm)"])
    for r in results:
        for n, (t, p) in sorted((r.aha_mm or {}).items()):
            w.writerow([r.name, r.meta.get("patient", ""), r.meta.get("phase") or "", n, SEGMENT_NAMES[n], f"{t:.3f}",
                        f"{p:.3f}"])
    return buf.getvalue()
