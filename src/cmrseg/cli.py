"""Command-line entry point: ``cmrseg <command> ...`` (also ``python -m cmrseg``).

Thin by design: each subcommand parses its options and calls one library function.
Errors in the input print one line ``cmrseg: error: <file>: <problem>`` and exit 2.
"""

from __future__ import annotations

import argparse
import os
import sys
import threading
from pathlib import Path

from cmrseg import __version__
from cmrseg.errors import CmrsegError

LABELS_HELP = ("the data's label value of each structure, e.g. LV=1,MYO=2,RV=3 for M&Ms (default RV=1,MYO=2,LV=3, "
               "ACDC's; values 1-255; a value not named is refused)")


def _spacing(values):
    from cmrseg.data.io.common import spacing_from_option

    return spacing_from_option(values) if values else None


def _count(text: str) -> int:
    """A whole number >= 0 (argparse type: anything else is one usage line, not a traceback)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {value}")
    return value


def cmd_phantom(args) -> int:
    from cmrseg.data.phantom import generate

    out = generate(args.out, patients=args.patients, val_patients=args.val_patients, frames=args.frames, seed=args.seed,
                   size=tuple(args.size) if args.size else None, dicom=args.dicom)
    print(f"phantom written to {out} ({args.patients} train + {args.val_patients} val patients, {args.frames} frames)")
    return 0


def cmd_evaluate(args) -> int:
    from cmrseg.evaluation.evaluate import evaluate_folders, markdown_table

    summary = evaluate_folders(args.pred, args.gt, args.out, spacing=_spacing(args.spacing), labels=args.labels,
                               groups=args.groups, group_by=args.group_by)
    unscored = summary["predictions_without_truth"]
    print(markdown_table([("prediction", summary)]), end="")
    print(f"fragment rate {100 * summary['fragment_rate']:.2f} %, hole rate {100 * summary['hole_rate']:.2f} %")
    qc = summary.get("quality_control")
    if qc:  # the predictions are a cmrseg segment folder: its QC against the truth (table.md has more)
        print(f"quality control: {qc['bad_slices_flagged']} of {qc['bad_slices']} bad slices (Dice < "
              f"{qc['bad_slice_dice']:g}) flagged; " + ", ".join(f"{name} {c['bad']} of {c['slices']} on bad slices"
                                                         for name, c in qc["flags"].items()))
        perf = qc.get("measures") or {}
        if perf.get("studies"):  # the verdict against the studies that really failed (issue 36)
            from cmrseg.evaluation.quality_check import percent as pct

            print(f"QC verdict: {perf['failed']} of {perf['studies']} studies failed, {pct(perf['recall'])} of them "
                  f"sent to review or failed; {pct(perf['good_to_review'])} of the good ones sent; gross failures "
                  f"caught {perf['gross_caught']} of {perf['gross']} ({perf['gross_named']} with the measure named); "
                  "estimated errors covered the true ones for "
                  + ", ".join(f"{m.split(' (')[0]} {pct(c['covered'])}" for m, c in perf["coverage"].items()
                              if c["covered"] is not None))
    print(f"report written to {args.out}")
    if unscored:
        shown = ", ".join(unscored[:5]) + (" ..." if len(unscored) > 5 else "")
        print(f"cmrseg: {len(unscored)} prediction(s) in {args.pred} have no truth in {args.gt} and were not scored: "
              f"{shown}" + ("" if args.pairs_only else " (--pairs-only scores the pairs alone with exit 0)"),
              file=sys.stderr)
        return 0 if args.pairs_only else 1
    return 0


def cmd_compare(args) -> int:
    from cmrseg.evaluation.compare import compare_reports, markdown

    result = compare_reports(args.reports, args.out, names=args.names)
    print(markdown(result), end="")
    print(f"comparison written to {args.out} (compare.md, compare.csv, compare.json, compare.png)")
    return 0


def cmd_cache(args) -> int:
    from cmrseg.data.dataset import StackDataset
    from cmrseg.data.preprocessing import PreprocessConfig

    cfg = PreprocessConfig(target_spacing=args.target_spacing, canvas=args.canvas)
    ds = StackDataset.from_folder(args.data, cfg, labels=args.labels)
    ds.save_cache(args.out, compression=args.compression)
    size = Path(args.out).stat().st_size / 2 ** 20
    print(f"{len(ds)} stacks, {ds.num_slices} slices -> {args.out} ({size:.1f} MiB)")
    return 0


def cmd_train(args) -> int:
    from cmrseg.training.config import load_config
    from cmrseg.training.trainer import train

    overrides = list(args.set or [])
    if args.device:
        overrides.append(f"device={args.device}")
    if args.epochs is not None:
        overrides.append(f"epochs={args.epochs}")
    if args.labels:
        overrides.append(f"labels={args.labels}")
    cfg = load_config(args.config, protocol=args.protocol, model=args.model, overrides=overrides)
    run = train(cfg, args.data, args.out, val=args.val)
    print(f"run folder: {run}")
    return 0


def cmd_reproduce(args) -> int:
    from cmrseg.pipelines.reproduce import reproduce

    summaries = reproduce(args.data, args.protocol, args.out, ablations=args.ablations,
                          ref_input_ablation=args.ref_input_ablation, jobs=args.jobs, device=args.device,
                          overrides=args.set, deadline_min=args.deadline_min, models=args.models, labels=args.labels)
    return 0 if summaries else 1


def cmd_demo(args) -> int:
    from cmrseg.pipelines.demo import run_demo

    summary = run_demo(args.out, data=args.data, protocol=args.protocol, device=args.device, overrides=args.set)
    return 0 if "levels" in summary else 1


def cmd_segment(args) -> int:
    from cmrseg.inference.options import InferenceOptions, SegmentOptions
    from cmrseg.inference.segment import segment

    inference = InferenceOptions(**options_from(args, InferenceOptions))
    return segment(args.input, args.out, SegmentOptions(**options_from(args, SegmentOptions), inference=inference))


def add_options(parser: argparse.ArgumentParser, cls) -> None:
    """One command-line option per field of the options dataclass ``cls`` that carries ``cli``
    metadata (:func:`cmrseg.inference.options.option`): ``--field-name``, its default, help and
    argparse keywords; ``type="count"`` is a whole number >= 0."""
    import dataclasses

    for f in dataclasses.fields(cls):
        meta = dict(f.metadata.get("cli") or {})
        if not meta:
            continue
        if meta.get("type") == "count":
            meta["type"] = _count
        default = f.default if f.default is not dataclasses.MISSING else None
        parser.add_argument("--" + f.name.replace("_", "-"), dest=f.name, default=default, **meta)


def options_from(args: argparse.Namespace, cls) -> dict:
    """The values of ``cls``'s command-line fields in ``args`` (lists as tuples)."""
    import dataclasses

    values = {}
    for f in dataclasses.fields(cls):
        if f.metadata.get("cli") and hasattr(args, f.name):
            v = getattr(args, f.name)
            values[f.name] = tuple(v) if isinstance(v, list) else v
    return values


