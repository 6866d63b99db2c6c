"""Pictures, tables and the HTML report of a segmentation batch.

* per study a montage of every slice with the mask overlaid (RV red, MYO green, LV blue),
  one row per shown frame (ED and ES), cropped around the heart;
* for cines a plot of LV and RV volume over the cycle with ED and ES marked;
* ``report.html``: one self-contained page (pictures embedded as data URIs, each linking to
  its full-size file) with every study's measures, flags and status;
* ``measures.csv``, ``volumes.csv`` and ``summary.json``, rebuilt from every study record of the
  output folder after each batch (:func:`rebuild_reports`), so shards writing into one folder
  add up.
"""

from __future__ import annotations

import base64
import csv
import html
import io
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from cmrseg.atomic import write_json, write_text
from cmrseg.inference.output_folder import FIGURE_KEYS, shard_records, study_records
from cmrseg.labels import label_map_json
from cmrseg.measures.aha import segment_row
from cmrseg.measures.clinical import (
    BODY_COLUMNS,
    FRAME_MEASURE_COLUMNS,
    MEASURE_COLUMNS,
    REPORT_BODY_MEASURES,
    REPORT_MEASURES,
    STRUCTURE_COLUMNS,
    WALL_COLUMNS,
)
from cmrseg.visualization import heart_box, overlay, pyplot, save_figure

FLAG_COLOUR = "#ff8c00"  # the frame of a slice quality control flagged


def montage(rows: Sequence[tuple[str, np.ndarray, np.ndarray]], path: str | Path, title: str = "",
            slice_numbers: Sequence[int] | None = None, flagged: set[tuple[int, int]] | None = None) -> Path:
    """``rows``: (row label, image ``[S, H, W]``, mask ``[S, H, W]``, base -> apex) -> PNG with one
    column per slice, titled with ``slice_numbers`` (the voxel index k of each column in the
    written mask; default the column index). ``flagged``: (row, column) of slices quality
    control flagged, framed in orange so that a reader finds them at a glance."""
    plt = pyplot()
    n_slices = max(r[1].shape[0] for r in rows)
    box = heart_box([m[s] for _, _, m in rows for s in range(m.shape[0])], rows[0][1].shape[1:])
    sl = (slice(box[0], box[1]), slice(box[2], box[3]))
    fig, axes = plt.subplots(len(rows), n_slices, figsize=(1.3 * n_slices, 1.45 * len(rows) + 0.3), squeeze=False)
    for r, (label, image, mask) in enumerate(rows):
        for s in range(n_slices):
            ax = axes[r, s]
            ax.set_xticks([])
            ax.set_yticks([])
            if s < image.shape[0]:
                ax.imshow(overlay(image[s][sl], mask[s][sl]), interpolation="nearest")
            if flagged and (r, s) in flagged:
                for spine in ax.spines.values():
                    spine.set(edgecolor=FLAG_COLOUR, linewidth=2.5)
            if r == 0:
                k = slice_numbers[s] if slice_numbers is not None else s
                ax.set_title(f"k={k}" + (" (base)" if s == 0 else " (apex)" if s == n_slices - 1 else ""), fontsize=7)
            if s == 0:
                ax.set_ylabel(label, fontsize=8)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return save_figure(fig, path, dpi=90)


def volume_curve(volumes: dict[str, list[float]], x: list[float], xlabel: str, ed: int, es: int, unit: str,
                 path: str | Path, title: str = "") -> Path:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 3.2))
    colors = {"LV": "tab:blue", "RV": "tab:red"}
    for name, vals in volumes.items():
        ax.plot(x, vals, "o-", ms=3, color=colors.get(name), label=name)
    top = ax.get_ylim()[1]
    for idx, lab in ((ed, "ED"), (es, "ES")):
        ax.axvline(x[idx], color="0.5", ls="--", lw=0.8)
        ax.text(x[idx], top, f" {lab}", ha="left", va="top", fontsize=8, color="0.3")
    if xlabel == "frame":
        from matplotlib.ticker import MaxNLocator

        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel(xlabel)
    ax.set_ylabel(f"volume ({unit})")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    if title:
        ax.set_title(title, fontsize=9)
    fig.tight_layout()
    return save_figure(fig, path, dpi=100)


