"""The default's two members fine-tuned on histogram-standardised stacks, averaged as the default
is: rule 23's candidate (docs/decisions.md) in one command, for longer budgets or other data.

    python experiments/train_standardised_ensemble.py DATA OUT [--seg-min 18] [--ref-min 10]
        [--init ENSEMBLE_FOLDER] [--seed 23]

1. the landmarks: the mean foreground percentiles of DATA/train's stacks in their central 120 mm
   (:func:`cmrseg.data.preprocessing.mean_intensity_landmarks`; val is not read), or, with
   ``--init``, the landmarks its members were trained with;
2. each shipped member (or the ``--init`` ensemble's member in its place: rule 24 continued rule
   23's ensemble) continued by ``experiments/train_cpu_2h.sh`` (the recipe that trained it,
   ``fast`` protocol, ``dice_weight 0.5``) with those landmarks in its preprocessing, into
   ``OUT/<shipped member's name>/``; a rerun resumes or skips finished stages, as the trainer does;
3. ``OUT/ensemble/ensemble.json`` naming the two runs, each run given the shipped member's
   inference settings (gate, flips, clean-up): ``cmrseg segment --model OUT/ensemble``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

from cmrseg.atomic import write_json
from cmrseg.data.io.readers import load_labelled_dataset
from cmrseg.data.preprocessing import PreprocessConfig, mean_intensity_landmarks
from cmrseg.inference.ensemble import read_ensemble
from cmrseg.inference.options import MODEL_CHOICES
from cmrseg.inference.predictor import DEFAULT_MODEL, ENSEMBLE_FILE, WEIGHTS_DIR

HERE = Path(__file__).resolve().parent


def shipped_members() -> list[Path]:
    return read_ensemble(WEIGHTS_DIR / DEFAULT_MODEL)[0]


def starting_points(init: Path | None) -> tuple[list[Path], tuple[list[float], float] | None]:
    """The models to continue, one per shipped member in its order, and the landmarks and window
    they were trained with (None: the shipped ones carry none, so fit them)."""
    if init is None:
        return shipped_members(), None
    if not (init / ENSEMBLE_FILE).is_file():
        raise SystemExit(f"{init}: no {ENSEMBLE_FILE} (--init takes an ensemble folder this script wrote)")
    members = read_ensemble(init)[0]
    if len(members) != len(shipped_members()):
        raise SystemExit(f"{init}: {len(members)} members, the default has {len(shipped_members())}")
    prep = [json.loads((m / "model.json").read_text())["preprocess"] for m in members]
    standard = [(p.get("landmarks"), p.get("landmark_window_mm")) for p in prep]
    if standard[0][0] is None or any(s != standard[0] for s in standard):
        raise SystemExit(f"{init}: its members do not share one set of landmarks")
    return members, standard[0]


def assemble(runs: list[Path], shipped: list[Path], folder: Path) -> Path:
    """Give each run the inference settings of the shipped member it continues, then write
    ``folder/ensemble.json`` averaging them with the default's clean-up."""
    for run, member in zip(runs, shipped):
        meta = json.loads((run / "model.json").read_text())
        if not meta.get("complete"):
            raise SystemExit(f"{run}: the run is not complete")
        settings = json.loads((member / "model.json").read_text())
        meta.update({k: settings[k] for k in MODEL_CHOICES if k in settings})
        write_json(run / "model.json", meta)
    default = json.loads((WEIGHTS_DIR / DEFAULT_MODEL / ENSEMBLE_FILE).read_text())
    folder.mkdir(parents=True, exist_ok=True)
    write_json(folder / ENSEMBLE_FILE, {"members": [os.path.relpath(r, folder) for r in runs],
                                        "postprocess": default.get("postprocess", "clean")})
    return folder


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("data", type=Path, help="a folder with train/ and val/ (../shared/data/acdc)")
    ap.add_argument("out", type=Path)
    ap.add_argument("--seg-min", type=int, default=18, help="minutes of Seg stage per member")
    ap.add_argument("--ref-min", type=int, default=10, help="minutes of Ref stage per member")
    ap.add_argument("--window-mm", type=float, default=120.0)
    ap.add_argument("--init", type=Path, help="an ensemble folder to continue instead of the shipped default "
                    "(a previous run's OUT/ensemble); its landmarks are kept")
    ap.add_argument("--seed", type=int, default=23)
    args = ap.parse_args(argv)
    shipped = shipped_members()
    starts, standard = starting_points(args.init)
    if standard is not None:
        landmarks, args.window_mm = standard
    else:
        percentiles = PreprocessConfig.from_dict(json.loads((shipped[0] / "model.json").read_text())["preprocess"]).percentiles
        landmarks = mean_intensity_landmarks(((v.image, v.geometry.inplane_spacing)
                                              for v in load_labelled_dataset(args.data / "train")), percentiles,
                                             args.window_mm)
    sets = f"dice_weight=0.5 seed={args.seed} preprocess.landmarks=[" + ",".join(f"{v:.5f}" for v in landmarks) + "]"
    if args.window_mm is not None:  # None: an --init ensemble standardised on whole slices
        sets += f" preprocess.landmark_window_mm={args.window_mm:g}"
    runs = []
    for member, start in zip(shipped, starts):
        out = args.out / member.name
        env = {**os.environ, "INIT": str(start), "EXTRA_SETS": sets, "PYTHON": sys.executable,
               "CMRSEG": f"{sys.executable} -m cmrseg"}
        subprocess.run(["bash", str(HERE / "train_cpu_2h.sh"), str(args.data), str(out), str(args.seg_min),
                        str(args.ref_min), "0"], check=True, env=env)
        runs.append(out / "seg_as+ref_as_mt")
    folder = assemble(runs, shipped, args.out / "ensemble")
    print(f"cmrseg segment --model {folder}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
