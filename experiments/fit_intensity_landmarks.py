"""Fit a model's histogram-standardisation landmarks on its training data: ``landmarks`` in the
``preprocess`` of its ``model.json``.

With them, :func:`cmrseg.data.preprocessing.preprocess_image` maps every stack's foreground
percentiles (after the usual 0.5/99.5 normalisation, in its central ``--window-mm``) onto the
training stacks' mean ones (Nyul-Udupa), so another sequence's intensity curve (the shift
benchmark's ``other_contrast``, ``gamma_*``) reaches the network as the intensities it was
trained on. This script computes those means from the TRAINING stacks, read as ``cmrseg
segment`` reads any input; val is never looked at (docs/decisions.md, rule 22).

    python experiments/fit_intensity_landmarks.py MODEL --data ../shared/data/acdc/train \\
        [--window-mm 120] [--write]

MODEL: a model folder (one network) or an ensemble folder (``--write`` then writes into each
member's ``model.json``, atomically). Without ``--write`` the landmarks are printed only.

``--second-opinion SEGMENTED`` instead writes, into an ensemble folder's ``ensemble.json``, a
second opinion (:class:`cmrseg.inference.ensemble.SecondOpinion`): the members' networks keep
reading stacks as they were trained to, and a study whose uncertainty exceeds the
``--quantile``-th percentile of the uncertainties in SEGMENTED (a ``cmrseg segment`` output
folder of the same ensemble on the same training data) is segmented again on standardised
intensities, the surer result kept (docs/decisions.md, rule 26):

    cmrseg segment -i ../shared/data/acdc/train -o SEG --model ENSEMBLE
    python experiments/fit_intensity_landmarks.py ENSEMBLE --data ../shared/data/acdc/train \\
        --second-opinion SEG [--quantile 90] --write
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from cmrseg.atomic import write_json
from cmrseg.data.io.readers import load_labelled_dataset
from cmrseg.data.preprocessing import LANDMARK_PERCENTILES, mean_intensity_landmarks
from cmrseg.inference.ensemble import read_ensemble
from cmrseg.inference.predictor import ENSEMBLE_FILE


def model_files(folder: Path) -> list[Path]:
    """The ``model.json`` of a model folder, or of each member of an ensemble folder."""
    if (folder / ENSEMBLE_FILE).is_file():
        return [m / "model.json" for m in read_ensemble(folder)[0]]
    if (folder / "model.json").is_file():
        return [folder / "model.json"]
    raise SystemExit(f"{folder}: neither model.json nor ensemble.json there")


def second_opinion(landmarks, window: float | None, segmented: Path, quantile: float) -> dict:
    """``ensemble.json``'s ``second_opinion``: the landmarks, and the ``quantile``-th percentile of
    the study uncertainties ``cmrseg segment`` recorded in ``segmented/summary.json``."""
    try:
        studies = json.loads((segmented / "summary.json").read_text())["studies"]
    except (OSError, ValueError, KeyError) as exc:
        raise SystemExit(f"{segmented}: not a cmrseg segment output folder ({exc})") from None
    found = [s["uncertainty"] for s in studies.values() if s.get("uncertainty") is not None]
    if not found:
        raise SystemExit(f"{segmented}: no study with an uncertainty")
    return {"landmarks": [round(float(v), 5) for v in landmarks], "landmark_window_mm": window,
            "above_uncertainty": round(float(np.percentile(found, quantile)), 4),
            "fitted": f"the {quantile:g}th percentile of the uncertainties of {len(found)} training studies ({segmented})"}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model", type=Path, help="a model folder or an ensemble folder")
    ap.add_argument("--data", required=True, help="the training data (a labelled folder) the model was trained on")
    ap.add_argument("--window-mm", type=float, default=120.0,
                    help="landmarks in the central square of this size (mm); 0: the whole slice")
    ap.add_argument("--write", action="store_true", help="write the landmarks into each model.json")
    ap.add_argument("--second-opinion", type=Path, metavar="SEGMENTED",
                    help="write a second opinion into ensemble.json instead, its threshold from the study "
                         "uncertainties of this cmrseg segment folder (the ensemble on the training data)")
    ap.add_argument("--quantile", type=float, default=90.0,
                    help="--second-opinion: the percentile of those uncertainties above which a study is asked again")
    args = ap.parse_args(argv)
    window = args.window_mm or None
    if args.second_opinion and not (args.model / ENSEMBLE_FILE).is_file():
        raise SystemExit(f"{args.model}: --second-opinion needs an ensemble folder (ensemble.json)")
    files = model_files(args.model)
    metas = [json.loads(f.read_text()) for f in files]
    if any(m["preprocess"].get("landmarks") for m in metas):
        raise SystemExit(f"{args.model}: a model.json already has landmarks; fit on a copy without them")
    percentiles = {tuple(m["preprocess"].get("percentiles", (0.5, 99.5))) for m in metas}
    if len(percentiles) > 1:
        raise SystemExit(f"{args.model}: the members normalise differently ({percentiles}); fit each on its own")
    volumes = load_labelled_dataset(args.data)
    stacks = ((v.image, v.geometry.inplane_spacing)
              for v in tqdm(volumes, desc="landmarks of the training stacks", leave=False))
    standard = mean_intensity_landmarks(stacks, percentiles.pop(), window)
    print(f"{len(volumes)} training stacks; landmarks at percentiles {LANDMARK_PERCENTILES}:")
    print(" ".join(f"{v:.4f}" for v in standard))
    if args.second_opinion:
        opinion = second_opinion(standard, window, args.second_opinion, args.quantile)
        print(f"second opinion above uncertainty {opinion['above_uncertainty']} ({opinion['fitted']})")
        if args.write:
            spec_path = args.model / ENSEMBLE_FILE
            write_json(spec_path, {**json.loads(spec_path.read_text()), "second_opinion": opinion})
            print(f"written to {spec_path}")
        return 0
    if args.write:
        for f, meta in zip(files, metas):
            meta["preprocess"]["landmarks"] = [round(float(v), 5) for v in standard]
            meta["preprocess"]["landmark_window_mm"] = window
            meta["landmarks_fitted"] = (f"experiments/fit_intensity_landmarks.py on {len(volumes)} training stacks "
                                        f"of {Path(args.data).name}")
            write_json(f, meta)
            print(f"written to {f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