def cmd_export_onnx(args) -> int:
    from cmrseg.inference.export import export_onnx

    path = export_onnx(args.model, args.out)
    print(f"exported {path} (+ model.json); segment with: cmrseg segment --model {args.out} --backend onnx ...")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cmrseg", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"cmrseg {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("phantom", help="write a synthetic short-axis phantom cohort (NIfTI, h5, DICOM)")
    p.add_argument("-o", "--out", required=True, type=Path, help="output folder")
    p.add_argument("--patients", "--cases", type=int, default=8, help="training patients (default 8)")
    p.add_argument("--val-patients", "--val-cases", type=int, default=2, help="validation patients (default 2)")
    p.add_argument("--frames", type=int, default=10, help="cine frames per patient (default 10)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--size", type=int, nargs=2, metavar=("H", "W"), help="in-plane matrix (default random)")
    p.add_argument("--dicom", action="store_true", help="also write each cine as a DICOM series")
    p.set_defaults(func=cmd_phantom)

    p = sub.add_parser("evaluate", help="score predictions against ground truth (slice levels, topology, clinical)")
    p.add_argument("--pred", required=True, type=Path, help="folder of predicted masks (h5 'label' or NIfTI)")
    p.add_argument("--gt", required=True, type=Path,
                   help="folder of ground-truth masks with the same names (may end in _gt); a 4D label "
                        "cine is scored on the frames it labels")
    p.add_argument("-o", "--out", required=True, type=Path, help="report folder")
    p.add_argument("--spacing", type=float, nargs="+", metavar="MM",
                   help="SX SY [SZ] in mm when the files carry none")
    p.add_argument("--labels", help=LABELS_HELP.replace("the data's", "the truth's", 1))
    p.add_argument("--groups", type=Path, metavar="CSV",
                   help="a table of the subjects (one column naming them, e.g. the M&Ms information sheet): "
                        "report by the column --group-by instead of ACDC's pathology groups")
    p.add_argument("--group-by", default="group", metavar="COLUMN",
                   help="the --groups column to group by, e.g. the vendor's (default: group)")
    p.add_argument("--pairs-only", action="store_true",
                   help="score the predictions that have a truth and exit 0 when others have none (default: "
                        "they are named and the exit status is 1)")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("compare", help="paired comparison of evaluations of one split: differences with intervals and tests")
    p.add_argument("reports", nargs="+", type=Path, metavar="REPORT",
                   help="cmrseg evaluate report folders of the same patients; the first is the reference")
    p.add_argument("-o", "--out", required=True, type=Path, help="output folder")
    p.add_argument("--names", nargs="+", metavar="NAME", help="a name per report (default: the folder names)")
    p.set_defaults(func=cmd_compare)

    p = sub.add_parser("cache", help="preprocess a labelled dataset into one compressed .npz (or .npz.xz)")
    p.add_argument("--data", required=True, type=Path, help="labelled folder (h5, ACDC layout or NIfTI + _gt)")
    p.add_argument("-o", "--out", required=True, type=Path, help="output .npz (.npz.xz with --compression xz)")
    p.add_argument("--target-spacing", type=float, default=1.3)
    p.add_argument("--canvas", type=int, default=256)
    p.add_argument("--compression", choices=("deflate", "lzma", "xz"), default="deflate",
                   help="xz: smallest (delta + LZMA2 over the whole file, for a .npz.xz name), slowest to write")
    p.add_argument("--labels", help=LABELS_HELP)
    p.set_defaults(func=cmd_cache)

    p = sub.add_parser("train", help="train a model (any registered name); resumes an unfinished run")
    p.add_argument("--config", type=Path, help="YAML config (model and/or protocol settings)")
    p.add_argument("--protocol", help="paper | fast | smoke | demo (overrides the config's)")
    p.add_argument("--model", help="registered model name (overrides the config's)")
    p.add_argument("--data", required=True, type=Path, help="folder with train/ and val/ (h5, ACDC layout or .npz)")
    p.add_argument("--val", type=Path, help="validation folder, when --data is the training folder itself")
    p.add_argument("--out", required=True, type=Path, help="run folder")
    p.add_argument("--device", help="auto | cpu | cuda")
    p.add_argument("--epochs", type=int, help="override the protocol's epochs")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override any config key (repeatable)")
    p.add_argument("--labels", help=LABELS_HELP)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("reproduce", help="train and evaluate the paper's models; tables + figure")
    p.add_argument("--data", required=True, type=Path, help="folder with train/ and val/ (ACDC h5 or release layout)")
    p.add_argument("--protocol", default="paper", help="paper | fast | smoke (default paper)")
    p.add_argument("--out", required=True, type=Path, help="output folder (runs/, tables, fig4.png)")
    p.add_argument("--ablations", action="store_true", help="also every Table 2 row")
    p.add_argument("--ref-input-ablation", action="store_true",
                   help="also the proposed model with its Ref stage trained on final Seg outputs only")
    p.add_argument("--models", nargs="+", help="only these models (default: Table 1, or Tables 1+2)")
    p.add_argument("--jobs", type=int, default=1, help="parallel training processes (default 1)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda")
    p.add_argument("--deadline-min", type=float, help="start no new training after this many minutes")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override for every run")
    p.add_argument("--labels", help=LABELS_HELP)
    p.set_defaults(func=cmd_reproduce)

    p = sub.add_parser("segment", help="segment studies: masks, measures, quality flags, pictures, report")
    p.add_argument("-i", "--input", required=True, nargs="+", type=Path,
                   help="NIfTI (3D/4D), DICOM series folder, h5, ACDC patient folder, or folders of these")
    p.add_argument("-o", "--out", required=True, type=Path, help="output folder")
    # the options are the fields of cmrseg.inference.options (imported without torch: --help stays fast)
    from cmrseg.inference.options import InferenceOptions, SegmentOptions

    add_options(p, SegmentOptions)
    add_options(p, InferenceOptions)
    p.set_defaults(func=cmd_segment)

    p = sub.add_parser("export-onnx", help="export a model to ONNX for onnxruntime deployment")
    p.add_argument("--model", help="shipped model name or a trained run folder (default: the proposed model)")
    p.add_argument("-o", "--out", required=True, type=Path, help="output folder (model.onnx + model.json)")
    p.set_defaults(func=cmd_export_onnx)

    p = sub.add_parser("demo", help="phantom -> train the proposed model -> segment -> evaluate (make demo)")
    p.add_argument("--out", type=Path, default=Path("demo_output"))
    p.add_argument("--data", type=Path, help="a real dataset (train/ + val/) instead of the phantom")
    p.add_argument("--protocol", help="default: demo on the phantom, fast on real data")
    p.add_argument("--device", default="auto")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override")
    p.set_defaults(func=cmd_demo)
    return parser


def _shortened(path: str, keep: int = 120) -> str:
    """A path for an error line: its beginning and end around ``...`` when longer than ``keep``."""
    return path if len(path) <= keep else f"{path[:keep // 2]}...{path[-keep // 2:]}"


class _Terminated(BaseException):
    """SIGTERM, raised in the main thread so that clean-up (temporary files, reader
    processes) runs as it does for Ctrl-C; a BaseException, like KeyboardInterrupt, so that
    no per-study error handler takes it for a study's failure."""


#: seconds the clean-up after SIGTERM or Ctrl-C may take before the process ends regardless
TERM_GRACE_S = 10.0
_grace: list[threading.Timer] = []


def _exit_now(code: int) -> None:
    os.write(2, b"cmrseg: clean-up did not finish in time; exiting\n")
    os._exit(code)


def _end_after_grace(code: int) -> None:
    """An exception raised by a signal lands at any bytecode, also inside a ``with`` between a
    lock's acquisition and its ``__enter__``'s return; the lock then stays held, and the
    DataLoader's shutdown of the reader processes waits on it for ever (seen once under load:
    a ``cmrseg segment`` still waiting 85 minutes after its SIGTERM). A daemon timer ends the process
    when clean-up has not finished within ``TERM_GRACE_S``; :func:`main` cancels it once it has."""
    if not _grace:
        timer = threading.Timer(TERM_GRACE_S, _exit_now, args=(code,))
        timer.daemon = True
        timer.start()
        _grace.append(timer)


def _on_sigterm(signum, frame):
    _end_after_grace(143)
    raise _Terminated()


def _on_sigint(signum, frame):
    _end_after_grace(130)
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    import signal

    parser = build_parser()
    args = parser.parse_args(argv)
    previous = {sig: signal.signal(sig, handler) for sig, handler in
                ((signal.SIGTERM, _on_sigterm), (signal.SIGINT, _on_sigint))}
    try:
        return int(args.func(args) or 0)
    except CmrsegError as exc:
        print(f"cmrseg: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # the file system refused (a name too long, no space, no permission): one line
        where = f"{_shortened(str(exc.filename))}: " if exc.filename else ""
        print(f"cmrseg: error: {where}{exc.strerror or exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("cmrseg: interrupted", file=sys.stderr)
        return 130
    except _Terminated:
        print("cmrseg: terminated", file=sys.stderr)
        return 143
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        while _grace:  # clean-up finished
            _grace.pop().cancel()


if __name__ == "__main__":
    raise SystemExit(main())
