"""Paired comparison of models scored on the same patients (``cmrseg compare``).

Two models of one split often differ by a few thousandths of Dice or a fraction of a point of
ejection fraction; on ten validation patients such a difference can be chance. This module
pairs evaluations (``cmrseg evaluate`` report folders, or the per-volume rows it writes) by
patient and reports, per metric, each model's mean, the mean paired difference (candidate -
reference) with a 95 % bootstrap confidence interval, and the Wilcoxon signed-rank test's p
value, also adjusted for the number of metrics compared (Benjamini-Hochberg).

The patient is the unit: ED and ES of one patient share the heart and the annotator, so their
per-volume Dice are averaged first (a test that counted them as two independent pairs would be
overconfident). The statistics come from SciPy (``scipy.stats.bootstrap``, BCa, resampling
patients; ``scipy.stats.wilcoxon``; ``scipy.stats.false_discovery_control``). Dice and HD95
per patient are means over its volumes, so a model's mean here can differ in the last digit
from ``cmrseg evaluate``'s table, which averages volumes, classes and levels as the protocol
says. :func:`mean_intervals` gives one model's means over patients the same intervals
(``cmrseg evaluate``'s "How sure these numbers are").
"""

from __future__ import annotations

import csv
import io
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from cmrseg.atomic import write_json, write_text
from cmrseg.errors import CmrsegError, InputError
from cmrseg.evaluation.figures import paired_differences
from cmrseg.labels import CLASS_NAMES
from cmrseg.measures.clinical import ERROR_MEASURES
from cmrseg.measures.levels import LEVELS

CONFIDENCE = 0.95
ALPHA = 0.05  # a difference is reported as shown when its adjusted p is below this
N_RESAMPLES = 9999
SEED = 0  # the bootstrap's resampling is seeded: the same reports give the same intervals

#: metric -> which way is better: ``higher``, ``lower``, or ``shift`` (a signed error: the
#: difference says how much the candidate's measure moved against the reference's)
DICE_METRICS = {f"{lv} Dice": "higher" for lv in (*LEVELS, "volume")} | {
    f"volume {c} Dice": "higher" for c in CLASS_NAMES}
HD95_METRICS = {f"{c} HD95": "lower" for c in CLASS_NAMES}
#: a patient's mean wall-thickness error over its slices per phase (``wall_thickness.csv``)
WALL_MEASURES = ("ED wall (mm)", "ES wall (mm)")
ABS_ERROR_METRICS = {f"abs error {m}": "lower" for m in (*ERROR_MEASURES, *WALL_MEASURES)}
SIGNED_ERROR_METRICS = {f"error {m}": "shift" for m in (*ERROR_MEASURES, *WALL_MEASURES)}
METRICS = DICE_METRICS | HD95_METRICS | ABS_ERROR_METRICS | SIGNED_ERROR_METRICS
METRIC_FAMILIES = (("Dice (higher is better)", tuple(DICE_METRICS)), ("HD95 (lower is better)", tuple(HD95_METRICS)),
                   ("absolute error (lower is better)", tuple(ABS_ERROR_METRICS)),
                   ("signed error (shift)", tuple(SIGNED_ERROR_METRICS)))  # the figure's panels: one unit each


@dataclass
class Evaluation:
    """One model's scores per patient: ``values[patient][metric]`` (NaN where not scored)."""

    name: str
    values: dict[str, dict[str, float]]


def _float(text: str | None) -> float:
    try:
        return float(text) if text not in (None, "") else float("nan")
    except ValueError:
        return float("nan")


def _nanmean(values: Sequence[float]) -> float:
    finite = [v for v in values if np.isfinite(v)]
    return float(np.mean(finite)) if finite else float("nan")


def _volume_metrics(row: dict[str, str]) -> dict[str, float]:
    """A per-volume row's metrics: each level's average over the classes it scored, the
    whole volume's per class, HD95 per class."""
    out = {f"{lv} Dice": _nanmean([_float(row.get(f"{lv} {c} Dice")) for c in CLASS_NAMES]) for lv in LEVELS}
    out["volume Dice"] = _nanmean([_float(row.get(f"volume {c} Dice")) for c in CLASS_NAMES])
    out |= {f"volume {c} Dice": _float(row.get(f"volume {c} Dice")) for c in CLASS_NAMES}
    out |= {f"{c} HD95": _float(row.get(f"{c} HD95")) for c in CLASS_NAMES}
    return out


