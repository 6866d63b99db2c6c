"""Build the compact data bundle that travels to a GPU machine (``.gpu/`` in the repo,
git-ignored): the ACDC training split preprocessed for the paper protocol (uint8 canvases,
``train.npz.xz``: delta + LZMA2, 43.9 MB, about 2 minutes to write) and the validation split
as uint8 h5 files with its ``metadata.csv`` / ``manifest.json`` (7.9 MB), and ``train.json``
(the training split's stack and slice counts, for the job's epoch planning), so evaluation there
runs on the original validation geometry. The working tree travels too (11.2 MB with the
shipped weights, 2026-11-28; 13.2 MiB with four shipped models, 2026-12-07): tree and bundle
must stay under the device's 64 MiB (``tests/test_gpu_carry_size.py``). The MONAI wheel (1.7 MB)
goes too only where it still fits (``experiments/gpu_job.sh``).

    python experiments/make_gpu_bundle.py ../shared/data/acdc .gpu/acdc
"""

import json
import shutil
import sys
from pathlib import Path

import h5py
import numpy as np

from cmrseg.data.dataset import StackDataset
from cmrseg.training.config import load_config


def main(src: str, dst: str, protocol: str = "paper") -> None:
    src_p, dst_p = Path(src), Path(dst)
    cfg = load_config(protocol=protocol, model="seg_as")
    train = StackDataset.from_folder(src_p / "train", cfg.preprocess)
    train.save_cache(dst_p / "train.npz.xz", compression="xz")
    # what the GPU job plans epochs with, without decompressing the cache
    (dst_p / "train.json").write_text(json.dumps({"stacks": len(train.records), "slices": train.num_slices}))
    bundle_val(src_p / "val", dst_p / "val")
    size = sum(p.stat().st_size for p in dst_p.rglob("*") if p.is_file()) / 2 ** 20
    print(f"bundle {dst_p}: {size:.1f} MiB")


def bundle_val(src: Path, dst: Path) -> None:
    """Validation volumes in their own geometry, images as uint8 between the minimum and the
    99.9th percentile: the networks normalise by the 0.5-99.5th percentiles, which clipping
    above the 99.9th leaves unchanged, and they are trained on uint8 canvases anyway."""
    dst.mkdir(parents=True, exist_ok=True)
    for f in sorted(src.glob("*.h5")):
        with h5py.File(f) as fh:
            image, label = fh["image"][()], fh["label"][()]
        lo, hi = float(image.min()), float(np.percentile(image, 99.9))
        q = np.round((np.clip(image, lo, hi) - lo) / max(hi - lo, 1e-12) * 255).astype(np.uint8)
        with h5py.File(dst / f.name, "w") as out:
            out.create_dataset("image", data=q, compression="gzip", compression_opts=9)
            out.create_dataset("label", data=label, compression="gzip", compression_opts=9)
    for side in ("metadata.csv", "manifest.json"):
        shutil.copy(src / side, dst / side)


if __name__ == "__main__":
    main(*sys.argv[1:])
