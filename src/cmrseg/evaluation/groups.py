"""Groups of an evaluation from a table of the subjects (``cmrseg evaluate --groups FILE.csv
--group-by COLUMN``): the report's "by group" tables then compare vendors, centres, field
strengths or pathologies, e.g. the M&Ms data's information sheet grouped by its vendor
column. Without it the groups are ACDC's pathology groups, where the data give them.
"""

from __future__ import annotations

import csv
from pathlib import Path

from cmrseg.errors import InputError


def _names(value: str, case: str) -> bool:
    """Whether a table's subject ``value`` names ``case``: the same, or the case's name begins
    with it and an underscore (``A0S9V9`` names ``A0S9V9_sa``, the cine of subject A0S9V9)."""
    return bool(value) and (case == value or case.startswith(value + "_"))


def read_groups(path: str | Path, column: str, cases: list[str]) -> dict[str, str]:
    """``{case: group}`` for the ``cases`` (patients as the report names them) that the CSV
    ``path`` names: the group is in ``column``; the subject column is the one whose values name
    the most cases (:func:`_names`; of several values naming a case, the longest). A missing
    file or column, or a table that names no case, is one :class:`InputError`."""
    path = Path(path)
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            rows = list(csv.DictReader(f))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise InputError(path, f"cannot read the groups table ({type(exc).__name__}: {exc})") from None
    header = list(rows[0]) if rows else []
    if column not in header:
        raise InputError(path, f"no column {column!r} for --group-by (columns: {', '.join(header) or 'none'})")

    def mapping(subject: str) -> dict[str, str]:
        out: dict[str, tuple[int, str]] = {}
        for row in rows:
            value = (row.get(subject) or "").strip()
            for case in cases:
                if _names(value, case) and len(value) > out.get(case, (-1, ""))[0]:
                    out[case] = (len(value), (row.get(column) or "").strip())
        return {case: group for case, (_, group) in out.items() if group}

    best = max((mapping(c) for c in header if c != column), key=len, default={})
    if not best:
        raise InputError(path, f"no column names the evaluated cases (e.g. {cases[0] if cases else '-'})")
    return best
