"""Run every benchmark on this machine's CPU (and GPU when present) into benchmarks/results/.

    make bench          # or: python benchmarks/run_all.py [--data ../shared/data/acdc/val]
"""

import argparse
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def run(*args):
    print("$", " ".join(args), flush=True)
    subprocess.run([sys.executable, *args], check=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default=str(HERE.parents[1] / "shared" / "data" / "acdc" / "val"))
    args = ap.parse_args()
    out = HERE / "results"
    out.mkdir(exist_ok=True)
    run(str(HERE / "bench_models.py"), "--device", "cpu", "--out", str(out / "models_cpu.json"))
    run(str(HERE / "bench_training.py"), "--device", "cpu", "--protocol", "fast", "--out", str(out / "training_cpu_fast.json"))
    # as the CPU trains (amp=bf16), with fixed shapes compiled (needs a C++ compiler: about a minute per model)
    run(str(HERE / "bench_training.py"), "--device", "cpu", "--protocol", "fast", "--amp", "bf16",
        "--compile", "default", "--out", str(out / "training_cpu_fast_bf16.json"))
    if Path(args.data).is_dir():
        run(str(HERE / "bench_segment.py"), args.data, "--out", str(out / "segment_cpu.json"))
    import torch

    if torch.cuda.is_available():
        run(str(HERE / "bench_models.py"), "--device", "cuda", "--out", str(out / "models_cuda.json"))
        run(str(HERE / "bench_training.py"), "--device", "cuda", "--out", str(out / "training_cuda_paper.json"))


if __name__ == "__main__":
    main()
