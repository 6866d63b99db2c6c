"""The one label map of the project (ACDC's convention) and helpers around it.

Every output file and summary states this map. Data labelled otherwise (M&Ms, for one, has
LV=1, MYO=2, RV=3) is read through ``--labels`` (:func:`parse_labels`, :func:`relabel`), and a
labelled set whose anatomy says its RV and LV values are swapped is refused
(:func:`swapped_ventricles`) rather than trained or scored with the ventricles exchanged.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from cmrseg.errors import InputError

BACKGROUND, RV, MYO, LV = 0, 1, 2, 3
#: label value -> name, in label order.
LABEL_MAP: dict[int, str] = {BACKGROUND: "background", RV: "RV", MYO: "MYO", LV: "LV"}
#: foreground class names in label order (RV=1, MYO=2, LV=3).
CLASS_NAMES: tuple[str, ...] = ("RV", "MYO", "LV")
NUM_CLASSES = 4  # including background


def label_map_json() -> dict[str, str]:
    """The label map as written into every summary (JSON keys must be strings)."""
    return {str(k): v for k, v in LABEL_MAP.items()}


#: how ``--labels`` writes this project's own convention
ACDC_LABELS = "RV=1,MYO=2,LV=3"


def parse_labels(text: str) -> np.ndarray:
    """``"LV=1,MYO=2,RV=3"`` (the data's value of each structure) -> a lookup table ``[256]``
    from the data's values to this project's, values not named mapping to 0 (data holding such a
    value is refused by :func:`to_project_labels`). Raises ``ValueError`` with the problem."""
    lut = np.zeros(256, dtype=np.uint8)
    seen: dict[str, int] = {}
    for part in text.split(","):
        name, sep, value = part.partition("=")
        name = name.strip().upper()
        if not sep or name not in CLASS_NAMES:
            raise ValueError(f"--labels {text!r}: expected NAME=VALUE for each of {', '.join(CLASS_NAMES)}, "
                             f"e.g. {ACDC_LABELS}")
        if not value.strip().isdigit() or not 0 < int(value) < 256:
            raise ValueError(f"--labels {text!r}: {name}'s value {value.strip()!r} is not a label value 1-255")
        if name in seen or int(value) in seen.values():
            raise ValueError(f"--labels {text!r}: {name} or its value {int(value)} given twice")
        seen[name] = int(value)
    if set(seen) != set(CLASS_NAMES):
        raise ValueError(f"--labels {text!r}: give a value for each of {', '.join(CLASS_NAMES)}")
    for name, value in seen.items():
        lut[value] = CLASS_NAMES.index(name) + 1
    return lut


def label_table(text: str, where) -> np.ndarray:
    """:func:`parse_labels`, its problem raised as :class:`~cmrseg.errors.InputError` naming ``where``."""
    try:
        return parse_labels(text)
    except ValueError as exc:
        raise InputError(where, str(exc)) from None


def relabel(label: np.ndarray, lut: np.ndarray) -> np.ndarray:
    """A mask in the data's values -> this project's (:func:`parse_labels`)."""
    return lut[np.asarray(label, dtype=np.uint8)]


def to_project_labels(label: np.ndarray, where, given: str | None = None) -> np.ndarray:
    """A label map as read (uint8, :func:`cmrseg.data.validation.check_label`) in the values of
    its convention ``given`` (``--labels``; ``None``: this project's) -> this project's values.
    A value the convention does not name is refused with :class:`~cmrseg.errors.InputError`
    naming ``where``, rather than read as background: a structure left out (a scar label, a
    value mistyped) would otherwise vanish from training and scoring in silence."""
    lut = label_table(given or ACDC_LABELS, where)
    values = np.unique(label)
    unnamed = values[(values != 0) & (lut[values] == 0)]
    if unnamed.size:
        if given is None:
            raise InputError(where, f"label values {unnamed.tolist()} outside 0..3 (0 bg, 1 RV, 2 MYO, 3 LV); data "
                                    "labelled otherwise: give its values with --labels, e.g. --labels LV=1,MYO=2,RV=3")
        raise InputError(where, f"label values {unnamed.tolist()} not named by --labels {given}: "
                                f"each value must be one of its structures or 0")
    return label if given is None else relabel(label, lut)


def cine_phases(masks: list[np.ndarray]) -> list[str | None]:
    """``ED`` / ``ES`` / ``None`` for each labelled frame of one cine (masks in this project's
    values): the frame with the most LV cavity voxels is end-diastole and the one with the
    fewest end-systole, as ``cmrseg segment`` picks them from its own masks. With fewer than
    two frames, or all of one size, every frame is ``None``."""
    lv = [int((np.asarray(m) == LV).sum()) for m in masks]
    phases: list[str | None] = [None] * len(masks)
    if len(masks) >= 2 and max(lv) > min(lv):
        phases[int(np.argmax(lv))], phases[int(np.argmin(lv))] = "ED", "ES"
    return phases


def _myocardium_share(label: np.ndarray, value: int) -> float | None:
    """Share of the pixels bordering ``value`` in-plane that are myocardium; ``None`` without it."""
    region = label == value
    if not region.any():
        return None
    border = ndimage.binary_dilation(region, structure=np.ones((1, 3, 3), dtype=bool)) & ~region
    return float((label[border] == MYO).mean()) if border.any() else None


def swapped_ventricles(labels: list[np.ndarray]) -> int:
    """How many of ``labels`` (masks in this project's values) look like RV and LV swapped:
    the LV cavity is ringed by myocardium (on the 80 ACDC patients of train/ and val/ at least
    99 % of its in-plane border is, of the RV's at most 43 %), so a volume whose "RV" borders
    more myocardium than its "LV" has the two exchanged."""
    swapped = 0
    for label in labels:
        rv, lv = _myocardium_share(label, RV), _myocardium_share(label, LV)
        swapped += int(rv is not None and lv is not None and rv > lv)
    return swapped


def check_convention(labels: list[np.ndarray], where, given: str | None = None) -> None:
    """Raise :class:`~cmrseg.errors.InputError` naming ``where`` when most of ``labels`` (in
    this project's values, after ``--labels given``) have RV and LV swapped."""
    swapped = swapped_ventricles(labels)
    if swapped and swapped * 2 >= len(labels):
        lut = parse_labels(given or ACDC_LABELS)
        value = {CLASS_NAMES[int(lut[v]) - 1]: v for v in range(1, 256) if lut[v]}
        hint = f"LV={value['RV']},MYO={value['MYO']},RV={value['LV']}"
        raise InputError(where, f"RV and LV look swapped in {swapped} of {len(labels)} label volumes (the label read "
                                f"as RV is ringed by myocardium): give the data's values with --labels, e.g. "
                                f"--labels {hint} (read now as {given or ACDC_LABELS})")
