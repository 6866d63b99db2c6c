"""Are two ``cmrseg segment`` output folders the same? (issue 14: behaviour unchanged by a
refactor.) Compares every mask file of the first folder with the same-named one of the second
(any label format of the format table) and the measures tables.

    python experiments/compare_masks.py BEFORE AFTER
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from cmrseg.data.io.formats import label_formats
from cmrseg.data.io.readers import read_label_volume


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("before", type=Path)
    ap.add_argument("after", type=Path)
    args = ap.parse_args(argv)
    files = sorted(p.relative_to(args.before) for p in args.before.rglob("*")
                   if p.is_file() and any(f.matches(p) for f in label_formats()))
    differ = total = 0
    for rel in files:
        a = read_label_volume(args.before / rel).label
        b = read_label_volume(args.after / rel).label
        if a.shape != b.shape:
            print(f"{rel}: shape {a.shape} vs {b.shape}")
            differ += a.size
        else:
            differ += int(np.count_nonzero(a != b))
        total += a.size
    same_csv = (args.before / "measures.csv").read_text() == (args.after / "measures.csv").read_text()
    print(f"{len(files)} masks, {total} voxels, {differ} differ; measures.csv {'identical' if same_csv else 'DIFFERS'}")
    return 0 if differ == 0 and same_csv else 1


if __name__ == "__main__":
    sys.exit(main())
