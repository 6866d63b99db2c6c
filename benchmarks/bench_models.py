"""Parameters, FLOPs and forward time per 10-slice stack of every registered model.

    python benchmarks/bench_models.py [--device cpu|cuda] [--size 256] [--threads 2] [--out FILE.json]

FLOPs are counted with torch.utils.flop_counter (a multiply-add = 2 FLOPs) on one 10-slice
stack; time is the median of ``--repeats`` forward passes after two warm-ups, in eval mode,
no autograd (bf16 autocast on CUDA). Default model settings (the paper protocol's networks).
"""

import argparse
import json
import platform
import statistics
import time

import torch
from torch.utils.flop_counter import FlopCounterMode

from cmrseg.device import cpu_description
from cmrseg.models import create_model, list_models


def bench(name: str, device: str, size: int, repeats: int, kwargs: dict) -> dict:
    model = create_model(name, **kwargs).to(device).eval()
    params = sum(p.numel() for p in model.parameters())
    x = torch.rand(10, 1, size, size, device=device)
    with torch.no_grad(), FlopCounterMode(display=False) as fc:
        model(x)
    ctx = torch.autocast("cuda", dtype=torch.bfloat16) if device == "cuda" else torch.autocast("cpu", enabled=False)
    times = []
    with torch.no_grad(), ctx:
        for i in range(repeats + 2):
            if device == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            model(x)
            if device == "cuda":
                torch.cuda.synchronize()
            if i >= 2:
                times.append(time.perf_counter() - t0)
    return {"model": name, "params_M": params / 1e6, "gflops_per_stack": fc.get_total_flops() / 1e9,
            "forward_s_per_stack": statistics.median(times)}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--widths", type=int, nargs="+", help="override the networks' widths")
    ap.add_argument("--out")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    kwargs = {"widths": args.widths} if args.widths else {}
    rows = [bench(n, args.device, args.size, args.repeats, kwargs) for n in list_models()]
    print(f"| model | params (M) | GFLOPs / 10-slice stack | forward s / stack ({args.device}, {args.threads} threads) |")
    print("|---|---|---|---|")
    for r in rows:
        print(f"| {r['model']} | {r['params_M']:.2f} | {r['gflops_per_stack']:.1f} | {r['forward_s_per_stack']:.3f} |")
    if args.out:
        info = {"device": args.device, "size": args.size, "threads": args.threads, "torch": torch.__version__,
                "machine": platform.platform(), "cpu": cpu_description(),
                "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                "rows": rows}
        with open(args.out, "w") as fh:
            json.dump(info, fh, indent=2)


if __name__ == "__main__":
    main()
