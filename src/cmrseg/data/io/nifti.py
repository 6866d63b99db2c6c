"""NIfTI short-axis stacks (3D) and cines (4D), read with nibabel.

A NIfTI array ``data[i, j, k(, t)]`` becomes our ``[S, H, W]`` = ``data[i, j, k].T``; the
affine is kept as is (it already maps (i, j, k) to RAS+ mm).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cmrseg.atomic import atomic_path
from cmrseg.data.io.common import strip_suffix
from cmrseg.data.orientation import reverse_affine, should_reverse
from cmrseg.data.validation import check_image, check_label, check_size, check_spacing
from cmrseg.data.volume import Geometry, Volume
from cmrseg.errors import InputError


def _load(path: Path):
    import nibabel as nib

    if not path.exists():
        raise InputError(path, "file not found")
    try:
        img = nib.load(str(path))
        check_size(img.shape, path)  # from the header, before the data is read
        data = np.asanyarray(img.dataobj)
    except InputError:
        raise
    except Exception as exc:  # nibabel raises many types for corrupt files (gzip, header, EOF)
        raise InputError(path, f"cannot read NIfTI ({type(exc).__name__}: {exc})") from None
    return img, data


def _raw_pixdim(path: Path, img) -> np.ndarray:
    """pixdim[1:4] as stored: nibabel replaces zeros by 1 when it loads a header, which would
    turn an unknown voxel size into 1 mm."""
    from nibabel.openers import ImageOpener

    with ImageOpener(str(path)) as fh:
        raw = type(img.header).from_fileobj(fh, check=False)
    return np.asarray(raw["pixdim"][1:4], dtype=float)


@dataclass(frozen=True)
class NiftiGrid:
    """Where a NIfTI file's voxels are: the (slice, row, column) spacing in mm and its source
    (``header`` or ``option``), the voxel -> RAS+ affine those voxels have (the file's own
    unless the header was read as ITK reads it) and what the reader decided (:attr:`Geometry.notes`)."""

    spacing: tuple[float, float, float]
    source: str
    affine: np.ndarray
    notes: tuple[str, ...] = ()


#: relative agreement asked of two voxel sizes that describe the same axis
SIZE_RTOL = 0.01


def nifti_grid(path: Path, img, override=None) -> NiftiGrid:
    """The file's voxel grid: ``override`` (slice, row, column mm) when given, else the header's
    pixdim, checked for plausibility and against the affine's own voxel sizes.

    * pixdim and the affine agree: the file as it is.
    * The affine (sform) holds directions only (unit columns) and pixdim the voxel size, as the
      ACDC release's files do (qform_code 0, sform_code 2, diag(-1, -1, 1)): read as ITK reads
      every NIfTI (SimpleITK, nnU-Net, MONAI's ITK reader), spacing from pixdim and direction
      from the normalised matrix, and said in the notes.
    * Any other disagreement is ambiguous and refused, asking for ``--spacing``; so is a
      singular affine whose axes all have a length (two along one direction: the slice order
      and the output geometry are unknown), whatever ``override`` says; an axis of length 0 is
      an unknown voxel size, which ``override`` supplies.

    The slice spacing is the distance between slice planes, which differs from the length of
    the affine's slice axis when the grid is sheared (noted too)."""
    from nibabel.affines import voxel_sizes

    affine = np.asarray(img.affine, dtype=float)
    sizes = np.asarray(voxel_sizes(affine)[:3], dtype=float)
    det = abs(np.linalg.det(affine[:3, :3]))
    if sizes.min() > 0 and det <= 1e-3 * float(np.prod(sizes)):
        raise InputError(path, f"the affine (sform/qform) is singular: its axes {np.round(affine[:3, :3], 3).tolist()} "
                               "do not span 3D, so the orientation is unknown; fix the file's header")
    if override is not None:
        spacing = check_spacing(override, path, "option", allow_unknown_slice=True)
        return _with_sizes(affine, spacing, sizes, "option", ())
    pixdim = _raw_pixdim(path, img)
    check_spacing(pixdim[::-1], path, "header pixdim")
    spacing = (float(pixdim[2]), float(pixdim[1]), float(pixdim[0]))
    if np.allclose(sizes, pixdim, rtol=SIZE_RTOL):
        return _with_sizes(affine, spacing, sizes, "header", ())
    if np.allclose(sizes, 1.0, rtol=SIZE_RTOL):
        note = (f"voxel size {' x '.join(f'{v:g}' for v in np.round(pixdim, 4))} mm from the header's pixdim; its "
                "sform holds directions only (unit voxels): read as ITK reads it (SimpleITK, nnU-Net)")
        return _with_sizes(affine, spacing, sizes, "header", (note,))
    raise InputError(path, f"header pixdim {np.round(pixdim, 3).tolist()} mm and affine voxel sizes "
                           f"{np.round(sizes, 3).tolist()} mm disagree; give the voxel size with "
                           "--spacing SX SY SZ (mm)")


def _with_sizes(affine: np.ndarray, spacing: tuple[float, float, float], sizes: np.ndarray, source: str,
                notes: tuple[str, ...]) -> NiftiGrid:
    """The grid whose axes keep ``affine``'s directions with ``spacing``'s lengths (an unknown,
    NaN slice spacing keeps the file's), its slice spacing the distance between slice planes."""
    lengths = np.array([spacing[2], spacing[1], spacing[0]], dtype=float)
    lengths = np.where(np.isfinite(lengths), lengths, sizes)
    out = affine.copy()
    if sizes.min() > 0 and not np.allclose(sizes, lengths, rtol=1e-6):
        out[:3, :3] = affine[:3, :3] / sizes * lengths
    if not (np.isfinite(spacing[0]) and sizes.min() > 0):
        return NiftiGrid(spacing, source, out, notes)
    in_plane = np.linalg.norm(np.cross(out[:3, 0], out[:3, 1]))
    between = abs(np.linalg.det(out[:3, :3])) / in_plane
    if abs(between - lengths[2]) > SIZE_RTOL * lengths[2]:
        notes += (f"sheared grid: the slice planes are {between:.2f} mm apart, the slice axis {lengths[2]:.2f} mm "
                  "long; volumes use the distance between the planes",)
        spacing = (float(between), spacing[1], spacing[2])
    return NiftiGrid(spacing, source, out, notes)


def read_nifti(
    path: str | Path,
    slice_order: str = "auto",
    spacing_override: tuple[float, float, float] | None = None,
) -> list[Volume]:
    """Read a 3D stack (one volume) or a 4D cine (one volume per frame).

    Args:
        path: ``.nii`` or ``.nii.gz`` file.
        slice_order: see :mod:`cmrseg.data.orientation`.
        spacing_override: (slice, row, column) mm replacing the header's pixdim.
    """
    path = Path(path)
    img, data = _load(path)
    check_image(data, path, allow_4d=True, inplane_axes=(0, 1))
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    grid = nifti_grid(path, img, spacing_override)
    reverse = should_reverse(grid.affine, slice_order)
    num_slices = data.shape[2]
    geometry = Geometry(
        spacing=grid.spacing,
        affine=reverse_affine(grid.affine, num_slices) if reverse else grid.affine,
        spacing_source=grid.source,
        slices_reversed=reverse,
        header=img.header.copy(),
        notes=grid.notes,
    )
    name = strip_suffix(path)
    frames = [data] if data.ndim == 3 else [data[..., t] for t in range(data.shape[3])]
    volumes = []
    for t, frame in enumerate(frames):
        stack = np.ascontiguousarray(frame.transpose(2, 1, 0), dtype=np.float32)
        if reverse:
            stack = np.ascontiguousarray(stack[::-1])
        meta = {"frame_index": t, "num_frames": len(frames)} if len(frames) > 1 else {}
        volumes.append(Volume(stack, geometry, path, name, "nifti", meta=meta))
    return volumes


def _label_frames(path: Path, data: np.ndarray) -> list[np.ndarray]:
    """``[S, H, W]`` label arrays of a 3D map (one) or a 4D label cine (one per frame)."""
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if data.ndim == 3:
        return [data.transpose(2, 1, 0)]
    if data.ndim == 4:
        return [data[..., t].transpose(2, 1, 0) for t in range(data.shape[3])]
    raise InputError(path, f"expected a 3D label or a 4D label cine, got shape {tuple(data.shape)}")


def read_nifti_labels(path: str | Path, like: list[Volume]) -> list[np.ndarray]:
    """The ground-truth masks stored beside an image read as ``like`` (its frames), one per
    frame in ``like``'s slice order: a 3D map for a 3D stack, a 4D label cine for a 4D cine
    (frames the experts did not label, all zero, as in the M&Ms data, stay all zero)."""
    path = Path(path)
    _, data = _load(path)
    frames = _label_frames(path, data)
    if len(frames) != len(like):
        raise InputError(path, f"{len(frames)} label frame(s) for an image of {len(like)}")
    out = []
    for label, vol in zip(frames, like):
        label = check_label(label, vol.shape, path)
        out.append(np.ascontiguousarray(label[::-1] if vol.geometry.slices_reversed else label))
    return out


def read_nifti_label(path: str | Path, like: Volume) -> np.ndarray:
    """Read a ground-truth mask stored beside ``like``'s image (one 3D stack), in ``like``'s slice order."""
    return read_nifti_labels(path, [like])[0]


def read_nifti_label_volumes(path: str | Path, slice_order: str = "auto") -> list[Volume]:
    """A NIfTI label map alone (prediction or truth) as :class:`Volume` s whose ``label`` is
    the mask (base -> apex), ``image`` empty, spacing from the header: one for a 3D map, one
    per frame of a 4D label cine (``meta``: ``frame_index``, ``num_frames``)."""
    path = Path(path)
    img, data = _load(path)
    frames = [check_label(f, f.shape, path) for f in _label_frames(path, data)]
    grid = nifti_grid(path, img)
    num_slices = frames[0].shape[0]
    reverse = should_reverse(grid.affine, slice_order)
    geometry = Geometry(spacing=grid.spacing, affine=reverse_affine(grid.affine, num_slices) if reverse else grid.affine,
                        spacing_source="header", slices_reversed=reverse, header=img.header.copy(), notes=grid.notes)
    name = strip_suffix(path)
    volumes = []
    for t, label in enumerate(frames):
        meta = {"frame_index": t, "num_frames": len(frames)} if len(frames) > 1 else {}
        volumes.append(Volume(np.zeros((num_slices, 0, 0), dtype=np.float32), geometry, path, name, "nifti",
                              label=np.ascontiguousarray(label[::-1] if reverse else label), meta=meta))
    return volumes


def write_nifti_mask(mask: np.ndarray, like: Volume, path: str | Path) -> Path:
    """Write ``mask`` (``[S, H, W]``, or ``[T, S, H, W]`` for a cine) with ``like``'s affine,
    header and shape, in the file's original slice order. Atomic."""
    import nibabel as nib

    path = Path(path)
    mask = np.asarray(mask, dtype=np.uint8)
    geom = like.geometry
    if geom.slices_reversed:
        mask = mask[..., ::-1, :, :]
    data = mask.transpose(2, 1, 0) if mask.ndim == 3 else mask.transpose(3, 2, 1, 0)
    header = geom.header.copy() if geom.header is not None else None
    if header is not None:  # the input's own header and affine, even where it was read as ITK reads it
        affine = header.get_best_affine()
    else:
        affine = reverse_affine(geom.affine, mask.shape[-3]) if geom.slices_reversed else geom.affine
    img = nib.Nifti1Image(np.ascontiguousarray(data), affine, header=header)
    if header is None:  # made from DICOM: millimetres, and the cine's frame interval as the time step
        img.header.set_xyzt_units("mm", "msec")
        if data.ndim == 4:
            zooms = list(img.header.get_zooms())
            zooms[3] = float(like.meta.get("frame_interval_ms") or 1.0)
            img.header.set_zooms(zooms)
    img.set_data_dtype(np.uint8)
    img.header.set_slope_inter(1.0, 0.0)
    img.header["descrip"] = b"cmrseg mask 0bg 1RV 2MYO 3LV"
    with atomic_path(path) as tmp:
        nib.save(img, str(tmp))
    return path


def write_nifti_image(stack: np.ndarray, affine: np.ndarray, path: str | Path, spacing=None) -> Path:
    """Write an image (``[S, H, W]`` or ``[T, S, H, W]``) with ``affine``. Used by the
    phantom and the tests; float32 unless the array is an integer type."""
    import nibabel as nib

    stack = np.asarray(stack)
    data = stack.transpose(2, 1, 0) if stack.ndim == 3 else stack.transpose(3, 2, 1, 0)
    img = nib.Nifti1Image(np.ascontiguousarray(data), np.asarray(affine, dtype=float))
    if stack.ndim == 4:
        zooms = list(img.header.get_zooms())
        zooms[3] = 1.0
        img.header.set_zooms(zooms)
    img.header.set_xyzt_units("mm", "msec")
    with atomic_path(path) as tmp:
        nib.save(img, str(tmp))
    return Path(path)
