"""Cross-validation on the training patients: K folds, a model trained per fold without its
patients, and out-of-fold masks of every training patient (what nnU-Net's five folds give).

Why: the networks that ship were trained on every training patient, so their masks of those
patients are in-sample (RVEF error 3.4 points against val's 7.5) and val's ten patients are the
only ones they never saw. Quality control's error estimates (issue 36) need many unseen patients
with the experts' own ways of drawing (a third of the training patients' experts' masks have LV and
RV stroke volumes more than 35 % apart; none of val's): out-of-fold masks give 70.

    python experiments/cross_validate.py ../shared/data/acdc/train OUT --val ../shared/data/acdc/val \\
        [--folds 5] [--only 0 1] [--protocol fast] [--set KEY=VALUE ...] [--no-train] \\
        [--shifts none blur coarse_grid thick_slices other_contrast gamma_1.5] [--models-from GPU_OUT/models]

For each fold ``k`` (all, or those of ``--only``), in ``OUT/fold_k/``:

1. ``data/train`` and ``data/held_out``: the fold's patients split off (links to the h5 files,
   ``manifest.json`` and ``metadata.csv`` filtered to them);
2. ``seg_as`` then ``seg_as+ref_as_mt``: the proposed model's two stages trained from scratch by
   ``cmrseg train`` on ``data/train`` (``--val`` selects the checkpoints, as for the shipped
   models), each resumed where a killed run stopped;
3. ``pred`` and ``eval``: ``cmrseg segment`` of the held-out patients (the model read as the
   shipped proposed model is: its clean-up, gate and flips) and ``cmrseg evaluate``;
4. with ``--shifts``, ``bench``: ``benchmarks/shift_benchmark.py`` on the held-out patients with
   those shifts, the studies ``experiments/calibrate_qc.py OUT/fold_*/bench`` reads.

With ``--models-from`` a fold whose model is not trained yet takes it from that folder when it
holds one (``seg_as-ref_as_mt_fold<k>``: what ``experiments/gpu_job.py --plan folds --splits
OUT/splits.json`` brings back from a GPU call) instead of training it here.

``OUT/splits.json`` holds the folds (patients drawn per ACDC group, so each fold has every
disease; seeded): written once and reused, as nnU-Net's ``splits_final.json``, so a rerun or a
later session trains the same folds. Finished steps are skipped, so the same command resumes the
whole cross-validation. ``OUT/out_of_fold.md`` tabulates the folds evaluated so far.
"""

from __future__ import annotations

import argparse
import csv
import json
import random
import shlex
import shutil
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import torch

from cmrseg.atomic import write_json
from cmrseg.data.io.acdc import read_manifest, read_metadata_csv
from cmrseg.device import cpu_has_fast_bf16
from cmrseg.errors import InputError
from cmrseg.inference.options import MODEL_CHOICES
from cmrseg.inference.predictor import WEIGHTS_DIR
from cmrseg.training.run_folder import is_complete_run

SEED = 0
REPO = Path(__file__).resolve().parents[1]
STAGES = ("seg_as", "seg_as+ref_as_mt")


def make_splits(patients: dict[str, str], folds: int, seed: int = SEED) -> list[dict[str, list[str]]]:
    """``folds`` patient-disjoint splits covering every patient once as held out. ``patients``:
    {patient: group}; each group's patients are shuffled (seeded) and dealt round the folds, so
    every fold holds each group's share (a group of 14 in 5 folds: 3, 3, 3, 3, 2)."""
    if folds < 2 or folds > len(patients):
        raise ValueError(f"folds must be 2-{len(patients)} for {len(patients)} patients, got {folds}")
    rng = random.Random(seed)
    held = [[] for _ in range(folds)]
    turn = 0
    by_group = defaultdict(list)
    for p, g in sorted(patients.items()):
        by_group[g].append(p)
    for g in sorted(by_group):
        members = by_group[g]
        rng.shuffle(members)
        for p in members:  # dealt on from where the last group stopped: fold sizes differ by <= 1
            held[turn % folds].append(p)
            turn += 1
    everyone = sorted(patients)
    return [{"train": [p for p in everyone if p not in set_h], "held_out": sorted(h)}
            for h, set_h in ((h, set(h)) for h in held)]