#: the bull's-eye's rings, outside in reversed: (first segment, sectors, inner radius); segment 1
#: centred at the top and the numbers turning counterclockwise, as the AHA figure draws them
BULLSEYE_RINGS = ((1, 6, 0.75), (7, 6, 0.5), (13, 4, 0.25))


def bullseye(panels: Sequence[tuple[str, dict[int, float | None], str, str, tuple[float, float]]],
             path: str | Path, title: str = "") -> Path:
    """AHA 17-segment bull's-eye plots side by side. ``panels``: (title, {segment: value}, unit,
    colour map, (low, high) of the colour scale). A segment without a value (absent, or not
    measurable: the apical cap has no radial thickness) is drawn hatched grey, never as zero."""
    plt = pyplot()
    from matplotlib import cm, colors

    fig = plt.figure(figsize=(3.3 * len(panels), 3.6))
    for i, (name, values, unit, cmap_name, (lo, hi)) in enumerate(panels):
        ax = fig.add_subplot(1, len(panels), i + 1, projection="polar")
        cmap, norm = plt.get_cmap(cmap_name), colors.Normalize(lo, hi)
        cells = [(first + j, np.radians(90.0 + j * 360.0 / n), 2 * np.pi / n, inner)
                 for first, n, inner in BULLSEYE_RINGS for j in range(n)]
        cells.append((17, 0.0, 2 * np.pi, 0.0))
        for seg, centre, width, inner in cells:
            v = values.get(seg)
            known = v is not None and np.isfinite(v)
            ax.bar(centre, 0.25, width=width, bottom=inner, color=cmap(norm(v)) if known else "0.88",
                   edgecolor="white", linewidth=1.2, hatch=None if known else "///")
            r = inner + 0.125 if seg != 17 else 0.0
            ax.text(centre if seg != 17 else 0.0, r, f"{seg}\n{v:.1f}" if known else f"{seg}\n–", ha="center",
                    va="center", fontsize=6.5)
        ax.set_ylim(0, 1.0)
        ax.set_axis_off()
        ax.set_title(name, fontsize=8.5)
        fig.colorbar(cm.ScalarMappable(norm=norm, cmap=cmap), ax=ax, orientation="horizontal", fraction=0.05,
                     pad=0.04).set_label(unit, fontsize=7)
    if title:
        fig.suptitle(title, fontsize=9)
    return save_figure(fig, path, dpi=100)


def _img_tag(path: Path, out_dir: Path, width: int) -> str:
    data = base64.b64encode(path.read_bytes()).decode()
    rel = html.escape(str(path.relative_to(out_dir)))
    return f'<a href="{rel}"><img src="data:image/png;base64,{data}" style="max-width:{width}px" alt="{rel}"></a>'


_STYLE = ("body{font-family:sans-serif;margin:1.5em;color:#222}table{border-collapse:collapse;margin:.5em 0}"
          "td,th{border:1px solid #ccc;padding:3px 7px;font-size:13px;text-align:right}th{background:#f3f3f3}"
          ".flag{color:#a60}.fail{color:#b00}.study{border-top:2px solid #ddd;margin-top:1.2em;padding-top:.5em}"
          "td.l,th.l{text-align:left}.qc-ok{color:#070}.qc-review{color:#a60;font-weight:bold}"
          ".qc-fail{color:#b00;font-weight:bold}")


def write_html(out_dir: Path, cases: list[dict[str, Any]], info: dict[str, Any], path: Path) -> Path:
    """The batch report (self-contained HTML): skipped inputs, failures, the measures table,
    then per study its QC verdict, pictures and flags."""
    esc = html.escape
    ok = [c for c in cases if c.get("status") == "ok"]
    failed = [c for c in cases if c.get("status") != "ok"]
    parts = [
        f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>cmrseg report</title><style>{_STYLE}</style>"
        "</head><body>",
        f"<h1>cmrseg segmentation report</h1><p>{len(ok)} {'study' if len(ok) == 1 else 'studies'} segmented, "
        f"{len(failed)} failed. "
        f"Model <b>{esc(str(info.get('model', '')))}</b> on {esc(str(info.get('device', '')))}; "
        f"labels 1 RV (red), 2 MYO (green), 3 LV (blue); cmrseg {esc(str(info.get('cmrseg_version', '')))}.</p>",
    ]
    if info.get("skipped"):
        parts.append("<h2>Skipped inputs</h2><p>Not short-axis studies, so not segmented:</p><ul>")
        parts += [f"<li><b>{esc(k['path'])}</b>: {esc(k['reason'])}</li>" for k in info["skipped"]]
        parts.append("</ul>")
    if failed:
        parts.append("<h2 class='fail'>Failed</h2><ul>")
        parts += [f"<li class='fail'><b>{esc(c['study'])}</b>: {esc(c.get('error', ''))}</li>" for c in failed]
        parts.append("</ul>")
    parts += _measures_table(ok)
    for c in ok:
        parts += _study_section(c, out_dir)
    parts.append("</body></html>")
    write_text(path, "\n".join(parts))
    return path