def _wall_errors(wall_rows: Sequence[dict[str, str]]) -> dict[str, dict[str, float]]:
    """Per patient (or volume) and phase, the mean over slices of the wall-thickness error
    (prediction - truth) and of its absolute value."""
    diffs: dict[tuple[str, str], list[float]] = {}
    for row in wall_rows:
        if row.get("phase") in ("ED", "ES"):
            d = _float(row.get("prediction wall (mm)")) - _float(row.get("truth wall (mm)"))
            diffs.setdefault((row.get("patient") or row["volume"], row["phase"]), []).append(d)
    out: dict[str, dict[str, float]] = {}
    for (patient, phase), d in diffs.items():
        out.setdefault(patient, {}).update({f"error {phase} wall (mm)": _nanmean(d),
                                            f"abs error {phase} wall (mm)": _nanmean([abs(v) for v in d])})
    return out


def per_patient(volume_rows: Sequence[dict[str, str]], clinical_rows: Sequence[dict[str, Any]] = (),
                wall_rows: Sequence[dict[str, str]] = ()) -> dict[str, dict[str, float]]:
    """``{patient: {metric: value}}`` from ``cmrseg evaluate``'s per-volume rows (a volume
    without a patient name is its own unit), its per-patient clinical rows and its per-slice
    wall thicknesses (``wall_thickness.csv``)."""
    volumes: dict[str, list[dict[str, float]]] = {}
    for row in volume_rows:
        volumes.setdefault(row.get("patient") or row["volume"], []).append(_volume_metrics(row))
    out = {p: {m: _nanmean([v[m] for v in vs]) for m in vs[0]} for p, vs in volumes.items()}
    for row in clinical_rows:
        scores = out.setdefault(str(row["patient"]), {})
        for m in ERROR_MEASURES:
            error = _float(str(row.get(f"error {m}", "")))
            scores[f"error {m}"], scores[f"abs error {m}"] = error, abs(error)
    for patient, scores in _wall_errors(wall_rows).items():
        out.setdefault(patient, {}).update(scores)
    return out


