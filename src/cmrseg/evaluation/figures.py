"""The pictures of an evaluation report (``cmrseg evaluate``): Bland-Altman plots of the
clinical measures against the truth's, and Dice by slice level.

Bland-Altman (1986) is how cardiac MR method comparisons show agreement (ukbb_cardiac's
evaluation, the ACDC challenge paper): per patient, the mean of the two measurements against
their difference, with the bias and the 95 % limits of agreement (bias +- 1.96 SD of the
differences) drawn. The limits are computed by :func:`limits_of_agreement` (a mean and a
standard deviation: no library does the plot, so it is drawn here with matplotlib).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np

from cmrseg.labels import CLASS_NAMES
from cmrseg.measures.clinical import ERROR_MEASURES
from cmrseg.measures.levels import LEVELS
from cmrseg.visualization import COLORS, pyplot, save_figure

LOA_Z = 1.96  # limits of agreement: bias +- 1.96 SD of the per-patient differences


def limits_of_agreement(differences: Sequence[float]) -> tuple[float, float, float]:
    """(bias, lower, upper): the mean difference and bias -+ 1.96 sample SDs (NaN limits with
    fewer than two differences)."""
    d = np.asarray([v for v in differences if np.isfinite(v)], dtype=float)
    if d.size == 0:
        return float("nan"), float("nan"), float("nan")
    bias = float(d.mean())
    if d.size < 2:
        return bias, float("nan"), float("nan")
    sd = float(d.std(ddof=1))
    return bias, bias - LOA_Z * sd, bias + LOA_Z * sd


def _group_colours(groups: list[str]) -> dict[str, Any]:
    import matplotlib

    cmap = matplotlib.colormaps["tab10"]
    return {g: cmap(i % 10) for i, g in enumerate(sorted(set(groups)))}


def bland_altman(rows: Sequence[dict[str, Any]], path: str | Path) -> Path:
    """One panel per clinical measure (``ERROR_MEASURES``): per patient of ``rows`` (from
    :func:`cmrseg.evaluation.evaluate.clinical_rows`), the mean of the predicted and true
    value against their difference (prediction - truth), the bias and the limits of
    agreement; points coloured by pathology group where the rows have one."""
    plt = pyplot()
    measures = list(ERROR_MEASURES)
    groups = [str(r.get("group") or "") for r in rows]
    colours = _group_colours(groups) if any(groups) else {"": "tab:blue"}
    ncol = 4
    fig, axes = plt.subplots((len(measures) + ncol - 1) // ncol, ncol, figsize=(3.3 * ncol, 3.0 * 2), squeeze=False)
    for ax, m in zip(axes.flat, measures):
        pred = np.array([r[f"pred {m}"] for r in rows], dtype=float)
        true = np.array([r[f"true {m}"] for r in rows], dtype=float)
        diff = pred - true
        for g in colours:
            sel = np.array([x == g for x in groups])
            ax.scatter(((pred + true) / 2)[sel], diff[sel], s=16, color=colours[g], label=g or None, zorder=3)
        bias, lo, hi = limits_of_agreement(diff)
        ax.axhline(0.0, color="0.75", lw=0.8)
        ax.axhline(bias, color="k", lw=1.0, label=None)
        for y in (lo, hi):
            if np.isfinite(y):
                ax.axhline(y, color="k", lw=0.8, ls="--")
        loa = f", LoA {lo:+.1f} to {hi:+.1f}" if np.isfinite(lo) else ""
        ax.set_title(f"{m}: bias {bias:+.2f}{loa}", fontsize=8)
        ax.set_xlabel(f"mean of prediction and truth {m.split(' ')[-1]}", fontsize=7)
        ax.set_ylabel("prediction - truth", fontsize=7)
        ax.tick_params(labelsize=7)
    for ax in list(axes.flat)[len(measures):]:
        ax.axis("off")
    if any(groups):
        handles, labels = axes.flat[0].get_legend_handles_labels()
        list(axes.flat)[-1].legend(handles, labels, title="group", fontsize=8, loc="center")
    fig.suptitle(f"Bland-Altman: {len(rows)} patients (solid: bias; dashed: bias +- {LOA_Z} SD)", fontsize=10)
    fig.tight_layout()
    return save_figure(fig, path)


def dice_by_level(results: Sequence[Any], path: str | Path) -> Path:
    """Box plots of the per-volume Dice of RV, MYO and LV at each slice level (base, mid, apex)
    and over the volume (``results``: :class:`cmrseg.evaluation.evaluate.VolumeResult`), every
    volume a dot; a class a volume lacks at a level is left out (NaN)."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(8.0, 3.4))
    names = (*LEVELS, "volume")
    width = 0.25
    for k, cname in enumerate(CLASS_NAMES):
        data, pos = [], []
        for j, lv in enumerate(names):
            vals = np.array([(r.volume_dice if lv == "volume" else r.level_dice[lv])[k] for r in results], dtype=float)
            data.append(vals[np.isfinite(vals)])
            pos.append(j + (k - 1) * width)
        box = ax.boxplot([d if d.size else [np.nan] for d in data], positions=pos, widths=width * 0.85,
                         patch_artist=True, showfliers=False, medianprops={"color": "k"})
        for patch in box["boxes"]:
            patch.set(facecolor=(*COLORS[k + 1], 0.35), edgecolor=COLORS[k + 1])
        for p, d in zip(pos, data):
            ax.scatter(np.full(d.size, p), d, s=6, color=COLORS[k + 1], zorder=3)
        ax.plot([], [], color=COLORS[k + 1], lw=6, alpha=0.5, label=cname)
    ax.set_xticks(range(len(names)), [n.capitalize() for n in names])
    ax.set_ylabel("Dice")
    ax.set_ylim(0.0, 1.02)
    ax.legend(fontsize=8, loc="lower left")
    ax.set_title(f"Dice by slice level: {len(results)} volumes", fontsize=10)
    fig.tight_layout()
    return save_figure(fig, path)