def _measures_table(ok: list[dict[str, Any]]) -> list[str]:
    esc = html.escape
    columns = [*REPORT_MEASURES, *(k for k in REPORT_BODY_MEASURES if any(k in c.get("measures", {}) for c in ok))]
    parts = ["<h2>Measures</h2><p>Each measure with its estimated error (± in its units: the interval that "
             "covered the true error of 85 % of the studies the estimate was calibrated on).</p>"
             "<table><tr><th class='l'>study</th><th>QC</th>"
             "<th title='share of the masks the model expects to be wrong'>uncertainty</th>"
             "<th>frames</th><th>ED</th><th>ES</th>"
             + "".join(f"<th>{esc(c)}</th>" for c in columns) + "<th>flags</th></tr>"]
    for c in ok:
        m, est = c.get("measures", {}), c.get("estimated_errors") or {}
        cells = "".join(_measure_cell(m.get(k), est.get(k)) for k in columns)
        qc, share = str(c.get("qc", "")), c.get("uncertainty")
        parts.append(f"<tr><td class='l'><a href='#{esc(c['study'])}'>{esc(c['study'])}</a></td>"
                     f"<td class='qc-{esc(qc)}'>{esc(qc)}</td>"
                     f"<td>{'–' if share is None else f'{100 * share:.0f} %'}</td>"
                     f"<td>{c['frames']}</td>"
                     f"<td>{c.get('ed_frame', '')}</td><td>{c.get('es_frame', '')}</td>{cells}"
                     f"<td>{len(c.get('flags', []))}</td></tr>")
    parts.append("</table>")
    return parts


def _measure_cell(value, error) -> str:
    """A measure with its estimated error: ``41.5 ± 9.0``."""
    if not isinstance(value, (int, float)) or not np.isfinite(value):
        return "<td>–</td>"
    return f"<td>{value:.1f}" + (f" ± {error:.1f}" if error is not None else "") + "</td>"


def _study_section(c: dict[str, Any], out_dir: Path) -> list[str]:
    esc = html.escape
    qc = str(c.get("qc", ""))
    parts = [f"<div class='study' id='{esc(c['study'])}'><h3>{esc(c['study'])} "
             f"<span class='qc-{esc(qc)}'>QC: {esc(qc)}</span></h3>"]
    if c.get("qc_reasons"):
        parts.append("<p><b>Why:</b></p><ul>" + "".join(f"<li class='qc-{esc(qc)}'>{esc(r)}</li>"
                                                       for r in c["qc_reasons"]) + "</ul>")
    if c.get("findings"):
        parts.append("<p><b>Findings</b> (outside the adult normal ranges: what the heart shows, not a fault of the "
                     "measurement):</p><ul>" + "".join(f"<li>{esc(f)}</li>" for f in c["findings"]) + "</ul>")
    if c.get("note"):
        parts.append(f"<p class='flag'>{esc(c['note'])}</p>")
    for key in FIGURE_KEYS:
        if c.get(key):
            parts.append(_img_tag(out_dir / c[key], out_dir, {"montage": 1100, "curve": 520}.get(key, 900)))
    if c.get("aha"):
        parts.append(_wall_line(c["aha"]))
    if c.get("flags"):
        parts.append("<table><tr><th class='l'>flag</th><th>frame</th><th>slice k (in the mask file)</th>"
                     "<th class='l'>detail</th></tr>")
        for f in c["flags"][:60]:
            parts.append(f"<tr class='flag'><td class='l'>{esc(f['flag'])}</td><td>{esc(str(f.get('frame', '')))}</td>"
                         f"<td>{'' if f.get('slice') is None else f['slice']}</td><td class='l'>{esc(f['detail'])}</td></tr>")
        parts.append("</table>")
    outs = " ".join(f"<a href='{esc(o)}'>{esc(o)}</a>" for o in c.get("outputs", []))
    parts.append(f"<p>masks: {outs} &middot; {c.get('seconds', 0):.1f} s</p></div>")
    return parts


