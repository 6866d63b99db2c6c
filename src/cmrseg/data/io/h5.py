"""The SSL4MIS h5 layout: one file per volume with datasets ``image`` [S, H, W] and
optionally ``label``. Spacing is not stored: it comes from ``metadata.csv`` beside the
file, else from an explicit option, else it is unknown (pixel units, said in every output).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from cmrseg.atomic import atomic_path
from cmrseg.data.io.acdc import phase_of_frame, read_manifest, read_metadata_csv
from cmrseg.data.io.common import parse_frame_name, strip_suffix
from cmrseg.data.validation import check_image, check_label, check_size, check_spacing
from cmrseg.data.volume import Geometry, Volume
from cmrseg.errors import InputError
from cmrseg.labels import label_map_json


def read_h5(
    path: str | Path,
    spacing_override: tuple[float, float, float] | None = None,
    with_label: bool = True,
) -> Volume:
    """Read one h5 volume (and its label when present and ``with_label``)."""
    import h5py

    path = Path(path)
    if not path.exists():
        raise InputError(path, "file not found")
    try:
        with h5py.File(path, "r") as fh:
            if "image" not in fh:
                raise InputError(path, f"h5 file has no dataset 'image' (has: {sorted(fh.keys())})")
            check_size(fh["image"].shape, path)
            image = np.asarray(fh["image"][()])
            label = np.asarray(fh["label"][()]) if with_label and "label" in fh else None
    except InputError:
        raise
    except Exception as exc:  # truncated or corrupt HDF5 raises OSError/KeyError variants
        raise InputError(path, f"cannot read HDF5, truncated or corrupt? ({type(exc).__name__}: {exc})") from None
    check_image(image, path)
    image = image.astype(np.float32, copy=False)
    if label is not None:
        label = check_label(label, image.shape, path)

    name = strip_suffix(path)
    meta, spacing, source = h5_side_info(path, spacing_override)
    geometry = Geometry(spacing=spacing, affine=None, spacing_source=source)
    return Volume(image, geometry, path, name, "h5", label=label, meta=meta)


def read_h5_volumes(path: Path, slice_order: str = "auto",
                    spacing: tuple[float, float, float] | None = None) -> list[Volume]:
    """One h5 image as a one-frame list (no geometry to decide the slice order from: ``auto``
    keeps the file's order, ``reverse`` reverses it)."""
    volume = read_h5(path, spacing, with_label=False)
    if slice_order == "reverse":
        volume.image = np.ascontiguousarray(volume.image[::-1])
        volume.geometry.slices_reversed = True
    return [volume]


def read_h5_label_volume(path: Path, slice_order: str = "auto") -> Volume:
    """The ``label`` dataset of an h5 file alone as a :class:`Volume` (``image`` empty), with
    spacing and case facts from the side files of its image (``<case>.h5`` for ``<case>_gt.h5``)."""
    label = read_h5_label(path)
    name = strip_suffix(path)
    name = name[:-3] if name.endswith("_gt") else name
    meta, spacing, source = h5_side_info(path.with_name(name + ".h5"))
    return Volume(np.zeros((label.shape[0], 0, 0), dtype=np.float32), Geometry(spacing=spacing, spacing_source=source),
                  path, name, "h5", label=np.ascontiguousarray(label), meta=meta)


def read_h5_label_volumes(path: Path, slice_order: str = "auto") -> list[Volume]:
    """:func:`read_h5_label_volume` as the format table's label reader (an h5 file holds one frame)."""
    return [read_h5_label_volume(path, slice_order)]


def h5_side_info(path: Path, spacing_override=None) -> tuple[dict, tuple | None, str]:
    """Case facts and spacing of an h5 volume from ``metadata.csv`` / ``manifest.json``
    beside it (or the override): ``(meta, spacing, spacing_source)``."""
    name = strip_suffix(path)
    case, frame = parse_frame_name(name)
    meta: dict = {"patient": case, "frame": frame}
    spacing, source = None, "unknown"
    metadata_csv = path.parent / "metadata.csv"
    if metadata_csv.is_file():
        row = read_metadata_csv(metadata_csv).get(case)
        if row is not None:
            for key in ("group", "height_cm", "weight_kg", "ed_frame", "es_frame", "frames"):
                if key in row:
                    meta[key] = row[key]
            if "pixel_mm" in row and "slice_spacing_mm" in row and spacing_override is None:
                spacing = check_spacing((row["slice_spacing_mm"], row["pixel_mm"], row["pixel_mm"]),
                                        metadata_csv, f"patient {case}'s")
                source = "metadata.csv"
    manifest = path.parent / "manifest.json"
    if manifest.is_file():
        entry = read_manifest(manifest).get(name)
        if entry is not None and entry.get("phase"):
            meta["phase"] = entry["phase"]
    if "phase" not in meta:
        # the h5 layout renames phases to frame01 (ED) / frame02 (ES); cine frame numbers
        # of the release layout are matched against ed_frame / es_frame instead
        meta["phase"] = phase_of_frame(frame, meta)
    if spacing_override is not None:
        spacing, source = check_spacing(spacing_override, path, "option", allow_unknown_slice=True), "option"
    return meta, spacing, source


def read_h5_label(path: str | Path) -> np.ndarray:
    """Only the ``label`` dataset of an h5 file (a prediction or a ground truth)."""
    import h5py

    path = Path(path)
    if not path.exists():
        raise InputError(path, "file not found")
    try:
        with h5py.File(path, "r") as fh:
            if "label" not in fh:
                raise InputError(path, f"h5 file has no dataset 'label' (has: {sorted(fh.keys())})")
            label = np.asarray(fh["label"][()])
    except InputError:
        raise
    except Exception as exc:
        raise InputError(path, f"cannot read HDF5, truncated or corrupt? ({type(exc).__name__}: {exc})") from None
    if label.ndim != 3:
        raise InputError(path, f"expected a 3D label, got shape {tuple(label.shape)}")
    return check_label(label, label.shape, path)


def write_h5_mask(mask: np.ndarray, like: Volume, path: str | Path) -> Path:
    """Write ``mask`` (base -> apex, as read) as dataset ``label`` in the file's own slice
    order (uint8, the input's shape). Atomic."""
    import h5py

    mask = np.asarray(mask, dtype=np.uint8)
    if mask.ndim != 3:
        raise ValueError("an h5 volume has one frame")
    if like.geometry.slices_reversed:
        mask = mask[::-1]
    if mask.shape != like.shape:
        raise ValueError(f"mask shape {mask.shape} != input shape {like.shape}")
    path = Path(path)
    with atomic_path(path) as tmp:
        with h5py.File(tmp, "w") as fh:
            fh.create_dataset("label", data=mask, compression="gzip", compression_opts=4)
            fh.attrs["label_map"] = str(label_map_json())
            fh.attrs["units"] = like.geometry.units
    return path


def write_h5_volume(path: str | Path, image: np.ndarray, label: np.ndarray | None = None) -> Path:
    """Write an image (and label) in the SSL4MIS layout. Used by the phantom and tests."""
    import h5py

    with atomic_path(path) as tmp:
        with h5py.File(tmp, "w") as fh:
            fh.create_dataset("image", data=np.asarray(image, dtype=np.float32), compression="gzip")
            if label is not None:
                fh.create_dataset("label", data=np.asarray(label, dtype=np.uint8), compression="gzip")
    return Path(path)
