"""`cmrseg segment`'s model-independent quality control run on the experts' own masks: what a
perfect model would be flagged for. A flag here is a false alarm by construction, and a `fail`
verdict on an expert's contours is a check that cannot tell disease from a failed model.

    PYTHONPATH=src python experiments/qc_on_truth.py ../shared/data/acdc/train [../shared/data/acdc/val ...]

For every patient of an h5 split (``patientNNN_frame01.h5`` = ED, ``_frame02.h5`` = ES, spacing
and frames from ``metadata.csv``): the slice checks of both frames (no classifier, no
uncertainty: the truth has neither) and the study checks on the measures of the truth, then the
verdict, as `cmrseg segment` combines them. Prints the verdicts, the flags by
name, and every failing patient with its reasons. docs/RESULTS.md ("Quality control and the
experts' own measures") reports it.
"""

from __future__ import annotations

import argparse
from collections import Counter
from pathlib import Path

import numpy as np

from cmrseg.data.io.h5 import read_h5_label_volume
from cmrseg.evaluation.clinical import cardiac_measures, structure_volumes_ml
from cmrseg.inference.quality import FAIL_FLAGS, mid_slice_count, slice_flags, study_flags, verdict


def truth_flags(ed_path: Path) -> tuple[str, list[dict]]:
    """The verdict and the flags QC gives one patient's expert masks (ED and ES)."""
    ed = read_h5_label_volume(ed_path)
    es = read_h5_label_volume(ed_path.with_name(ed_path.name.replace("_frame01", "_frame02")))
    spacing = ed.geometry.spacing
    if spacing is None:
        raise SystemExit(f"{ed_path}: no voxel spacing (metadata.csv beside it gives pixel_mm and slice_spacing_mm)")
    pixel_mm = float(np.sqrt(spacing[1] * spacing[2]))
    voxel_ml = float(np.prod(spacing)) / 1000.0
    flags, mid = [], {}
    for label, vol in (("ED", ed), ("ES", es)):
        flags += slice_flags(vol.label, None, label, pixel_mm)
        mid[label] = mid_slice_count(vol.label)
    measures = cardiac_measures(structure_volumes_ml(ed.label, voxel_ml), structure_volumes_ml(es.label, voxel_ml))
    frames, ed_t, es_t = (int(ed.meta.get(k, 0) or 0) for k in ("frames", "ed_frame", "es_frame"))
    flags += study_flags(measures, True, frames, ed_t - 1, es_t - 1)
    return verdict(flags, mid), flags


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("splits", type=Path, nargs="+")
    args = ap.parse_args()
    for folder in args.splits:
        verdicts, names, failed = Counter(), Counter(), []
        for ed_path in sorted(folder.glob("*_frame01.h5")):
            v, flags = truth_flags(ed_path)
            verdicts[v] += 1
            names.update(f["flag"] for f in flags)
            if v == "fail":
                reasons = [f["detail"] for f in flags if f["flag"] in FAIL_FLAGS] or ["anatomy flags on mid slices"]
                failed.append(f"{ed_path.name.split('_')[0]} ({'; '.join(reasons)})")
        print(f"{folder}: verdicts {dict(verdicts)}; flags {dict(names.most_common())}")
        print("  failed: " + (", ".join(failed) or "none"))


if __name__ == "__main__":
    main()