def _wall_line(aha: dict[str, Any]) -> str:
    """The regional wall in one paragraph: the thickest segment at ED, how the segments were
    oriented, and what could not be measured."""
    esc = html.escape
    top = aha.get("max ED wall segment")
    text = (f"AHA segments: maximal ED wall {aha['max ED wall (mm)']:.1f} mm in segment {top} "
            f"({esc(segment_row(aha, top)['name'])}); " if top else "AHA segments: no wall measured; ")
    return f"<p>{text}{esc(aha['orientation'])}{''.join('; ' + esc(n) for n in aha.get('notes') or [])}.</p>"


# ----------------------------------------------------------------------------- batch tables

#: the measures whose estimated error (``<measure> +-``) measures.csv and the report give
ESTIMATED = ("LVEDV (mL)", "LVESV (mL)", "LVEF (%)", "LVM (g)", "RVEDV (mL)", "RVESV (mL)", "RVEF (%)")


def measures_csv(cases: list[dict[str, Any]]) -> str:
    """One row per study: the verdict and its reasons, the measures, each estimated measure's
    estimated error beside it (``LVEF (%) +-``), the findings, the note and the flags."""
    buf = io.StringIO()
    measures = [c for k in MEASURE_COLUMNS for c in ((k, f"{k} +-") if k in ESTIMATED else (k,))]
    cols = ["study", "qc", "qc reasons", "uncertainty (%)", "frames", "ED frame", "ES frame", "ED/ES from", *measures,
            *FRAME_MEASURE_COLUMNS, *WALL_COLUMNS, "max ED wall segment", *BODY_COLUMNS, "findings", "note", "flags"]
    w = csv.writer(buf)
    w.writerow(cols)
    for c in cases:
        if c.get("status") != "ok":
            w.writerow([c["study"], "failed", ""] + [""] * (len(cols) - 6) + ["", f"failed: {c.get('error', '')}", ""])
            continue
        m = {**c["measures"], **{f"{k} +-": v for k, v in (c.get("estimated_errors") or {}).items()}}
        flags = sorted({f["flag"] for f in c["flags"]})
        share = c.get("uncertainty")
        w.writerow([c["study"], c.get("qc", ""), "; ".join(c.get("qc_reasons") or []),
                    "" if share is None else f"{100 * share:.1f}", c["frames"], c["ed_frame"], c["es_frame"],
                    c["ed_es_source"], *[f"{m[k]:.2f}" if k in m and np.isfinite(m[k]) else ""
                                         for k in (*measures, *FRAME_MEASURE_COLUMNS, *WALL_COLUMNS)],
                    _top_segment(c.get("aha")),
                    *[f"{m[k]:.2f}" if k in m and np.isfinite(m[k]) else "" for k in BODY_COLUMNS],
                    "; ".join(c.get("findings") or []), c.get("note", ""),
                    ";".join(f"{f}({sum(x['flag'] == f for x in c['flags'])})" for f in flags)])
    return buf.getvalue()


def _top_segment(aha: dict[str, Any] | None) -> str:
    top = (aha or {}).get("max ED wall segment")
    return f"{top} ({segment_row(aha, top)['name']})" if top else ""


#: aha.csv: one row per study and AHA segment
AHA_COLUMNS = ("study", "segment", "name", "present", "ED wall (mm)", "ES wall (mm)", "thickening (mm)",
               "thickening (%)", "orientation")


def aha_csv(cases: list[dict[str, Any]]) -> str:
    """Per study and AHA segment (:mod:`cmrseg.measures.aha`): ED and ES wall thickness,
    absolute and relative thickening; empty cells where a segment was not measured."""
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(AHA_COLUMNS)
    for c in cases:
        aha = c.get("aha") if c.get("status") == "ok" else None
        for n, row in sorted(((int(k), v) for k, v in (aha or {}).get("segments", {}).items())):
            w.writerow([c["study"], n, row["name"], "yes" if row["present"] else "no",
                        *[_number(row.get(k)) for k in ("ED (mm)", "ES (mm)", "thickening (mm)", "thickening (%)")],
                        aha["orientation"]])
    return buf.getvalue()