def wall_thickness_scatter(pairs: dict[str, dict[str, np.ndarray]], path: str | Path) -> Path:
    """Per phase, each slice's mean wall thickness in the prediction against the truth's
    (``pairs``: {phase: {level: ``[n, 2]`` (truth, prediction) mm}}), coloured by level, with the
    identity line and the least-squares line of prediction on truth."""
    plt = pyplot()
    phases = [ph for ph, rows in pairs.items() if sum(len(v) for v in rows.values())]
    fig, axes = plt.subplots(1, max(len(phases), 1), figsize=(4.2 * max(len(phases), 1), 4.0), squeeze=False)
    top = max([float(v.max()) for rows in pairs.values() for v in rows.values() if len(v)] + [1.0]) * 1.05
    for ax, phase in zip(axes.flat, phases):
        for lv, colour in zip(LEVELS, ("tab:blue", "tab:orange", "tab:green")):
            v = pairs[phase][lv]
            ax.scatter(v[:, 0], v[:, 1], s=9, alpha=0.7, color=colour, label=f"{lv} ({len(v)})")
        allv = np.concatenate([pairs[phase][lv] for lv in LEVELS])
        ax.plot([0, top], [0, top], color="0.6", lw=0.8, ls="--")
        title = f"{phase}: {len(allv)} slices"
        if len(allv) >= 3 and allv[:, 0].std() > 0:
            slope, intercept = np.polyfit(allv[:, 0], allv[:, 1], 1)
            ax.plot([0, top], [intercept, intercept + slope * top], color="k", lw=1.0)
            title += f", slope {slope:.2f}"
        ax.set(xlim=(0, top), ylim=(0, top), aspect="equal")
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("truth wall (mm)", fontsize=8)
        ax.set_ylabel("prediction wall (mm)", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.legend(fontsize=7, loc="upper left")
    fig.suptitle("Mean wall thickness per slice (dashed: identity; solid: prediction on truth)", fontsize=9)
    fig.tight_layout()
    return save_figure(fig, path)


def paired_differences(result: dict[str, Any], families: Sequence[tuple[str, Sequence[str]]],
                       path: str | Path) -> Path:
    """A forest plot of :func:`cmrseg.evaluation.compare.compare_evaluations`: per metric and
    candidate the mean paired difference (candidate - reference) with its confidence interval,
    a filled marker where the adjusted p is below the comparison's alpha; one panel per family
    (``families``: (title, metric names), e.g. Dice, HD95, absolute and signed clinical error),
    since their units differ."""
    plt = pyplot()
    families = [(t, [m for m in ms if any(r["metric"] == m for r in result["rows"])]) for t, ms in families]
    families = [(t, ms) for t, ms in families if ms]
    cands = result["candidates"]
    cmap = _group_colours(cands)
    row_inches = 0.45 * max(1.0, len(cands) / 4)  # a metric's row: room for its candidates' lines
    fig, axes = plt.subplots(1, len(families), squeeze=False,
                             figsize=(4.2 * len(families), row_inches * max(len(ms) for _, ms in families) + 1.6))
    for ax, (title, metrics) in zip(axes.flat, families):
        for j, cand in enumerate(cands):
            rows = {r["metric"]: r for r in result["rows"] if r["candidate"] == cand}
            for i, m in enumerate(metrics):
                r = rows.get(m)
                if r is None:
                    continue
                y = i + (j - (len(cands) - 1) / 2) * 0.8 / max(len(cands), 1)
                shown = r["verdict"] != "not shown"
                ax.plot([r["ci low"], r["ci high"]], [y, y], color=cmap[cand], lw=1.2)
                ax.scatter([r["difference"]], [y], s=22, color=cmap[cand] if shown else "white",
                           edgecolors=cmap[cand], zorder=3, label=cand if i == 0 else None)
        ax.axvline(0.0, color="0.5", lw=0.8)
        ax.set_yticks(range(len(metrics)), metrics, fontsize=7)
        ax.invert_yaxis()
        ax.tick_params(axis="x", labelsize=7)
        ax.set_title(title, fontsize=8)
        ax.set_xlabel("candidate - reference", fontsize=7)
    axes.flat[0].legend(fontsize=7, loc="best")
    fig.suptitle(f"Paired differences against {result['reference']}: {result['patients']} patients, "
                 f"{100 * result['confidence']:.0f} % bootstrap intervals (filled: adjusted p < {result['alpha']:g})",
                 fontsize=9)
    fig.tight_layout()
    return save_figure(fig, path)
