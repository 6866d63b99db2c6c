"""Training throughput (slices/s of a whole training step: augmentation, forward, backward,
clipping, Adam) of each model family.

    python benchmarks/bench_training.py [--device cpu|cuda] [--protocol paper] [--steps 5] [--out FILE.json]
    python benchmarks/bench_training.py --device cuda --settings [--seconds 40] [--profile 5] --out FILE.json

Synthetic batches shaped like the protocol's: its canvas, augmented to its crop; for all-slice models
``batch_stacks`` stacks whose slice counts are drawn from ACDC's (6-18 slices, a few
distinct batch shapes, as in training), for single-slice ones ``batch_slices`` slices.
Median step time after warm-up steps that see every batch shape once (cuDNN autotuning, when
on, happens there and is reported apart as ``tune_seconds``).

``--settings`` times the training settings a run can choose, for ``seg_as`` and ``seg_ss``:
channels_last on/off x cuDNN autotuning on/off (bf16 autocast and fused Adam on CUDA
throughout), then twice the protocol's batch with the fastest. ``best`` in the JSON names the
fastest setting per model at the protocol's batch and the batch factor to train with (2 when
the doubled batch is ``BATCH_GAIN`` times faster per slice); ``experiments/gpu_job.py`` trains
with it. ``--profile STEPS`` then runs ``torch.profiler`` over that many ``seg_as`` steps with
the best setting: ``profile`` in the JSON (wall and GPU milliseconds per step, kernels per step,
the share of the step the GPU was busy) and the op table in ``FILE.profile.txt``.
"""

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch

from cmrseg.atomic import write_json, write_text
from cmrseg.data.augmentation import StackAugmenter
from cmrseg.losses import GatedRefinementLoss, SegLoss
from cmrseg.models import create_model
from cmrseg.training.config import load_config

