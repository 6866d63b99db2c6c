"""How far a dataset cache resampled to another protocol's canvas (``StackDataset.on_canvas``)
is from preprocessing the volumes for that protocol directly: image difference, label agreement,
per-class Dice and pixel counts, and how many stacks line up best unshifted.

    python experiments/compare_canvases.py .gpu/acdc/train.npz.xz ../shared/data/acdc/train fast
"""

import argparse
from collections import Counter

import numpy as np

from cmrseg.data.dataset import StackDataset
from cmrseg.labels import CLASS_NAMES
from cmrseg.training.config import load_config


def best_shift(a: np.ndarray, b: np.ndarray) -> tuple[int, int]:
    """The in-plane shift of at most one pixel that brings image ``a`` closest to ``b``."""
    errors = {(dy, dx): np.abs(np.roll(a.astype(float), (dy, dx), (1, 2)) - b).mean()
              for dy in (-1, 0, 1) for dx in (-1, 0, 1)}
    return min(errors, key=errors.get)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("cache", help="a .npz / .npz.xz cache made for another protocol")
    ap.add_argument("data", help="the labelled folder the cache was made from")
    ap.add_argument("protocol", help="the protocol to serve (coarser pixels than the cache's)")
    args = ap.parse_args()
    pre = load_config(protocol=args.protocol, model="seg_as").preprocess
    derived = StackDataset.from_folder(args.cache, pre)
    direct = StackDataset.from_folder(args.data, pre, progress=False)
    pairs = list(zip(derived.records, direct.records))
    assert all(a.name == b.name for a, b in pairs), "cache and folder hold different stacks"
    mae = np.mean([np.abs(a.image.astype(float) - b.image).mean() / 255 for a, b in pairs])
    agree = np.mean([(a.label == b.label).mean() for a, b in pairs])
    shifts = dict(Counter(best_shift(a.image, b.image) for a, b in pairs))
    print(f"{len(pairs)} stacks; image mean absolute difference {100 * mae:.2f} % of the range; "
          f"labels agree on {100 * agree:.2f} % of the pixels; best shift (rows, cols): {shifts}")
    for c, name in enumerate(CLASS_NAMES, 1):
        dice = [2 * ((a.label == c) & (b.label == c)).sum() / ((a.label == c).sum() + (b.label == c).sum())
                for a, b in pairs if (a.label == c).any() or (b.label == c).any()]
        ratio = sum((a.label == c).sum() for a, b in pairs) / sum((b.label == c).sum() for a, b in pairs)
        print(f"{name}: Dice derived vs direct mean {np.mean(dice):.4f} (lowest {np.min(dice):.4f}); "
              f"pixels derived / direct {ratio:.4f}")


if __name__ == "__main__":
    main()
