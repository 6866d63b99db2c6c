"""Synthetic multi-slice short-axis cine phantom with known anatomy and volumes.

Each case is a stack of parallel short-axis slices through a left ventricle modelled as a
truncated half-ellipsoid (cavity inside a myocardial ring that closes at the apex) and a
right-ventricular crescent wrapped around the septum that is large at the base and vanishes
before the apex. Slices above the base show atrium-like blood pools (bright, unlabelled:
the confounder of the basal RV), the basal slice has one beside the RV, and a slice below
the apex shows no heart. Images get a body outline, lungs, a liver, a bias field, Rician
noise and a random in-plane pose; the NIfTI affine is oblique with anisotropic voxels.

ED and ES differ by cavity size (myocardial area is conserved, so the wall thickens), and a
cine moves smoothly between them. ``truth.csv`` gives each case's reference volumes: LV
cavity and myocardium in closed form (ellipse areas x slice spacing), RV from the same
continuous shapes by 16x16 supersampling. Voxel-counted volumes of the rasterised masks
agree with them to within about 1-2 %.

Used by tests and the demo; never a substitute for real data in reported results.
"""

from __future__ import annotations

import csv
import io
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from cmrseg.atomic import write_json, write_text
from cmrseg.data.io.acdc import write_info_cfg
from cmrseg.data.io.dicom import write_dicom_series
from cmrseg.data.io.h5 import write_h5_volume
from cmrseg.data.io.nifti import write_nifti_image
from cmrseg.labels import LV, MYO, RV
from cmrseg.measures.clinical import STRUCTURE_COLUMNS


@dataclass
class HeartParams:
    """Random anatomy and acquisition of one phantom case (lengths in mm)."""

    pixel_mm: float
    slice_mm: float
    size: tuple[int, int]
    heart_slices: int
    lv_radius: float
    ellipticity: float
    wall: float
    rv_radius: float
    rv_offset: float
    rv_extent: float  # fraction of heart slices (from the base) that contain RV
    pose_deg: float
    center_mm: tuple[float, float]
    es_scale: float
    rv_es_scale: float
    contrast: float
    noise: float
    height_cm: float
    weight_kg: float

    @property
    def num_slices(self) -> int:
        return self.heart_slices + 2  # one above the base, one below the apex


def random_params(rng: np.random.Generator, size: tuple[int, int] | None = None) -> HeartParams:
    pixel = float(rng.uniform(1.3, 1.8))
    if size is None:
        n = int(rng.integers(150, 190))
        size = (n, n + int(rng.integers(-8, 24)))
    return HeartParams(
        pixel_mm=pixel,
        slice_mm=float(rng.choice([8.0, 10.0])),
        size=size,
        heart_slices=int(rng.integers(7, 11)),
        lv_radius=float(rng.uniform(26.0, 33.0)),
        ellipticity=float(rng.uniform(0.85, 1.0)),
        wall=float(rng.uniform(7.0, 10.0)),
        rv_radius=float(rng.uniform(30.0, 38.0)),
        rv_offset=float(rng.uniform(26.0, 32.0)),
        rv_extent=float(rng.uniform(0.6, 0.85)),
        pose_deg=float(rng.uniform(-30.0, 30.0)),
        center_mm=(float(rng.uniform(-15, 15)), float(rng.uniform(-15, 15))),
        es_scale=float(rng.uniform(0.68, 0.8)),
        rv_es_scale=float(rng.uniform(0.75, 0.88)),
        contrast=float(rng.uniform(0.8, 1.1)),
        noise=float(rng.uniform(0.02, 0.05)),
        height_cm=float(rng.uniform(155, 190)),
        weight_kg=float(rng.uniform(50, 100)),
    )


def _profile(z: float) -> float:
    """Radius fraction of a half-ellipsoid at depth z in [0, 1] (0 = base plane)."""
    return math.sqrt(max(0.0, 1.0 - z ** 2))