FAMILIES = {"seg_ss": "SK-UNet (single slice)", "seg_as": "all-slice (fusion)", "seg_as_mt": "all-slice + classifier"}
# slices per stack in the ACDC training split: 6 to 18 (most 8-11)
STACK_SIZES = [[10, 9, 8, 11], [12, 10, 9, 8], [7, 10, 11, 9], [18, 8, 10, 9], [6, 9, 10, 10], [13, 11, 8, 9]]


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _setup(name: str, cfg, device: str, channels_last: bool, cudnn_benchmark: bool, batch_factor: int,
           n_shapes: int):
    """The model ``name`` (the protocol's widths), its optimizer and synthetic batches on the
    protocol's canvas; returns ``(step, batches, shapes)`` where ``step(x, y, sizes)`` is one
    training step as the trainer runs it: the protocol's augmentation to the training crop (on
    the device, centred on the canvas), forward, loss, backward, gradient clipping, Adam."""
    cuda = device.startswith("cuda")
    torch.backends.cudnn.benchmark = cudnn_benchmark
    canvas = cfg.preprocess.canvas
    model = create_model(name, **{k: v for k, v in cfg.model_kwargs.items() if k not in ("crop", "zoom")}).to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    opt = torch.optim.Adam(model.parameters(), 1e-4, fused=cuda)
    loss_fn = GatedRefinementLoss() if name.endswith("_mt") else SegLoss()
    augment = StackAugmenter(cfg.augment)
    gen = torch.Generator(device=device).manual_seed(0)
    if model.all_slice:
        shapes = [sizes * batch_factor for sizes in STACK_SIZES[:n_shapes]]
    else:
        shapes = [[1] * cfg.batch_slices * batch_factor]
    batches = []
    for sizes in shapes:
        n = sum(sizes)
        batches.append((torch.rand(n, 1, canvas, canvas, device=device),
                        torch.randint(0, 4, (n, canvas, canvas), device=device), sizes))

    def step(x, y, sizes):
        centers = torch.full((len(sizes), 2), canvas / 2.0)
        x, y, _ = augment(x, y, sizes, generator=gen, centers=centers)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast("cuda", dtype=torch.bfloat16) if cuda else torch.autocast("cpu", enabled=False):
            out = model(x, sizes)
        loss = loss_fn(out.logits, out.class_logits, y) if out.class_logits is not None else loss_fn(out.logits, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        opt.step()

    return step, batches, shapes


def time_setting(name: str, cfg, device: str, steps: int, channels_last: bool = False, cudnn_benchmark: bool = False,
                 batch_factor: int = 1, n_shapes: int = len(STACK_SIZES)) -> dict:
    """Train ``name`` (the protocol's widths) on synthetic batches; slices/s at the median step."""
    step, batches, shapes = _setup(name, cfg, device, channels_last, cudnn_benchmark, batch_factor, n_shapes)
    size = cfg.augment.crop or cfg.preprocess.canvas
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


def profile_setting(name: str, cfg, device: str, steps: int, channels_last: bool = False,
                    cudnn_benchmark: bool = False, batch_factor: int = 1, row_limit: int = 30) -> tuple[dict, str]:
    """``torch.profiler`` over ``steps`` training steps of ``name`` after a warm-up over every
    batch shape: where a step's time goes. Returns a summary (wall and accelerator time per
    step, kernels launched per step, the share of the wall time the accelerator was busy: low
    means the step waits on Python and kernel launches, not on the GPU's arithmetic) and the
    profiler's table of the ops by their own time."""
    from torch.profiler import ProfilerActivity, profile

    cuda = device.startswith("cuda")
    step, batches, _ = _setup(name, cfg, device, channels_last, cudnn_benchmark, batch_factor, n_shapes=3)
    for b in batches:
        step(*b)
    _sync(device)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    slices = 0
    with profile(activities=activities) as prof:
        t0 = time.perf_counter()
        for i in range(steps):
            x, y, sizes = batches[i % len(batches)]
            step(x, y, sizes)
            slices += x.shape[0]
        _sync(device)
        wall = time.perf_counter() - t0
    # the GPU's own events (kernels, copies): their durations on the one stream add up to its busy time
    kernels = [e for e in prof.events() if cuda and str(getattr(e, "device_type", "")).endswith("CUDA")]
    device_s = sum(e.time_range.elapsed_us() for e in kernels) / 1e6
    summary = {"model": name, "channels_last": channels_last, "cudnn_benchmark": cudnn_benchmark,
               "batch_factor": batch_factor, "steps": steps, "slices_per_s": slices / wall,
               "wall_ms_per_step": 1e3 * wall / steps,
               "device_ms_per_step": 1e3 * device_s / steps if cuda else None,
               "kernels_per_step": len(kernels) / steps if cuda else None,
               "device_busy": device_s / wall if cuda else None}
    sort = "self_cuda_time_total" if cuda else "self_cpu_time_total"
    table = prof.key_averages().table(sort_by=sort, row_limit=row_limit)
    return summary, table


#: a doubled batch is taken only when it trains this much faster per slice, i.e. at 90 % or more
#: of the optimiser steps per second: in a time-budgeted stage it then costs (almost) no steps
#: and each step sees twice the data. At equal epochs (half the steps) it trained worse on the
#: CPU (docs/RESULTS.md, "Training throughput": experiments/batch_scaling.sh)
BATCH_GAIN = 1.8


def best_settings(rows: list[dict]) -> dict:
    """The fastest setting per model among the rows at the protocol's batch size, and the batch
    factor to train with: 2 when twice the batch, with that setting, reached ``BATCH_GAIN``
    times its slices/s, else 1."""
    best = {}
    for r in rows:
        if r["batch_factor"] == 1 and r["slices_per_s"] > best.get(r["model"], {}).get("slices_per_s", 0):
            best[r["model"]] = r
    out = {}
    for k, v in best.items():
        out[k] = {"channels_last": v["channels_last"], "cudnn_benchmark": v["cudnn_benchmark"],
                  "slices_per_s": v["slices_per_s"], "batch_factor": 1}
        larger = [r for r in rows if r["model"] == k and r["batch_factor"] == 2
                  and (r["channels_last"], r["cudnn_benchmark"]) == (v["channels_last"], v["cudnn_benchmark"])]
        if larger and larger[0]["slices_per_s"] >= BATCH_GAIN * v["slices_per_s"]:
            out[k].update(batch_factor=2, slices_per_s=larger[0]["slices_per_s"])
    return out


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
        b = best_settings(rows).get(name)
        if b and time.perf_counter() < t_end:  # the protocol's batch doubled, with the best setting
            add(time_setting(name, cfg, device, steps, b["channels_last"], b["cudnn_benchmark"], batch_factor=2,
                             n_shapes=3))
    return rows, best_settings(rows)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--protocol", default="paper")
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--settings", action="store_true", help="time channels_last x cuDNN autotuning (and 2x batch)")
    ap.add_argument("--seconds", type=float, default=40.0, help="--settings: start no setting after this long")
    ap.add_argument("--profile", type=int, default=0, metavar="STEPS",
                    help="then profile this many seg_as steps with the best setting (torch.profiler)")
    ap.add_argument("--out")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    cuda = args.device.startswith("cuda")
    if cuda:
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    cfg = load_config(protocol=args.protocol, model="seg_as")
    dev_name = torch.cuda.get_device_name(0) if cuda else platform.processor() or "cpu"

    profile = None

    def save(rows: list[dict], best: dict | None) -> None:
        if args.out:
            write_json(args.out, {"device": args.device, "device_name": dev_name, "protocol": args.protocol,
                                  "threads": args.threads, "torch": torch.__version__, "machine": platform.platform(),
                                  "date": time.strftime("%Y-%m-%d"), "rows": rows, "best": best, "profile": profile})

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
    if args.profile:
        b = (best or {}).get("seg_as", {"channels_last": cuda, "cudnn_benchmark": False, "batch_factor": 1})
        try:  # a profiler that fails on some torch / driver must not cost the settings measured above
            profile, table = profile_setting("seg_as", cfg, args.device, args.profile, b["channels_last"],
                                             b["cudnn_benchmark"], b["batch_factor"])
        except Exception as exc:  # noqa: BLE001 (reported, not hidden)
            profile, table = {"error": f"{type(exc).__name__}: {exc}"}, ""
        print(json.dumps(profile), table, sep="\n", flush=True)
        if args.out and table:
            write_text(Path(args.out).with_suffix(".profile.txt"), table)
        save(rows, best)


if __name__ == "__main__":
    main()
