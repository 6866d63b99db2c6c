"""Write a labelled cmrseg folder (ACDC h5 with ``metadata.csv``) in the layout of the M&Ms
challenge data (Campello et al. 2021): per patient ``<patient>_sa.nii.gz``, a 4D short-axis
cine, and ``<patient>_sa_gt.nii.gz``, a 4D label map with labels only at end-diastole and
end-systole, in M&Ms values (LV 1, MYO 2, RV 3; other frames all zero).

The ACDC h5 files hold the ED and ES frames only, so the cine here has ``--frames`` frames:
ED at frame 1, ES at frame ``--es-frame``, and the frames between and after them blends of
the two images (unlabelled, as M&Ms leaves its other frames). The labelled frames are the
real images and expert masks, so ``cmrseg evaluate`` on this layout must give what it gives on
the h5 files.

    python experiments/mnms_layout.py ../shared/data/acdc/val OUT [--frames 8] [--es-frame 4]
    cmrseg segment -i OUT -o PRED
    cmrseg evaluate --pred PRED --gt OUT --labels LV=1,MYO=2,RV=3 -o REPORT
"""

import argparse
from pathlib import Path

import numpy as np

from cmrseg.data.io import load_labelled_dataset
from cmrseg.data.io.nifti import write_nifti_image
from cmrseg.data.volume import ed_es_by_patient

MNMS_VALUES = np.array([0, 3, 2, 1], dtype=np.uint8)  # cmrseg (bg, RV, MYO, LV) -> M&Ms values


def cine_of(ed: np.ndarray, es: np.ndarray, frames: int, es_frame: int) -> np.ndarray:
    """``[T, S, H, W]``: ED at 0, ES at ``es_frame - 1``, blends elsewhere (systole, then back)."""
    out = []
    for t in range(frames):
        if t < es_frame - 1:
            w = t / (es_frame - 1)
        else:
            w = 1.0 - (t - (es_frame - 1)) / (frames - es_frame + 1)
        out.append((1.0 - w) * ed + w * es)
    return np.stack(out).astype(np.float32)


def write_layout(data: Path, out: Path, frames: int = 8, es_frame: int = 4) -> list[str]:
    """Every patient of the labelled folder ``data`` with both phases labelled in the M&Ms layout
    under ``out``; returns the patients written."""
    by_patient = ed_es_by_patient(load_labelled_dataset(data))
    out.mkdir(parents=True, exist_ok=True)
    for patient, phases in sorted(by_patient.items()):
        ed, es = phases["ED"], phases["ES"]
        cine = cine_of(ed.image, es.image, frames, es_frame)
        labels = np.zeros(cine.shape, dtype=np.uint8)
        labels[0], labels[es_frame - 1] = MNMS_VALUES[ed.label], MNMS_VALUES[es.label]
        affine = np.diag([*ed.geometry.spacing[::-1], 1.0])  # x = column, y = row, z = slice
        write_nifti_image(cine, affine, out / f"{patient}_sa.nii.gz")
        write_nifti_image(labels, affine, out / f"{patient}_sa_gt.nii.gz")
    return sorted(by_patient)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("data", type=Path, help="labelled h5 folder with metadata.csv (e.g. ../shared/data/acdc/val)")
    ap.add_argument("out", type=Path)
    ap.add_argument("--frames", type=int, default=8)
    ap.add_argument("--es-frame", type=int, default=4, help="1-based frame of end-systole")
    args = ap.parse_args()
    patients = write_layout(args.data, args.out, args.frames, args.es_frame)
    print(f"{len(patients)} patients written to {args.out}")


if __name__ == "__main__":
    main()
