"""`cmrseg segment`'s model-independent quality control run on the experts' own masks: what a
perfect model would be flagged for. A flag here is a false alarm by construction, and a `fail`
verdict on an expert's contours is a check that cannot tell disease from a failed model.

    PYTHONPATH=src python experiments/qc_on_truth.py ../shared/data/acdc/train [../shared/data/acdc/val ...]

For every patient of a labelled split (any layout ``cmrseg evaluate`` reads; ED, ES, spacing and
frames from its side files, for ACDC's h5 files ``metadata.csv``): the slice checks of both frames (no classifier, no
uncertainty: the truth has neither) and the study checks on the measures of the truth, then the
verdict, as `cmrseg segment` combines them. Prints the verdicts, the flags by
name, and every failing patient with its reasons; then, over all splits given, the range of
each measure QC bounds and the thickest mean walls of the mid-ventricular slices. docs/RESULTS.md ("Quality control and the
experts' own measures") reports it.
"""

from __future__ import annotations

import argparse
from collections import Counter
from pathlib import Path

import numpy as np

from cmrseg.data.io import load_labelled_dataset
from cmrseg.data.io.acdc import ed_es_pairs
from cmrseg.data.volume import Volume
from cmrseg.evaluation.clinical import PLAUSIBLE, cardiac_measures, structure_volumes_ml
from cmrseg.evaluation.clinical import mean_wall_mm
from cmrseg.inference.quality import FAIL_FLAGS, mid_slice_count, mid_slices, slice_flags, study_flags, verdict
from cmrseg.labels import LV, MYO


def truth_flags(ed: Volume, es: Volume, measures: dict[str, float] | None = None) -> tuple[str, list[dict]]:
    """The verdict and the flags QC gives one patient's expert masks (ED and ES); ``measures``:
    their :func:`truth_measures`, when the caller has them already."""
    measures = truth_measures(ed, es) if measures is None else measures
    pixel_mm = float(np.sqrt(np.prod(ed.geometry.inplane_spacing)))  # as cmrseg segment's QC takes it
    flags, mid = [], {}
    for label, vol in (("ED", ed), ("ES", es)):
        flags += slice_flags(vol.label, None, label, pixel_mm)
        mid[label] = mid_slice_count(vol.label)
    frames, ed_t, es_t = (int(ed.meta.get(k, 0) or 0) for k in ("frames", "ed_frame", "es_frame"))
    flags += study_flags(measures, True, frames, ed_t - 1, es_t - 1)
    return verdict(flags, mid), flags


def truth_measures(ed: Volume, es: Volume) -> dict[str, float]:
    """The measures of one patient's expert masks."""
    voxel_ml = ed.geometry.voxel_volume_ml
    if voxel_ml is None:
        raise SystemExit(f"{ed.path}: no voxel spacing (for h5 files, metadata.csv beside them gives it)")
    return cardiac_measures(structure_volumes_ml(ed.label, voxel_ml), structure_volumes_ml(es.label, voxel_ml))


def mid_walls(vol: Volume) -> list[float]:
    """Mean wall thickness (mm) of each mid-ventricular slice with LV and MYO, as QC measures it."""
    pixel_mm = float(np.sqrt(np.prod(vol.geometry.inplane_spacing)))
    return [mean_wall_mm(vol.label[k], pixel_mm) for k in mid_slices(vol.label)
            if (vol.label[k] == LV).any() and (vol.label[k] == MYO).any()]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("splits", type=Path, nargs="+")
    args = ap.parse_args()
    measures, walls = [], []
    for folder in args.splits:
        verdicts, names, failed = Counter(), Counter(), []
        for patient, (ed, es) in ed_es_pairs(load_labelled_dataset(folder)).items():
            measures.append(truth_measures(ed, es))
            walls += [(w, f"{patient} {phase}") for phase, vol in (("ED", ed), ("ES", es)) for w in mid_walls(vol)]
            v, flags = truth_flags(ed, es, measures[-1])
            verdicts[v] += 1
            names.update(f["flag"] for f in flags)
            if v == "fail":
                reasons = [f["detail"] for f in flags if f["flag"] in FAIL_FLAGS] or ["anatomy flags on mid slices"]
                failed.append(f"{patient} ({'; '.join(reasons)})")
        print(f"{folder}: verdicts {dict(verdicts)}; flags {dict(names.most_common())}")
        print("  failed: " + (", ".join(failed) or "none"))
    print(f"over {len(measures)} patients: " + ", ".join(
        f"{k} {min(m[k] for m in measures):.1f}-{max(m[k] for m in measures):.1f}" for k in PLAUSIBLE))
    print("thickest mid-ventricular walls (mm): " + ", ".join(f"{w:.1f} {where}" for w, where in sorted(walls)[-8:]))


if __name__ == "__main__":
    main()