def load_or_make_splits(out: Path, patients: dict[str, str], folds: int) -> list[dict[str, list[str]]]:
    """``OUT/splits.json`` if there (refused if its patients or fold count differ), else new."""
    path = out / "splits.json"
    if path.is_file():
        splits = json.loads(path.read_text())
        there = sorted({p for s in splits for p in s["held_out"]})
        if len(splits) != folds or there != sorted(patients):
            raise InputError(path, f"holds {len(splits)} folds of {len(there)} patients, not {folds} folds "
                                   f"of the {len(patients)} in the data: use another OUT or remove it")
        return splits
    splits = make_splits(patients, folds)
    write_json(path, splits)
    return splits


def write_subset(src: Path, dst: Path, patients: list[str]) -> None:
    """``dst``: links to ``src``'s h5 volumes of ``patients``, with their rows of ``manifest.json``
    and ``metadata.csv`` (rewritten each time, so a changed split cannot leave stale links)."""
    dst.mkdir(parents=True, exist_ok=True)
    keep = set(patients)
    for old in dst.glob("*.h5"):
        old.unlink()
    manifest = [e for e in json.loads((src / "manifest.json").read_text()) if e["patient"] in keep]
    for e in manifest:
        (dst / f"{e['volume']}.h5").symlink_to((src / f"{e['volume']}.h5").resolve())
    write_json(dst / "manifest.json", manifest)
    with open(src / "metadata.csv", newline="") as fin:
        reader = csv.DictReader(fin)
        rows = [r for r in reader if r["patient"] in keep]
        fields = reader.fieldnames
    with open(dst / "metadata.csv", "w", newline="") as fout:
        writer = csv.DictWriter(fout, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)


def _run(cmd: list[str]) -> None:
    print("+", shlex.join(cmd), flush=True)
    subprocess.run(cmd, check=True)


def give_inference_settings(run: Path) -> None:
    """The shipped proposed model's inference settings (clean-up, gate, flips) into the fold's
    ``model.json``, so its masks are read as the default's members read theirs."""
    meta = json.loads((run / "model.json").read_text())
    shipped = json.loads((WEIGHTS_DIR / STAGES[1] / "model.json").read_text())
    if any(meta.get(k) != shipped[k] for k in MODEL_CHOICES if k in shipped):
        meta.update({k: shipped[k] for k in MODEL_CHOICES if k in shipped})
        write_json(run / "model.json", meta)


def trained_elsewhere(models: Path, k: int) -> Path | None:
    """Fold ``k``'s model in ``models`` (``gpu_job.py --plan folds``' model folders), if complete."""
    folder = models / f"{STAGES[1].replace('+', '-')}_fold{k}"
    return folder if is_complete_run(folder) else None


def run_fold(k: int, split: dict, data: Path, val: Path, out: Path, protocol: str, sets: list[str],
             train: bool = True, shifts: list[str] | None = None, models_from: Path | None = None) -> Path | None:
    """One fold's data, training (or its model from ``models_from``) and out-of-fold evaluation
    (and its shift benchmark with ``shifts``); returns its ``eval`` folder, or None when its model
    is not trained (``train=False``)."""
    fold = out / f"fold_{k}"
    write_subset(data, fold / "data" / "train", split["train"])
    write_subset(data, fold / "data" / "held_out", split["held_out"])
    cmrseg = [sys.executable, "-m", "cmrseg"]
    common = ["--protocol", protocol, "--data", str(fold / "data" / "train"), "--val", str(val),
              "--set", "progress=false"] + [a for s in sets for a in ("--set", s)]
    seg, model = fold / STAGES[0], fold / STAGES[1]
    elsewhere = trained_elsewhere(models_from, k) if models_from and not is_complete_run(model) else None
    if elsewhere:
        shutil.rmtree(model, ignore_errors=True)  # a run this machine began is replaced whole
        shutil.copytree(elsewhere, model)
        print(f"fold {k}: model from {elsewhere}", flush=True)
    if not is_complete_run(model):
        if not train:
            print(f"fold {k}: not trained yet ({model})")
            return None
        if not is_complete_run(seg):
            _run(cmrseg + ["train", "--model", STAGES[0], *common, "--out", str(seg)])
        _run(cmrseg + ["train", "--model", STAGES[1], *common, "--set", f"seg_stage_run={seg}", "--out", str(model)])
    give_inference_settings(model)
    pred, ev = fold / "pred", fold / "eval"
    if not (pred / "summary.json").is_file():
        _run(cmrseg + ["segment", "-i", str(fold / "data" / "held_out"), "-o", str(pred), "--model", str(model)])
    if not (ev / "summary.json").is_file():
        _run(cmrseg + ["evaluate", "--pred", str(pred), "--gt", str(fold / "data" / "held_out"), "-o", str(ev)])
    if shifts:  # shifts already evaluated are reused, so this resumes too
        _run([sys.executable, str(REPO / "benchmarks" / "shift_benchmark.py"), str(fold / "data" / "held_out"),
              str(fold / "bench"), "--model", str(model), "--shifts", *shifts, "--reuse"])
    return ev