def _rows(path: Path, needed: str) -> list[dict[str, str]]:
    """The rows of a report's CSV, which must have the column ``needed``."""
    try:
        with open(path, newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            rows = list(reader)
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise InputError(path, f"cannot be read as CSV ({e})") from e
    if rows and needed not in (reader.fieldnames or []):
        raise InputError(path, f"no '{needed}' column: not written by cmrseg evaluate")
    return rows


def load_evaluation(folder: str | Path, name: str | None = None) -> Evaluation:
    """A ``cmrseg evaluate`` report folder (``per_volume.csv``, ``clinical.csv`` when the
    measures were scored)."""
    folder = Path(folder)
    volumes = folder / "per_volume.csv"
    if not volumes.is_file():
        raise InputError(folder, "no per_volume.csv: not a report folder written by cmrseg evaluate")
    clinical, walls = folder / "clinical.csv", folder / "wall_thickness.csv"
    values = per_patient(_rows(volumes, "volume"), _rows(clinical, "patient") if clinical.is_file() else [],
                         _rows(walls, "volume") if walls.is_file() else [])
    if not values:
        raise InputError(volumes, "no volumes in the report")
    return Evaluation(name or folder.name, values)


def bootstrap_ci(differences: np.ndarray) -> tuple[float, float]:
    """The 95 % BCa bootstrap interval of the mean of ``differences`` (patients resampled);
    a constant sample is its own interval; NaN with fewer than two."""
    d = np.asarray(differences, dtype=float)
    if d.size < 2:
        return float("nan"), float("nan")
    if np.all(d == d[0]):
        return float(d[0]), float(d[0])
    import inspect

    from scipy.stats import bootstrap

    # SciPy 1.15 named the generator ``rng``; older ones (a GPU machine's) call it ``random_state``
    seed_arg = "rng" if "rng" in inspect.signature(bootstrap).parameters else "random_state"
    with warnings.catch_warnings():  # BCa on a few tied values can be degenerate: percentile then
        warnings.simplefilter("ignore")
        for method in ("BCa", "percentile"):
            ci = bootstrap((d,), np.mean, confidence_level=CONFIDENCE, n_resamples=N_RESAMPLES, method=method,
                           **{seed_arg: np.random.default_rng(SEED)}).confidence_interval
            if np.isfinite(ci.low) and np.isfinite(ci.high):
                return float(ci.low), float(ci.high)
    return float("nan"), float("nan")


#: the numbers ``cmrseg evaluate`` gives an interval: each level's average Dice, every clinical
#: measure's absolute error (its mean: the MAE) and signed error (its mean: the bias)
INTERVAL_METRICS = (*(f"{lv} Dice" for lv in (*LEVELS, "volume")), *ABS_ERROR_METRICS, *SIGNED_ERROR_METRICS)


def mean_intervals(values: dict[str, dict[str, float]], metrics: Sequence[str] = INTERVAL_METRICS
                   ) -> dict[str, dict[str, float]]:
    """Per metric (of those scored) the mean over patients and its 95 % bootstrap interval
    (:func:`bootstrap_ci`: patients resampled): ``{metric: {patients, mean, low, high}}``."""
    out = {}
    for m in metrics:
        v = np.array([s[m] for s in values.values() if np.isfinite(s.get(m, np.nan))], dtype=float)
        if v.size:
            low, high = bootstrap_ci(v)
            out[m] = {"patients": int(v.size), "mean": float(v.mean()), "low": low, "high": high}
    return out


def wilcoxon_p(differences: np.ndarray) -> float:
    """Two-sided Wilcoxon signed-rank p of ``differences`` (zeros dropped, Wilcoxon's way);
    1 when every difference is zero, NaN with none."""
    d = np.asarray(differences, dtype=float)
    if d.size == 0:
        return float("nan")
    if np.all(d == 0):
        return 1.0
    from scipy.stats import wilcoxon

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the exact test's note on ties and zeros
        return float(wilcoxon(d).pvalue)


def _paired(ref: Evaluation, cand: Evaluation, metric: str) -> tuple[np.ndarray, np.ndarray]:
    patients = sorted(set(ref.values) & set(cand.values))
    a = np.array([ref.values[p].get(metric, np.nan) for p in patients], dtype=float)
    b = np.array([cand.values[p].get(metric, np.nan) for p in patients], dtype=float)
    keep = np.isfinite(a) & np.isfinite(b)
    return a[keep], b[keep]


def _verdict(better: str, diff: float, p_adj: float) -> str:
    if not np.isfinite(p_adj) or p_adj >= ALPHA:
        return "not shown"
    if better == "shift":
        return "higher" if diff > 0 else "lower"
    return "better" if (diff > 0) == (better == "higher") else "worse"


def compare_pair(ref: Evaluation, cand: Evaluation) -> list[dict[str, Any]]:
    """One row per metric both scored: means, paired difference (candidate - reference), its
    interval, Wilcoxon p, p adjusted over this pair's metrics, and the verdict."""
    rows = []
    for metric, better in METRICS.items():
        a, b = _paired(ref, cand, metric)
        if a.size == 0:
            continue
        d = b - a
        low, high = bootstrap_ci(d)
        rows.append({"reference": ref.name, "candidate": cand.name, "metric": metric, "better": better,
                     "patients": int(a.size), "reference mean": float(a.mean()), "candidate mean": float(b.mean()),
                     "difference": float(d.mean()), "ci low": low, "ci high": high, "p": wilcoxon_p(d)})
    ps = np.array([r["p"] for r in rows], dtype=float)
    adjusted = np.full(ps.shape, np.nan)
    if np.isfinite(ps).any():
        from scipy.stats import false_discovery_control

        adjusted[np.isfinite(ps)] = false_discovery_control(ps[np.isfinite(ps)])
    for r, p_adj in zip(rows, adjusted):
        r["p adjusted"] = float(p_adj)
        r["verdict"] = _verdict(r["better"], r["difference"], r["p adjusted"])
    return rows


def unpaired_patients(evaluations: Sequence[Evaluation]) -> dict[str, list[str]]:
    """Patients one evaluation has and another lacks (left out of every comparison)."""
    common = set.intersection(*(set(e.values) for e in evaluations))
    return {e.name: sorted(set(e.values) - common) for e in evaluations if set(e.values) - common}


def compare_evaluations(evaluations: Sequence[Evaluation]) -> dict[str, Any]:
    """Every evaluation after the first against the first, on the patients all of them have."""
    if len(evaluations) < 2:
        raise CmrsegError("compare needs at least two evaluations: the reference first, then the candidates")
    names = [e.name for e in evaluations]
    if len(set(names)) != len(names):
        raise CmrsegError(f"two evaluations share a name ({', '.join(names)}): give each its own with --names")
    left_out = unpaired_patients(evaluations)
    common = set.intersection(*(set(e.values) for e in evaluations))
    if not common:
        raise CmrsegError("the evaluations share no patient: were they scored on the same split?")
    kept = [Evaluation(e.name, {p: v for p, v in e.values.items() if p in common}) for e in evaluations]
    rows = [r for cand in kept[1:] for r in compare_pair(kept[0], cand)]
    return {"reference": names[0], "candidates": names[1:], "patients": len(common), "left_out": left_out,
            "confidence": CONFIDENCE, "alpha": ALPHA, "rows": rows}


def _fmt(metric: str, v: float, signed: bool = False) -> str:
    if not np.isfinite(v):
        return "–"
    digits = 4 if "Dice" in metric else 2
    return f"{v:+.{digits}f}" if signed else f"{v:.{digits}f}"


def _p(v: float) -> str:
    return "–" if not np.isfinite(v) else f"{v:.3f}" if v >= 0.001 else "<0.001"


def markdown(result: dict[str, Any]) -> str:
    """The comparison as Markdown: one table per candidate."""
    lines = [f"# Paired comparison against {result['reference']} ({result['patients']} patients)", "",
             f"Difference = candidate - reference per patient (ED and ES averaged), mean with its "
             f"{100 * result['confidence']:.0f} % bootstrap interval (BCa); p: Wilcoxon signed-rank, two-sided; "
             f"p adj.: Benjamini-Hochberg over the candidate's metrics; verdict at p adj. < {result['alpha']:g}. "
             "`shift`: a signed error, where the difference is how far the candidate's measure moved.", ""]
    for name, patients in result["left_out"].items():
        lines.append(f"Left out (not in every evaluation): {name}: {', '.join(patients)}")
    for cand in result["candidates"]:
        lines += ["", f"## {cand}", "", f"| metric | better | {result['reference']} | {cand} | difference "
                  f"[{100 * result['confidence']:.0f} % CI] | p | p adj. | verdict |", "|---|---|---|---|---|---|---|---|"]
        for r in (r for r in result["rows"] if r["candidate"] == cand):
            m = r["metric"]
            lines.append(f"| {m} | {r['better']} | {_fmt(m, r['reference mean'])} | {_fmt(m, r['candidate mean'])} | "
                         f"{_fmt(m, r['difference'], True)} [{_fmt(m, r['ci low'], True)}, {_fmt(m, r['ci high'], True)}]"
                         f" | {_p(r['p'])} | {_p(r['p adjusted'])} | {r['verdict']} |")
    return "\n".join(lines) + "\n"


#: the columns of :func:`summary_table`: what a reader of Tables 1-2 looks at first
SUMMARY_METRICS = ("volume Dice", "base Dice", "mid Dice", "apex Dice", "abs error LVEF (%)", "abs error RVEF (%)",
                   "abs error LVM (g)")


def summary_table(result: dict[str, Any], metrics: Sequence[str] = SUMMARY_METRICS) -> str:
    """One row per candidate: its mean difference from the reference and the interval for a
    few metrics, ``*`` where the adjusted p is below alpha (``compare.md`` has every metric)."""
    head = [m for m in metrics if any(r["metric"] == m for r in result["rows"])]
    lines = [f"| model | {' | '.join(head)} |", "|---" * (len(head) + 1) + "|"]
    for cand in result["candidates"]:
        rows = {r["metric"]: r for r in result["rows"] if r["candidate"] == cand}
        cells = [(f"{_fmt(m, rows[m]['difference'], True)} [{_fmt(m, rows[m]['ci low'], True)}, "
                  f"{_fmt(m, rows[m]['ci high'], True)}]{' *' if rows[m]['verdict'] != 'not shown' else ''}")
                 if m in rows else "–" for m in head]
        lines.append(f"| {cand} | {' | '.join(cells)} |")
    return "\n".join(lines) + "\n"


def rows_csv(rows: Sequence[dict[str, Any]]) -> str:
    buf = io.StringIO()
    if rows:
        w = csv.DictWriter(buf, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in r.items()} for r in rows)
    return buf.getvalue()


def write_comparison(out_dir: str | Path, result: dict[str, Any]) -> Path:
    """``compare.md``, ``compare.csv``, ``compare.json`` and ``compare.png`` into ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    write_text(out / "compare.md", markdown(result))
    write_text(out / "compare.csv", rows_csv(result["rows"]))
    write_json(out / "compare.json", result)
    paired_differences(result, METRIC_FAMILIES, out / "compare.png")
    return out


def compare_reports(folders: Sequence[str | Path], out_dir: str | Path, names: Sequence[str] | None = None
                    ) -> dict[str, Any]:
    """``cmrseg compare``: the reports in ``folders`` (the reference first), compared and written."""
    if names is not None and len(names) != len(folders):
        raise CmrsegError(f"--names gives {len(names)} names for {len(folders)} reports")
    evaluations = [load_evaluation(f, names[i] if names else None) for i, f in enumerate(folders)]
    if names is None and len({e.name for e in evaluations}) < len(evaluations):  # same folder names: the paths
        evaluations = [Evaluation(str(f), e.values) for f, e in zip(folders, evaluations)]
    result = compare_evaluations(evaluations)
    write_comparison(out_dir, result)
    return result
