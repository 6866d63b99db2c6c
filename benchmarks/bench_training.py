"""Training throughput (slices/s, forward + backward + Adam step) of each model family.

    python benchmarks/bench_training.py [--device cpu|cuda] [--protocol paper] [--steps 5] [--out FILE.json]
    python benchmarks/bench_training.py --device cuda --settings [--seconds 40] --out FILE.json

Synthetic batches shaped like the protocol's: its crop size; for all-slice models
``batch_stacks`` stacks whose slice counts are drawn from ACDC's (6-18 slices, a few
distinct batch shapes, as in training), for single-slice ones ``batch_slices`` slices.
Median step time after warm-up steps that see every batch shape once (cuDNN autotuning, when
on, happens there and is reported apart as ``tune_seconds``).

``--settings`` times the training settings a run can choose, for ``seg_as`` and ``seg_ss``:
channels_last on/off x cuDNN autotuning on/off (bf16 autocast and fused Adam on CUDA
throughout), then twice the protocol's batch for information. ``best`` in the JSON names the
fastest setting per model at the protocol's batch; ``experiments/gpu_job.py`` trains with it.
"""

import argparse
import json
import platform
import statistics
import time

import torch

from cmrseg.atomic import write_json
from cmrseg.losses import GatedRefinementLoss, SegLoss
from cmrseg.models import create_model
from cmrseg.training.config import load_config

FAMILIES = {"seg_ss": "SK-UNet (single slice)", "seg_as": "all-slice (fusion)", "seg_as_mt": "all-slice + classifier"}
# slices per stack in the ACDC training split: 6 to 18 (most 8-11)
STACK_SIZES = [[10, 9, 8, 11], [12, 10, 9, 8], [7, 10, 11, 9], [18, 8, 10, 9], [6, 9, 10, 10], [13, 11, 8, 9]]


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def time_setting(name: str, cfg, device: str, steps: int, channels_last: bool = False, cudnn_benchmark: bool = False,
                 batch_factor: int = 1, n_shapes: int = len(STACK_SIZES)) -> dict:
    """Train ``name`` (the protocol's widths) on synthetic batches; slices/s at the median step."""
    cuda = device.startswith("cuda")
    torch.backends.cudnn.benchmark = cudnn_benchmark
    size = cfg.augment.crop or cfg.preprocess.canvas
    model = create_model(name, **{k: v for k, v in cfg.model_kwargs.items() if k not in ("crop", "zoom")}).to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    opt = torch.optim.Adam(model.parameters(), 1e-4, fused=cuda)
    loss_fn = GatedRefinementLoss() if name.endswith("_mt") else SegLoss()
    if model.all_slice:
        shapes = [sizes * batch_factor for sizes in STACK_SIZES[:n_shapes]]
    else:
        shapes = [[1] * cfg.batch_slices * batch_factor]
    batches = []
    for sizes in shapes:
        n = sum(sizes)
        x = torch.rand(n, 1, size, size, device=device)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        batches.append((x, torch.randint(0, 4, (n, size, size), device=device), sizes))

    def step(x, y, sizes):
        with torch.autocast("cuda", dtype=torch.bfloat16) if cuda else torch.autocast("cpu", enabled=False):
            out = model(x, sizes)
        loss = loss_fn(out.logits, out.class_logits, y) if out.class_logits is not None else loss_fn(out.logits, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    _sync(device)
    t0 = time.perf_counter()
    for b in batches:  # every shape once: autotuning and allocator warm-up
        step(*b)
    _sync(device)
    tune = time.perf_counter() - t0
    rates = []
    for i in range(steps):
        x, y, sizes = batches[i % len(batches)]
        _sync(device)
        t0 = time.perf_counter()
        step(x, y, sizes)
        _sync(device)
        rates.append(x.shape[0] / (time.perf_counter() - t0))
    return {"model": name, "family": FAMILIES.get(name, name), "crop": size, "channels_last": channels_last,
            "cudnn_benchmark": cudnn_benchmark, "batch_slices_mean": sum(map(sum, shapes)) / len(shapes),
            "batch_factor": batch_factor, "tune_seconds": round(tune, 2),
            "slices_per_s": statistics.median(rates)}


def best_settings(rows: list[dict]) -> dict:
    """The fastest setting per model among the rows at the protocol's batch size."""
    best = {}
    for r in rows:
        if r["batch_factor"] == 1 and r["slices_per_s"] > best.get(r["model"], {}).get("slices_per_s", 0):
            best[r["model"]] = r
    return {k: {"channels_last": v["channels_last"], "cudnn_benchmark": v["cudnn_benchmark"],
                "slices_per_s": v["slices_per_s"]} for k, v in best.items()}


def settings_grid(cfg, device: str, steps: int, seconds: float, on_row=None) -> tuple[list[dict], dict]:
    """Every setting for seg_as then seg_ss, until ``seconds`` have passed; the best per model.
    ``on_row(rows)`` after every measured setting (so a stopped run leaves what it measured)."""
    t_end = time.perf_counter() + seconds
    rows = []

    def add(row: dict) -> None:
        rows.append(row)
        print(json.dumps(row), flush=True)
        if on_row is not None:
            on_row(rows)

    grid = [(cl, bench) for cl in (True, False) for bench in (True, False)]
    for name in ("seg_as", "seg_ss"):
        for cl, bench in grid:
            if time.perf_counter() > t_end:
                break
            add(time_setting(name, cfg, device, steps, cl, bench, n_shapes=3))
    best = best_settings(rows)
    for name, b in best.items():  # the protocol's batch doubled, with the best setting: for information
        if time.perf_counter() < t_end:
            add(time_setting(name, cfg, device, steps, b["channels_last"], b["cudnn_benchmark"], batch_factor=2,
                             n_shapes=3))
    return rows, best


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--protocol", default="paper")
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--settings", action="store_true", help="time channels_last x cuDNN autotuning (and 2x batch)")
    ap.add_argument("--seconds", type=float, default=40.0, help="--settings: start no setting after this long")
    ap.add_argument("--out")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    cuda = args.device.startswith("cuda")
    if cuda:
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    cfg = load_config(protocol=args.protocol, model="seg_as")
    dev_name = torch.cuda.get_device_name(0) if cuda else platform.processor() or "cpu"

    def save(rows: list[dict], best: dict | None) -> None:
        if args.out:
            write_json(args.out, {"device": args.device, "device_name": dev_name, "protocol": args.protocol,
                                  "threads": args.threads, "torch": torch.__version__, "machine": platform.platform(),
                                  "date": time.strftime("%Y-%m-%d"), "rows": rows, "best": best})

    best = None
    if args.settings:
        rows, best = settings_grid(cfg, args.device, args.steps, args.seconds,
                                   on_row=lambda rows: save(rows, best_settings(rows)))
    else:
        rows = [time_setting(name, cfg, args.device, args.steps, channels_last=cuda, cudnn_benchmark=False)
                for name in FAMILIES]
    print(f"| model | crop | channels_last | cuDNN autotune | slices/step | training slices/s ({args.device}, "
          f"protocol {args.protocol}) |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['model']} | {r['crop']} | {r['channels_last']} | {r['cudnn_benchmark']} | "
              f"{r['batch_slices_mean']:.0f} | {r['slices_per_s']:.1f} |")
    save(rows, best)


if __name__ == "__main__":
    main()