def out_of_fold_table(evals: dict[int, Path]) -> str:
    """One row per evaluated fold (patients, volume / apex Dice, LVEF / RVEF / LV mass MAE)."""
    lines = ["| fold | held-out patients | volume Dice | apex Dice | LVEF MAE (points) | RVEF MAE (points) | LV mass MAE (g) |",
             "|---|---|---|---|---|---|---|"]
    for k, ev in sorted(evals.items()):
        s = json.loads((ev / "summary.json").read_text())
        clin = s["clinical"]["all"]
        n = len({r["patient"] for r in csv.DictReader(open(ev / "per_volume.csv"))})
        lines.append(f"| {k} | {n} | {s['levels']['volume']['avg']:.3f} | {s['levels']['apex']['avg']:.3f} | "
                     f"{clin['LVEF (%) MAE']:.2f} | {clin['RVEF (%) MAE']:.2f} | {clin['LVM (g) MAE']:.2f} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("data", type=Path, help="the training h5 split (manifest.json, metadata.csv)")
    ap.add_argument("out", type=Path)
    ap.add_argument("--val", type=Path, required=True, help="the split that selects each fold's checkpoints")
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--only", type=int, nargs="+", metavar="K", help="these folds only (default: all)")
    ap.add_argument("--protocol", default="fast")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="for every cmrseg train")
    ap.add_argument("--no-train", action="store_true", help="evaluate the folds already trained; train none")
    ap.add_argument("--models-from", type=Path, metavar="FOLDER",
                    help="take a fold's model from FOLDER/seg_as-ref_as_mt_fold<k> when there (experiments/gpu_job.py "
                         "--plan folds) instead of training it")
    ap.add_argument("--shifts", nargs="+", metavar="SHIFT",
                    help="also run benchmarks/shift_benchmark.py with these shifts on each fold's held-out "
                         "patients (OUT/fold_k/bench: what experiments/calibrate_qc.py reads)")
    args = ap.parse_args(argv)
    try:
        manifest = read_manifest(args.data / "manifest.json")
        meta = read_metadata_csv(args.data / "metadata.csv")
        patients = {e["patient"]: str(meta.get(e["patient"], {}).get("group", "")) for e in manifest.values()}
        args.out.mkdir(parents=True, exist_ok=True)
        splits = load_or_make_splits(args.out, patients, args.folds)
    except (InputError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if not any(s.startswith("amp=") for s in args.set) and not torch.cuda.is_available():
        # bf16 autocast where the CPU computes it natively, float32 elsewhere (as train_cpu_2h.sh)
        args.set.append(f"amp={'bf16' if cpu_has_fast_bf16() else 'off'}")
    wanted = args.only if args.only is not None else range(args.folds)
    if any(k < 0 or k >= args.folds for k in wanted):
        print(f"error: --only takes folds 0-{args.folds - 1}", file=sys.stderr)
        return 2
    for k in wanted:
        try:
            run_fold(k, splits[k], args.data, args.val, args.out, args.protocol, args.set, train=not args.no_train,
                     shifts=args.shifts, models_from=args.models_from)
        except subprocess.CalledProcessError as exc:  # its own error is above; what stopped, in one line
            print(f"error: fold {k}: {shlex.join(exc.cmd)} exited with {exc.returncode}; rerun to resume",
                  file=sys.stderr)
            return 1
    evals = {k: args.out / f"fold_{k}" / "eval" for k in range(args.folds)
             if (args.out / f"fold_{k}" / "eval" / "summary.json").is_file()}
    if evals:
        table = out_of_fold_table(evals)
        (args.out / "out_of_fold.md").write_text(table)
        print(table, end="")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