def _slice_shapes(p: HeartParams, k: int, phase: float):
    """Shape parameters of slice ``k`` (0 = above base) at phase in [0, 1] (0 ED, 1 ES).

    Returns dict of ellipses (cx, cy, a, b) in heart coordinates (mm), or None entries.
    """
    h = k - 1  # heart slice index, 0 = basal slice
    if h < 0 or h >= p.heart_slices:
        return None
    z = (h + 0.5) / p.heart_slices
    scale = 1.0 + (p.es_scale - 1.0) * phase
    # epicardium follows the half-ellipsoid; the cavity closes one wall thickness earlier
    epi_ed = (p.lv_radius + p.wall) * _profile(z)
    cav_ed = max(0.0, epi_ed - p.wall * (1.0 + 0.6 * z))
    if h == p.heart_slices - 1:
        cav_ed = 0.0  # apical cap: myocardium only
    cav = cav_ed * scale
    # conserve myocardial area: epi^2 - cav^2 constant over the cycle
    epi = math.sqrt(max(epi_ed ** 2 - cav_ed ** 2 + cav ** 2, 0.0))
    e = p.ellipticity
    rv = None
    rv_slices = max(1, int(round(p.rv_extent * p.heart_slices)))
    if h < rv_slices:
        zr = (h + 0.5) / rv_slices
        rscale = 1.0 + (p.rv_es_scale - 1.0) * phase
        ra = p.rv_radius * math.sqrt(max(0.0, 1.0 - zr ** 1.5)) * rscale
        if ra > 6.0:
            rv = (-(p.rv_offset + 0.15 * ra), 0.0, ra * 0.75, ra * 1.25)
    return {"cav": (0.0, 0.0, cav, cav * e), "epi": (0.0, 0.0, epi, epi * e), "rv": rv, "basal": h == 0}


def _inside(x, y, ell):
    if ell is None or ell[2] <= 0 or ell[3] <= 0:
        return np.zeros_like(x, dtype=bool)
    cx, cy, a, b = ell
    return ((x - cx) / a) ** 2 + ((y - cy) / b) ** 2 <= 1.0


def _label_slice(x, y, shapes) -> np.ndarray:
    lab = np.zeros(x.shape, dtype=np.uint8)
    if shapes is None:
        return lab
    epi = _inside(x, y, shapes["epi"])
    cav = _inside(x, y, shapes["cav"])
    rv = _inside(x, y, shapes["rv"]) & ~_inside(x, y, _dilate(shapes["epi"], 1.5))
    lab[rv] = RV
    lab[epi] = MYO
    lab[cav] = LV
    return lab


def _dilate(ell, mm):
    return (ell[0], ell[1], ell[2] + mm, ell[3] + mm)


def _grid(p: HeartParams, ss: int, rows: tuple[int, int] | None = None, cols: tuple[int, int] | None = None):
    """Heart-frame coordinates (mm) of each (sub)pixel centre, shape [H*ss, W*ss]; only those
    of the pixels ``rows`` x ``cols`` (index ranges, end excluded) when given."""
    h, w = p.size
    r0, r1 = rows or (0, h)
    c0, c1 = cols or (0, w)
    ys = (np.arange(r0 * ss, r1 * ss) + 0.5) / ss - h / 2.0
    xs = (np.arange(c0 * ss, c1 * ss) + 0.5) / ss - w / 2.0
    yy, xx = np.meshgrid(ys * p.pixel_mm, xs * p.pixel_mm, indexing="ij")
    xx, yy = xx - p.center_mm[0], yy - p.center_mm[1]
    t = math.radians(p.pose_deg)
    return xx * math.cos(t) + yy * math.sin(t), -xx * math.sin(t) + yy * math.cos(t), xx, yy