def aha_slices_csv(cases: list[dict[str, Any]]) -> str:
    """Per study, phase, slice (k in the mask file) and AHA segment: the wall thickness on that
    slice (mm), the slice's ring, and the slice whose RV insertion points oriented it."""
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["study", "phase", "slice k", "ring", "segment", "wall (mm)", "insertion points from slice k"])
    for c in cases:
        for row in ((c.get("aha") or {}).get("slices") or []) if c.get("status") == "ok" else []:
            w.writerow([c["study"], row["phase"], row["slice"], row["ring"], row["segment"],
                        _number(row["thickness (mm)"]), "" if row["insertion from slice"] is None
                        else row["insertion from slice"]])
    return buf.getvalue()


def _number(v) -> str:
    return f"{v:.2f}" if isinstance(v, (int, float)) and np.isfinite(v) else ""


def volumes_csv(cases: list[dict[str, Any]]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["study", "frame", *STRUCTURE_COLUMNS.values(), "LV (voxels)"])
    for c in cases:
        if c.get("status") != "ok":
            continue
        vols = c.get("frame_volumes_ml") or [None] * c["frames"]
        for t, v in enumerate(vols):
            row = [f"{v[k]:.2f}" if v else "" for k in STRUCTURE_COLUMNS]
            w.writerow([c["study"], t + 1, *row, c["lv_voxels"][t]])
    return buf.getvalue()


def _summarised(key: str, value: Any) -> Any:
    """A record's value as summary.json keeps it: the AHA analysis without its per-slice rows
    (those are in aha_slices.csv and the study's record)."""
    return {k: v for k, v in value.items() if k != "slices"} if key == "aha" and value else value


#: what summary.json keeps of each study record
SUMMARY_KEYS = ("status", "qc", "qc_reasons", "estimated_errors", "likely_errors", "error_features", "findings",
                "uncertainty", "seconds", "model_seconds", "outputs", "output_frames", "qc_frames", "phase_frames",
                "error", "measures", "note", "ed_frame", "es_frame", "flags", "error_calibration", "aha", "bullseye",
                "second_opinion")


def rebuild_reports(out: Path, info: dict[str, Any]) -> dict[str, Any]:
    """measures.csv, volumes.csv, summary.json and report.html from every study record."""
    cases = study_records(out)
    write_text(out / "measures.csv", measures_csv(cases))
    write_text(out / "volumes.csv", volumes_csv(cases))
    write_text(out / "aha.csv", aha_csv(cases))
    write_text(out / "aha_slices.csv", aha_slices_csv(cases))
    shards = sorted({r["shard"] for r in shard_records(out)} | {info["shard"]})
    summary = {**info, "shards": shards, "label_map": label_map_json(),
               "studies": {c["study"]: {k: _summarised(k, c.get(k)) for k in SUMMARY_KEYS} for c in cases},
               "failed": [c["study"] for c in cases if c.get("status") != "ok"]}
    write_json(out / "summary.json", summary)
    write_html(out, cases, info, out / "report.html")
    return summary


def qc_line(cases: dict[str, dict[str, Any]]) -> str:
    """One console line: the quality-control verdicts of every study in the output folder, and
    the studies that failed QC by name (the ones to look at first)."""
    verdicts = [c.get("qc") for c in cases.values() if c.get("status") == "ok"]
    counts = ", ".join(f"{verdicts.count(v)} {v}" for v in ("ok", "review", "fail") if v in verdicts)
    failed = sorted(name for name, c in cases.items() if c.get("status") == "ok" and c.get("qc") == "fail")
    opinions = [c["second_opinion"] for c in cases.values() if c.get("status") == "ok" and c.get("second_opinion")]
    kept = sum(o["kept"] == "standardised" for o in opinions)
    return (f"quality control: {counts or 'no study segmented'}"
            + (f"; QC failed: {', '.join(failed[:10])}{' ...' if len(failed) > 10 else ''}" if failed else "")
            + (f"; second opinion on standardised intensities for {len(opinions)}, kept for {kept}" if opinions else ""))
