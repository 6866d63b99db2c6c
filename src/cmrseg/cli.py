"""Command-line entry point: ``cmrseg <command> ...`` (also ``python -m cmrseg``).

Thin by design: each subcommand parses its options and calls one library function.
Errors in the input print one line ``cmrseg: error: <file>: <problem>`` and exit 2.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from cmrseg import __version__
from cmrseg.errors import CmrsegError


def _spacing(values):
    from cmrseg.data.io.common import spacing_from_option

    return spacing_from_option(values) if values else None


def cmd_phantom(args) -> int:
    from cmrseg.data.phantom import generate

    out = generate(args.out, cases=args.cases, val_cases=args.val_cases, frames=args.frames, seed=args.seed,
                   size=tuple(args.size) if args.size else None, dicom=args.dicom)
    print(f"phantom written to {out} ({args.cases} train + {args.val_cases} val cases, {args.frames} frames)")
    return 0


def cmd_evaluate(args) -> int:
    from cmrseg.evaluation.evaluate import evaluate_folders, markdown_table

    summary = evaluate_folders(args.pred, args.gt, args.out, spacing=_spacing(args.spacing))
    print(markdown_table([("prediction", summary)]), end="")
    print(f"fragment rate {100 * summary['fragment_rate']:.2f} %, hole rate {100 * summary['hole_rate']:.2f} %")
    print(f"report written to {args.out}")
    return 0


def cmd_cache(args) -> int:
    from cmrseg.data.dataset import StackDataset
    from cmrseg.data.preprocessing import PreprocessConfig

    cfg = PreprocessConfig(target_spacing=args.target_spacing, canvas=args.canvas)
    ds = StackDataset.from_folder(args.data, cfg)
    ds.save_cache(args.out)
    size = Path(args.out).stat().st_size / 2 ** 20
    print(f"{len(ds)} stacks, {ds.num_slices} slices -> {args.out} ({size:.1f} MiB)")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cmrseg", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"cmrseg {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("phantom", help="write a synthetic short-axis phantom cohort (NIfTI, h5, DICOM)")
    p.add_argument("-o", "--out", required=True, type=Path, help="output folder")
    p.add_argument("--cases", type=int, default=8, help="training cases (default 8)")
    p.add_argument("--val-cases", type=int, default=2, help="validation cases (default 2)")
    p.add_argument("--frames", type=int, default=10, help="cine frames per case (default 10)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--size", type=int, nargs=2, metavar=("H", "W"), help="in-plane matrix (default random)")
    p.add_argument("--dicom", action="store_true", help="also write each cine as a DICOM series")
    p.set_defaults(func=cmd_phantom)

    p = sub.add_parser("evaluate", help="score predictions against ground truth (slice levels, topology, clinical)")
    p.add_argument("--pred", required=True, type=Path, help="folder of predicted masks (h5 'label' or NIfTI)")
    p.add_argument("--gt", required=True, type=Path, help="folder of ground-truth masks with the same names")
    p.add_argument("-o", "--out", required=True, type=Path, help="report folder")
    p.add_argument("--spacing", type=float, nargs="+", metavar="MM",
                   help="SX SY [SZ] in mm when the files carry none")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("cache", help="preprocess a labelled dataset into one compressed .npz")
    p.add_argument("--data", required=True, type=Path, help="labelled folder (h5, ACDC layout or NIfTI + _gt)")
    p.add_argument("-o", "--out", required=True, type=Path, help="output .npz")
    p.add_argument("--target-spacing", type=float, default=1.3)
    p.add_argument("--canvas", type=int, default=256)
    p.set_defaults(func=cmd_cache)

    for register in _EXTRA_COMMANDS:
        register(sub)
    return parser


_EXTRA_COMMANDS: list = []


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except CmrsegError as exc:
        print(f"cmrseg: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("cmrseg: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