def render_volume(p: HeartParams, phase: float, rng: np.random.Generator, ss: int = 2):
    """(image float32 [S, H, W], label uint8 [S, H, W]) at a cardiac phase in [0, 1]."""
    h, w = p.size
    hx, hy, bx, by = _grid(p, ss)
    cx, cy, _, _ = _grid(p, 1)
    body = ((bx / (0.45 * w * p.pixel_mm)) ** 2 + (by / (0.4 * h * p.pixel_mm)) ** 2) <= 1.0
    lungs = _inside(hx, hy, (-70.0, -25.0, 35.0, 55.0)) | _inside(hx, hy, (75.0, -20.0, 35.0, 55.0))
    # smooth multiplicative bias field, fixed per case
    yy, xx = np.meshgrid(np.linspace(-1, 1, h), np.linspace(-1, 1, w), indexing="ij")
    c = rng.uniform(-0.25, 0.25, size=4)
    bias = np.exp(c[0] * xx + c[1] * yy + c[2] * xx * yy + c[3] * (xx ** 2 - yy ** 2))
    images, labels = [], []
    for k in range(p.num_slices):
        shapes = _slice_shapes(p, k, phase)
        inten = np.where(body, 0.42, 0.0)
        inten = np.where(lungs & body, 0.06, inten)
        liver = _inside(hx, hy, (40.0, 70.0 - 6.0 * k, 60.0, 40.0))
        inten = np.where(liver & body & (k >= p.num_slices // 2), 0.55, inten)
        if shapes is not None:
            lab_ss = _label_slice(hx, hy, shapes)
            inten = np.where(lab_ss == MYO, 0.2, inten)
            inten = np.where((lab_ss == LV) | (lab_ss == RV), 0.85, inten)
            if shapes["basal"] and shapes["rv"] is not None:  # right atrium beside the basal RV
                rv = shapes["rv"]
                atrium = _inside(hx, hy, (rv[0] - 0.6 * rv[2], rv[1] + 1.1 * rv[3], 16.0, 12.0))
                inten = np.where(atrium & (lab_ss == 0), 0.8, inten)
        elif k == 0:  # above the base: atria and outflow, unlabelled
            for ell in ((-30.0, 8.0, 22.0, 18.0), (12.0, -6.0, 20.0, 16.0), (-2.0, 24.0, 10.0, 10.0)):
                inten = np.where(_inside(hx, hy, ell), 0.82, inten)
        inten = inten * p.contrast
        # anti-aliased image: average the supersampled intensities
        img = inten.reshape(h, ss, w, ss).mean(axis=(1, 3))
        images.append(img)
        labels.append(_label_slice(cx, cy, shapes))
    image = np.stack(images) * bias[None]
    sigma = p.noise
    n1 = rng.normal(0, sigma, image.shape)
    n2 = rng.normal(0, sigma, image.shape)
    image = np.sqrt((image + n1) ** 2 + n2 ** 2)  # Rician magnitude noise
    return image.astype(np.float32), np.stack(labels).astype(np.uint8)


def _pixel_window(p: HeartParams, ell) -> tuple[tuple[int, int], tuple[int, int]]:
    """(rows, cols): the pixels that can hold a point of the heart-frame ellipse ``ell``
    (its bounding box turned into the image, one pixel of margin), clipped to the image."""
    cx, cy, a, b = ell
    t = math.radians(p.pose_deg)
    corners = [(cx + sx * a, cy + sy * b) for sx in (-1, 1) for sy in (-1, 1)]
    # heart frame -> image frame (mm from the image centre), the inverse of _grid's turn
    xs = [hx * math.cos(t) - hy * math.sin(t) + p.center_mm[0] for hx, hy in corners]
    ys = [hx * math.sin(t) + hy * math.cos(t) + p.center_mm[1] for hx, hy in corners]
    h, w = p.size

    def span(vals, n):
        lo, hi = min(vals) / p.pixel_mm + n / 2.0, max(vals) / p.pixel_mm + n / 2.0
        return max(0, math.floor(lo) - 1), min(n, math.ceil(hi) + 1)

    return span(ys, h), span(xs, w)


def reference_volumes(p: HeartParams, phase: float, ss: int = 16) -> dict[str, float]:
    """Continuous-shape volumes (mL): LV and MYO in closed form, RV by supersampling (the
    RV's own pixels only: the rest of the image holds none of it)."""
    lv = myo = rv = 0.0
    px_area = (p.pixel_mm / ss) ** 2
    for k in range(p.num_slices):
        s = _slice_shapes(p, k, phase)
        if s is None:
            continue
        cav, epi = s["cav"], s["epi"]
        lv += math.pi * cav[2] * cav[3] * p.slice_mm
        myo += math.pi * (epi[2] * epi[3] - cav[2] * cav[3]) * p.slice_mm
        if s["rv"] is not None:
            hx, hy, _, _ = _grid(p, ss, *_pixel_window(p, s["rv"]))
            m = _inside(hx, hy, s["rv"]) & ~_inside(hx, hy, _dilate(epi, 1.5))
            rv += m.sum() * px_area * p.slice_mm
    return {"LV": lv / 1000.0, "MYO": myo / 1000.0, "RV": rv / 1000.0}


def oblique_affine(p: HeartParams, rng: np.random.Generator) -> np.ndarray:
    """Voxel (i, j, k) -> RAS+ affine whose slice axis points roughly to the apex."""
    apex = np.array([-1.0, 1.0, -1.0]) / math.sqrt(3.0) + rng.normal(0, 0.1, 3)
    apex /= np.linalg.norm(apex)
    helper = np.array([0.0, 0.0, 1.0])
    u = np.cross(helper, apex)
    u /= np.linalg.norm(u)
    v = np.cross(apex, u)
    aff = np.eye(4)
    aff[:3, 0] = u * p.pixel_mm
    aff[:3, 1] = v * p.pixel_mm
    aff[:3, 2] = apex * p.slice_mm
    aff[:3, 3] = rng.uniform(-50, 50, 3)
    return aff


def regional_wall(angle_deg: np.ndarray, thickening: float = 0.0) -> np.ndarray:
    """The wall thickness (mm) of :func:`regional_heart` at display angles (degrees; x right, y
    up; the septum at 180, anterior at 90): 9 mm with a septum 3 mm thicker and the lateral
    wall 3 mm thinner, a thin infarct-like inferolateral wall (2.9 mm at 330 degrees), times
    ``1 + thickening``."""
    a = np.radians(np.asarray(angle_deg, dtype=float))
    wall = 9.0 + 3.0 * np.cos(a - np.pi) - 3.5 * np.exp(-((np.degrees(a) % 360.0 - 330.0) / 18.0) ** 2)
    return wall * (1.0 + thickening)


def regional_heart(size: int = 160, slices: int = 12, pixel_mm: float = 1.5, slice_mm: float = 8.0,
                   thickening: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """A labelled stack (base -> apex) whose LV wall has a known thickness at every angle
    (:func:`regional_wall`), for the AHA segment analysis (issue 37): an LV cavity on the first
    ``slices - 2`` slices, narrowing to the apex; the apical cap (myocardium, no cavity) on the
    next; nothing on the last. The RV is a 10-mm shell against the septum from 120 to 240
    degrees (its insertion points), shown as the standard view shows it, from the apex, anterior
    up. Returns (mask ``[S, H, W]`` uint8, voxel (column, row, slice) -> RAS+ affine: columns
    to the patient's left, rows to posterior)."""
    yy, xx = np.mgrid[0:size, 0:size].astype(float)
    x, y = (xx - size / 2.0) * pixel_mm, -(yy - size / 2.0) * pixel_mm
    radius, angle = np.hypot(x, y), np.degrees(np.arctan2(y, x)) % 360.0
    wall = regional_wall(angle, thickening)
    mask = np.zeros((slices, size, size), np.uint8)
    cavity_slices = slices - 2
    for s in range(cavity_slices):
        endo = 26.0 * (1.0 - 0.6 * s / cavity_slices) * (1.0 - 0.35 * thickening)
        epi = endo + wall
        septal = (angle >= 120.0) & (angle < 240.0)
        mask[s][(radius >= epi) & (radius < epi + 10.0) & septal] = RV
        mask[s][(radius >= endo) & (radius < epi)] = MYO
        mask[s][radius < endo] = LV
    mask[cavity_slices][radius < 10.0] = MYO
    affine = np.diag([-pixel_mm, -pixel_mm, slice_mm, 1.0])
    return mask, affine


GROUPS = ("NOR", "DCM", "HCM", "MINF", "RV")


def generate(out_dir: str | Path, patients: int = 8, val_patients: int = 2, frames: int = 10, seed: int = 0,
             size: tuple[int, int] | None = None, dicom: bool = False, progress: bool = True) -> Path:
    """Write a phantom cohort to ``out_dir``:

    * ``acdc/patientNNN/``: ACDC release layout (``Info.cfg``, ``_4d``, ED/ES frames + ``_gt``);
    * ``h5/train/``, ``h5/val/``: SSL4MIS layout with ``metadata.csv`` and ``manifest.json``;
    * ``dicom/patientNNN/`` (with ``dicom=True``): the cine as a DICOM series;
    * ``truth.csv``: reference volumes and EF per case.
    """
    out = Path(out_dir)
    rng = np.random.default_rng(seed)
    es_frame = frames // 2 + 1
    meta_rows: dict[str, list] = {"train": [], "val": []}
    manifests: dict[str, list] = {"train": [], "val": []}
    truth = io.StringIO()
    tw = csv.writer(truth)
    tw.writerow(["patient", "split", "phase", *(STRUCTURE_COLUMNS[k] for k in ("LV", "MYO", "RV")), "pixel_mm", "slice_mm"])
    for n in tqdm(range(patients + val_patients), desc="phantom", disable=not progress, leave=False):
        p = random_params(rng, size)
        affine = oblique_affine(p, rng)
        pid, split, group = f"patient{n + 1:03d}", "train" if n < patients else "val", GROUPS[n % len(GROUPS)]
        cine_arr = _write_case(out, pid, split, group, p, affine, frames, es_frame, rng, manifests[split], tw)
        meta_rows[split].append([pid, group, frames, 1, es_frame, p.num_slices, f"{p.height_cm:.1f}",
                                 f"{p.weight_kg:.1f}", f"{p.pixel_mm:.6f}", f"{p.slice_mm:.1f}"])
        if dicom:
            write_dicom_series(cine_arr, affine, out / "dicom" / pid, description=f"{pid} SAX cine")
    for split in ("train", "val"):
        if not meta_rows[split]:
            continue
        buf = io.StringIO()
        w = csv.writer(buf)
        w.writerow(["patient", "group", "frames", "ed_frame", "es_frame", "slices", "height_cm", "weight_kg",
                    "pixel_mm", "slice_spacing_mm"])
        w.writerows(meta_rows[split])
        write_text(out / "h5" / split / "metadata.csv", buf.getvalue())
        write_json(out / "h5" / split / "manifest.json", manifests[split])
    write_text(out / "truth.csv", truth.getvalue())
    write_json(out / "phantom.json", {"patients": patients, "val_patients": val_patients, "frames": frames, "seed": seed,
                                      "es_frame": es_frame, "note": "synthetic phantom; not real data"})
    return out


def _write_case(out: Path, pid: str, split: str, group: str, p: HeartParams, affine: np.ndarray, frames: int,
                es_frame: int, rng: np.random.Generator, manifest: list, truth) -> np.ndarray:
    """One case: the ACDC folder (4D cine, ED/ES frames with labels, Info.cfg), its ED/ES h5
    volumes (manifest rows appended) and its reference volumes (rows of ``truth``, a csv
    writer). Returns the cine ``[T, S, H, W]``."""
    pdir = out / "acdc" / pid
    phases = [0.5 - 0.5 * math.cos(2 * math.pi * t / frames) for t in range(frames)]  # 0 at ED, 1 at ES
    rendered = [render_volume(p, ph, rng) for ph in phases]
    cine_arr = np.stack([img for img, _ in rendered])
    write_nifti_image(cine_arr, affine, pdir / f"{pid}_4d.nii.gz")
    write_info_cfg(pdir / "Info.cfg", 1, es_frame, group, p.height_cm, p.weight_kg, frames)
    for frame, phase_name, tag in ((1, "ED", "frame01"), (es_frame, "ES", "frame02")):
        t = frame - 1
        label = rendered[t][1]
        write_nifti_image(cine_arr[t], affine, pdir / f"{pid}_frame{frame:02d}.nii.gz")
        write_nifti_image(label.astype(np.uint8), affine, pdir / f"{pid}_frame{frame:02d}_gt.nii.gz")
        write_h5_volume(out / "h5" / split / f"{pid}_{tag}.h5", cine_arr[t], label)
        manifest.append({"volume": f"{pid}_{tag}", "patient": pid, "phase": phase_name,
                         "slices": p.num_slices, "height": p.size[0], "width": p.size[1]})
        ref = reference_volumes(p, phases[t])
        truth.writerow([pid, split, phase_name, f"{ref['LV']:.4f}", f"{ref['MYO']:.4f}", f"{ref['RV']:.4f}",
                        f"{p.pixel_mm:.6f}", f"{p.slice_mm:.1f}"])
    return cine_arr
