"""Run every speed benchmark on this machine into ``benchmarks/results/cpu_<kind>/`` (and
``benchmarks/results/cuda/`` when a GPU is present), one folder per CPU kind
(:func:`cmrseg.device.cpu_kind`: ``amx``, ``avx512-bf16``, ``avx512``, ``avx2``), so a figure is
never compared across machines by accident.

    make bench          # or: python benchmarks/run_all.py [--data ../shared/data/acdc/val] [--as-avx2]

``--as-avx2`` holds torch and oneDNN to AVX2 kernels and float32 (``ATEN_CPU_CAPABILITY=avx2``,
``ONEDNN_MAX_CPU_ISA=AVX2``): a newer CPU run as a laptop's AVX2 one, written to ``cpu_avx2/``
with ``"emulated": ...`` and ``_emulated`` in the file names, beside (never over) a real AVX2 CPU's
records. The shift benchmark (hours) runs apart: ``benchmarks/shift_benchmark.py``.
"""

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
#: the models a user picks between for speed: the default ensemble and the distilled student
MODELS = {"default": None, "student": "student"}


def run(*args: str, env: dict | None = None) -> None:
    print("$", " ".join(args), flush=True)
    subprocess.run([sys.executable, *args], check=True, env=env)


def mark_emulated(path: Path) -> None:
    record = json.loads(path.read_text())
    path.write_text(json.dumps({**record, "emulated": "AVX2 (ATEN_CPU_CAPABILITY=avx2, ONEDNN_MAX_CPU_ISA=AVX2)"},
                               indent=2) + "\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=str(HERE.parents[1] / "shared" / "data" / "acdc" / "val"))
    ap.add_argument("--as-avx2", action="store_true", help="hold this CPU to AVX2 and float32 (see above)")
    ap.add_argument("--only", nargs="+", choices=("models", "training", "segment", "cine"),
                    help="run only these benchmarks")
    args = ap.parse_args()
    env = dict(os.environ)
    if args.as_avx2:
        env.update(ATEN_CPU_CAPABILITY="avx2", ONEDNN_MAX_CPU_ISA="AVX2")
    kind = subprocess.run([sys.executable, "-c", "from cmrseg.device import cpu_kind; print(cpu_kind())"],
                          check=True, capture_output=True, text=True, env=env).stdout.strip()
    out = HERE / "results" / f"cpu_{kind}"
    tag = "_emulated" if args.as_avx2 else ""  # a newer CPU held to AVX2 keeps apart from a real one
    out.mkdir(parents=True, exist_ok=True)
    wanted = set(args.only or ("models", "training", "segment", "cine"))
    written = []
    if "models" in wanted:
        run(str(HERE / "bench_models.py"), "--device", "cpu", "--widths", "8", "16", "32", "64", "128", "--size",
            "192", "--out", str(out / f"models_fast{tag}.json"), env=env)
        run(str(HERE / "bench_models.py"), "--device", "cpu", "--out", str(out / f"models_paper{tag}.json"), env=env)
        written += [out / f"models_fast{tag}.json", out / f"models_paper{tag}.json"]
    if "training" in wanted:
        run(str(HERE / "bench_training.py"), "--device", "cpu", "--protocol", "fast", "--amp", "off",
            "--out", str(out / f"training_fast{tag}.json"), env=env)
        written.append(out / f"training_fast{tag}.json")
    from cmrseg.inference.predictor import shipped_models

    for name, model in MODELS.items():
        if model and model not in shipped_models():
            print(f"skipped {name}: no shipped model named {model!r}", flush=True)
            continue
        pick = ["--model", model] if model else []
        if "segment" in wanted and Path(args.data).is_dir():
            run(str(HERE / "bench_segment.py"), args.data, "--n", "20", *pick,
                "--out", str(out / f"segment_{name}{tag}.json"), env=env)
            written.append(out / f"segment_{name}{tag}.json")
        if "cine" in wanted:
            run(str(HERE / "bench_segment_cine.py"), "--format", "dicom", *pick,
                "--out", str(out / f"cine_{name}{tag}.json"), env=env)
            written.append(out / f"cine_{name}{tag}.json")
    if args.as_avx2:
        for path in written:
            mark_emulated(path)
    import torch

    if torch.cuda.is_available():
        cuda = HERE / "results" / "cuda"
        cuda.mkdir(exist_ok=True)
        run(str(HERE / "bench_models.py"), "--device", "cuda", "--out", str(cuda / "models_paper.json"))
        run(str(HERE / "bench_training.py"), "--device", "cuda", "--out", str(cuda / "training_paper.json"))


if __name__ == "__main__":
    main()
