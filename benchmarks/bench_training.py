"""Training throughput (slices/s of a whole training step: augmentation, forward, backward,
clipping, Adam) of each model family.

    python benchmarks/bench_training.py [--device cpu|cuda] [--protocol paper] [--steps 5] [--out FILE.json]
    python benchmarks/bench_training.py --device cuda --settings [--seconds 40] [--profile 5] [--compile MODE] --out FILE.json

Synthetic batches shaped like the protocol's: its canvas, augmented to its crop; for all-slice models
``batch_stacks`` stacks whose slice counts are drawn from ACDC's (6-18 slices, a few
distinct batch shapes, as in training), for single-slice ones ``batch_slices`` slices.
Median step time after warm-up steps that see every batch shape once (cuDNN autotuning, when
on, happens there and is reported apart as ``tune_seconds``).

``--settings`` times the training settings a run can choose, for ``seg_as`` and ``seg_ss``:
channels_last on/off x cuDNN autotuning on/off (bf16 autocast and fused Adam on CUDA
throughout); for ``seg_as`` then fixed-shape batches (``fixed_shape``: stacks packed into
``batch_slices`` slices, the rest masked padding; slices/s counts real slices) with the
fastest, and with ``--compile MODE`` also ``torch.compile`` in that mode on fixed shapes (its
compile time is ``tune_seconds``); then twice the protocol's batch with the fastest (unless
that is compiled). ``best``
in the JSON names the fastest setting per model at the protocol's batch, counting a setting's
``tune_seconds`` against a stage of ``--stage-seconds`` (a compile that takes a minute pays
only if it trains faster for the rest of the stage), and the batch factor to train with (2
when the doubled batch is ``BATCH_GAIN`` times faster per slice); ``experiments/gpu_job.py``
trains with it. ``--profile STEPS`` then runs ``torch.profiler`` over that many ``seg_as`` steps with
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
from cmrseg.device import cpu_description
from cmrseg.models import create_model
from cmrseg.training.batching import pack_stacks, stack_ids
from cmrseg.training.config import load_config
from cmrseg.training.losses import GatedRefinementLoss, SegLoss

FAMILIES = {"seg_ss": "SK-UNet (single slice)", "seg_as": "all-slice (fusion)", "seg_as_mt": "all-slice + classifier"}
# slices per stack in the ACDC training split: 6 to 18 (most 8-11)
STACK_SIZES = [[10, 9, 8, 11], [12, 10, 9, 8], [7, 10, 11, 9], [18, 8, 10, 9], [6, 9, 10, 10], [13, 11, 8, 9]]


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _shapes(all_slice: bool, cfg, batch_factor: int, n_shapes: int, fixed_shape: bool) -> list[tuple[list[int], int]]:
    """``(stack sizes, padding slices)`` of each synthetic batch: ``batch_stacks`` stacks of
    ACDC's sizes, or (``fixed_shape``) ACDC's stacks packed into ``batch_slices`` slices as the
    trainer packs them; single-slice models: ``batch_slices`` slices."""
    if not all_slice:
        return [([1] * cfg.batch_slices * batch_factor, 0)]
    if not fixed_shape:
        return [(sizes * batch_factor, 0) for sizes in STACK_SIZES[:n_shapes]]
    flat = [s for sizes in STACK_SIZES for s in sizes] * batch_factor
    budget = cfg.batch_slices * batch_factor
    packs = pack_stacks(list(range(len(flat))), flat, budget)[:n_shapes]
    return [([flat[i] for i in p], budget - sum(flat[i] for i in p)) for p in packs]


def _autocast(device: str, amp: str):
    """bf16 autocast on CUDA (``auto``) or where asked (``bf16``: the CPU training's
    ``amp=bf16``), else none."""
    on = amp == "bf16" or (amp == "auto" and device.startswith("cuda"))
    return torch.autocast(torch.device(device).type, dtype=torch.bfloat16, enabled=on)


def _setup(name: str, cfg, device: str, channels_last: bool, cudnn_benchmark: bool, batch_factor: int,
           n_shapes: int, fixed_shape: bool = False, compile_mode: str | None = None, amp: str = "auto"):
    """The model ``name`` (the protocol's widths), its optimizer and synthetic batches on the
    protocol's canvas; returns ``(step, batches)`` where ``step(x, y, sizes, ids)`` is one
    training step as the trainer runs it: the protocol's augmentation to the training crop (on
    the device, centred on the canvas), forward, loss, backward, gradient clipping, Adam.
    A batch is ``(x, y, sizes, ids, real)``: ``ids`` the fixed-shape batch's ``stack_ids`` (None
    otherwise), ``sizes`` its stacks' sizes with the padding as one more, ``real`` its real
    slices (what slices/s counts)."""
    cuda = device.startswith("cuda")
    torch.backends.cudnn.benchmark = cudnn_benchmark
    canvas = cfg.preprocess.canvas
    model = create_model(name, **{k: v for k, v in cfg.model_kwargs.items() if k not in ("crop", "zoom")}).to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    train_model = torch.compile(model, mode=compile_mode, dynamic=not fixed_shape) if compile_mode else model
    opt = torch.optim.Adam(model.parameters(), 1e-4, fused=cuda)
    loss_fn = GatedRefinementLoss() if name.endswith("_mt") else SegLoss()
    augment = StackAugmenter(cfg.augment)
    gen = torch.Generator(device=device).manual_seed(0)
    batches = []
    for sizes, pad in _shapes(model.all_slice, cfg, batch_factor, n_shapes, fixed_shape and model.all_slice):
        real = sum(sizes)
        n = real + pad
        ids = None
        if fixed_shape and model.all_slice:
            stacks = len(sizes)
            sizes = sizes + [pad] if pad else sizes
            ids = stack_ids(sizes, stacks).to(device)
        batches.append((torch.rand(n, 1, canvas, canvas, device=device),
                        torch.randint(0, 4, (n, canvas, canvas), device=device), sizes, ids, real))

    def step(x, y, sizes, ids, real):
        centers = torch.full((len(sizes), 2), canvas / 2.0)
        x, y, _ = augment(x, y, sizes, generator=gen, centers=centers)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        stacks = {"stack_sizes": sizes} if ids is None else {"stack_ids": ids}
        valid = None if ids is None else ids >= 0
        with _autocast(device, amp):
            out = train_model(x, **stacks)
        logits = (out.logits, out.class_logits) if out.class_logits is not None else (out.logits,)
        loss = loss_fn(*logits, y, valid)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        opt.step()

    return step, batches



def time_setting(name: str, cfg, device: str, steps: int, channels_last: bool = False, cudnn_benchmark: bool = False,
                 batch_factor: int = 1, n_shapes: int = len(STACK_SIZES), fixed_shape: bool = False,
                 compile_mode: str | None = None, amp: str = "auto") -> dict:
    """Train ``name`` (the protocol's widths) on synthetic batches; real slices/s at the median step."""
    step, batches = _setup(name, cfg, device, channels_last, cudnn_benchmark, batch_factor, n_shapes, fixed_shape,
                           compile_mode, amp)
    size = cfg.augment.crop or cfg.preprocess.canvas
    _sync(device)
    t0 = time.perf_counter()
    for b in batches * (2 if compile_mode else 1):  # every shape once (compiled: twice, CUDA graphs record
        step(*b)                                     # on the second call): autotuning, allocator warm-up
    _sync(device)
    tune = time.perf_counter() - t0
    rates = []
    for i in range(steps):
        b = batches[i % len(batches)]
        _sync(device)
        t0 = time.perf_counter()
        step(*b)
        _sync(device)
        rates.append(b[4] / (time.perf_counter() - t0))
    return {"model": name, "family": FAMILIES.get(name, name), "crop": size, "channels_last": channels_last,
            "cudnn_benchmark": cudnn_benchmark, "fixed_shape": fixed_shape, "compile": compile_mode or False,
            "amp": amp, "batch_slices_mean": sum(b[4] for b in batches) / len(batches),
            "padded_slices_mean": sum(b[0].shape[0] - b[4] for b in batches) / len(batches),
            "batch_factor": batch_factor, "tune_seconds": round(tune, 2), "slices_per_s": statistics.median(rates)}


def profile_setting(name: str, cfg, device: str, steps: int, channels_last: bool = False,
                    cudnn_benchmark: bool = False, batch_factor: int = 1, fixed_shape: bool = False,
                    compile_mode: str | None = None, row_limit: int = 30) -> tuple[dict, str]:
    """``torch.profiler`` over ``steps`` training steps of ``name`` after a warm-up over every
    batch shape: where a step's time goes. Returns a summary (wall and accelerator time per
    step, kernels launched per step, the share of the wall time the accelerator was busy: low
    means the step waits on Python and kernel launches, not on the GPU's arithmetic) and the
    profiler's table of the ops by their own time."""
    from torch.profiler import ProfilerActivity, profile

    cuda = device.startswith("cuda")
    step, batches = _setup(name, cfg, device, channels_last, cudnn_benchmark, batch_factor, 3, fixed_shape,
                           compile_mode)
    for b in batches * (2 if compile_mode else 1):
        step(*b)
    _sync(device)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    slices = 0
    with profile(activities=activities) as prof:
        t0 = time.perf_counter()
        for i in range(steps):
            b = batches[i % len(batches)]
            step(*b)
            slices += b[4]
        _sync(device)
        wall = time.perf_counter() - t0
    # the GPU's own events (kernels, copies): their durations on the one stream add up to its busy time
    kernels = [e for e in prof.events() if cuda and str(getattr(e, "device_type", "")).endswith("CUDA")]
    device_s = sum(e.time_range.elapsed_us() for e in kernels) / 1e6
    summary = {"model": name, "channels_last": channels_last, "cudnn_benchmark": cudnn_benchmark,
               "fixed_shape": fixed_shape, "compile": compile_mode or False, "batch_factor": batch_factor,
               "steps": steps, "slices_per_s": slices / wall,
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


SETTING = ("channels_last", "cudnn_benchmark", "fixed_shape", "compile")  # what a training run can choose


def _setting(row: dict) -> tuple:
    return tuple(row.get(k, False) for k in SETTING)


def best_settings(rows: list[dict], stage_seconds: float | None = None) -> dict:
    """The fastest setting per model among the rows at the protocol's batch size, and the batch
    factor to train with: 2 when twice the batch, with that setting, reached ``BATCH_GAIN``
    times its slices/s, else 1. With ``stage_seconds``, a setting's warm-up (``tune_seconds``:
    autotuning, compiling) is paid out of a stage that long: it wins only by the slices it
    trains in the stage, not by its rate alone."""
    def trained(r: dict) -> float:
        if stage_seconds is None:
            return r["slices_per_s"]
        return r["slices_per_s"] * max(0.0, stage_seconds - r.get("tune_seconds", 0.0))

    best = {}
    for r in rows:
        if r["batch_factor"] == 1 and (r["model"] not in best or trained(r) > trained(best[r["model"]])):
            best[r["model"]] = r
    out = {}
    for k, v in best.items():
        out[k] = {**dict(zip(SETTING, _setting(v))), "slices_per_s": v["slices_per_s"], "batch_factor": 1}
        larger = [r for r in rows if r["model"] == k and r["batch_factor"] == 2 and _setting(r) == _setting(v)]
        if larger and larger[0]["slices_per_s"] >= BATCH_GAIN * v["slices_per_s"]:
            out[k].update(batch_factor=2, slices_per_s=larger[0]["slices_per_s"])
    return out


def settings_grid(cfg, device: str, steps: int, seconds: float, on_row=None, compile_mode: str | None = None,
                  stage_seconds: float | None = None) -> tuple[list[dict], dict]:
    """Every setting for seg_as then seg_ss, until ``seconds`` have passed; the best per model.
    ``on_row(rows)`` after every measured setting (so a stopped run leaves what it measured)."""
    t_end = time.perf_counter() + seconds
    rows = []

    def add(row: dict) -> None:
        rows.append(row)
        print(json.dumps(row), flush=True)
        if on_row is not None:
            on_row(rows)

    def best(name: str) -> dict | None:
        return best_settings(rows, stage_seconds).get(name)

    grid = [(cl, bench) for cl in (True, False) for bench in (True, False)]
    for name in ("seg_as", "seg_ss"):
        for cl, bench in grid:
            if time.perf_counter() > t_end:
                break
            add(time_setting(name, cfg, device, steps, cl, bench, n_shapes=3))
        b = best(name)
        if name == "seg_as" and b:  # fixed shapes (one shape: autotuned), then compiled on them
            for mode in [None] + ([compile_mode] if compile_mode and device.startswith("cuda") else []):
                if time.perf_counter() < t_end:
                    add(time_setting(name, cfg, device, steps, b["channels_last"], True, n_shapes=3,
                                     fixed_shape=True, compile_mode=mode))
            b = best(name)
        # the protocol's batch doubled, with the best setting (not compiled: a second compile for the
        # new shape would cost the check another minute)
        if b and not b["compile"] and time.perf_counter() < t_end:
            add(time_setting(name, cfg, device, steps, b["channels_last"], b["cudnn_benchmark"], batch_factor=2,
                             n_shapes=3, fixed_shape=b["fixed_shape"]))
    return rows, best_settings(rows, stage_seconds)


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
    ap.add_argument("--compile", metavar="MODE", help="also torch.compile in this mode on fixed-shape batches "
                    "(--settings: CUDA only; reduce-overhead: CUDA graphs; default: also on the CPU)")
    ap.add_argument("--amp", default="auto", choices=["auto", "bf16", "off"],
                    help="bf16 autocast: auto = on CUDA only; bf16 = also on the CPU (as amp=bf16 trains there)")
    ap.add_argument("--stage-seconds", type=float, help="--settings: pick the setting that trains the most "
                    "slices in a stage this long, warm-up (compiling) included")
    ap.add_argument("--out")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    cuda = args.device.startswith("cuda")
    if cuda:
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    cfg = load_config(protocol=args.protocol, model="seg_as")
    dev_name = torch.cuda.get_device_name(0) if cuda else cpu_description()

    profile = None

    def save(rows: list[dict], best: dict | None) -> None:
        if args.out:
            write_json(args.out, {"device": args.device, "device_name": dev_name, "protocol": args.protocol,
                                  "threads": args.threads, "torch": torch.__version__, "machine": platform.platform(),
                                  "date": time.strftime("%Y-%m-%d"), "rows": rows, "best": best, "profile": profile})

    best = None
    if args.settings:
        rows, best = settings_grid(cfg, args.device, args.steps, args.seconds,
                                   on_row=lambda rows: save(rows, best_settings(rows, args.stage_seconds)),
                                   compile_mode=args.compile, stage_seconds=args.stage_seconds)
    else:
        # (channels_last, fixed_shape, compile): channels-last (as CUDA trains), channels-first (as the
        # CPU trains: a faster lone step there is not a faster epoch, docs/RESULTS.md), fixed shapes,
        # and compiled on them when asked
        variants = [(True, False, None), (False, False, None), (True, True, None)] + (
            [(True, True, args.compile)] if args.compile else [])
        rows = [time_setting(name, cfg, args.device, args.steps, channels_last=cl, cudnn_benchmark=False,
                             fixed_shape=fixed, compile_mode=mode, amp=args.amp)
                for name in FAMILIES for cl, fixed, mode in variants
                if not fixed or name != "seg_ss"]  # single-slice batches have one shape already
    print(f"| model | crop | channels_last | cuDNN autotune | fixed shape | compile | real (padded) slices/step | "
          f"warm-up s | training slices/s ({args.device}, protocol {args.protocol}) |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['model']} | {r['crop']} | {r['channels_last']} | {r['cudnn_benchmark']} | {r['fixed_shape']} | "
              f"{r['compile']} | {r['batch_slices_mean']:.0f} ({r['padded_slices_mean']:.0f}) | "
              f"{r['tune_seconds']:.1f} | "
              f"{r['slices_per_s']:.1f} |")
    save(rows, best)
    if args.profile:
        b = (best or {}).get("seg_as", {"channels_last": True, "cudnn_benchmark": False, "batch_factor": 1})
        try:  # a profiler that fails on some torch / driver must not cost the settings measured above
            profile, table = profile_setting("seg_as", cfg, args.device, args.profile, b["channels_last"],
                                             b["cudnn_benchmark"], b["batch_factor"], b.get("fixed_shape", False),
                                             b.get("compile") or None)
        except Exception as exc:  # noqa: BLE001 (reported, not hidden)
            profile, table = {"error": f"{type(exc).__name__}: {exc}"}, ""
        print(json.dumps(profile), table, sep="\n", flush=True)
        if args.out and table:
            write_text(Path(args.out).with_suffix(".profile.txt"), table)
        save(rows, best)


if __name__ == "__main__":
    main()
