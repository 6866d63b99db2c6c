"""Training throughput (slices/s, forward + backward + Adam step) of each model family.

    python benchmarks/bench_training.py [--device cpu|cuda] [--protocol paper] [--steps 5] [--out FILE.json]

Synthetic batches shaped like the protocol's (its crop size; 4 stacks of 10 slices for
all-slice models, 40 slices for single-slice ones), bf16 autocast and channels_last on CUDA
as in training; the median step time after two warm-up steps.
"""

import argparse
import json
import platform
import statistics
import time

import torch

from cmrseg.losses import GatedRefinementLoss, SegLoss
from cmrseg.models import create_model
from cmrseg.training.config import load_config

FAMILIES = {"seg_ss": "SK-UNet (single slice)", "seg_as": "all-slice (fusion)", "seg_as_mt": "all-slice + classifier"}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--protocol", default="paper")
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    cfg = load_config(protocol=args.protocol, model="seg_as")
    size = cfg.augment.crop or cfg.preprocess.canvas
    cuda = args.device == "cuda"
    rows = []
    for name in FAMILIES:
        model = create_model(name, **{k: v for k, v in cfg.model_kwargs.items() if k not in ("crop", "zoom")}).to(args.device)
        if cuda:
            model = model.to(memory_format=torch.channels_last)
        opt = torch.optim.Adam(model.parameters(), 1e-4)
        x = torch.rand(40, 1, size, size, device=args.device)
        y = torch.randint(0, 4, (40, size, size), device=args.device)
        sizes = [10, 10, 10, 10]
        loss_fn = GatedRefinementLoss() if name.endswith("_mt") else SegLoss()
        times = []
        for i in range(args.steps + 2):
            if cuda:
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            with torch.autocast("cuda", dtype=torch.bfloat16) if cuda else torch.autocast("cpu", enabled=False):
                out = model(x, sizes)
            loss = loss_fn(out.logits, out.class_logits, y) if out.class_logits is not None else loss_fn(out.logits, y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if cuda:
                torch.cuda.synchronize()
            if i >= 2:
                times.append(time.perf_counter() - t0)
        rows.append({"model": name, "family": FAMILIES[name], "crop": size, "slices_per_s": 40 / statistics.median(times)})
    print(f"| model | crop | training slices/s ({args.device}, protocol {args.protocol}) |")
    print("|---|---|---|")
    for r in rows:
        print(f"| {r['model']} | {r['crop']} | {r['slices_per_s']:.1f} |")
    if args.out:
        with open(args.out, "w") as fh:
            json.dump({"device": args.device, "protocol": args.protocol, "threads": args.threads,
                       "torch": torch.__version__, "machine": platform.platform(), "date": time.strftime("%Y-%m-%d"),
                       "rows": rows}, fh, indent=2)


if __name__ == "__main__":
    main()
