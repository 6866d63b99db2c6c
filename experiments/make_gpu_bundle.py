"""Build the compact data bundle that travels to a GPU machine (``.gpu/`` in the repo,
git-ignored): the ACDC training split preprocessed for the paper protocol (uint8 canvases,
LZMA npz, about 45 MB) and the validation split as uint16 h5 files with its
``metadata.csv`` / ``manifest.json`` (about 5 MB), so evaluation there runs on the
original validation geometry.

    python experiments/make_gpu_bundle.py ../shared/data/acdc .gpu/acdc
"""

import shutil
import sys
from pathlib import Path

import h5py
import numpy as np

from cmrseg.data.dataset import StackDataset
from cmrseg.training.config import load_config


def main(src: str, dst: str, protocol: str = "paper") -> None:
    src_p, dst_p = Path(src), Path(dst)
    (dst_p / "val").mkdir(parents=True, exist_ok=True)
    cfg = load_config(protocol=protocol, model="seg_as")
    StackDataset.from_folder(src_p / "train", cfg.preprocess).save_cache(dst_p / "train.npz", compression="lzma")
    for f in sorted((src_p / "val").glob("*.h5")):
        with h5py.File(f) as fh:
            image, label = fh["image"][()], fh["label"][()]
        lo, hi = float(image.min()), float(image.max())
        q = np.round((image - lo) / (hi - lo) * 65535).astype(np.uint16)
        with h5py.File(dst_p / "val" / f.name, "w") as out:
            out.create_dataset("image", data=q, compression="gzip", compression_opts=9)
            out.create_dataset("label", data=label, compression="gzip", compression_opts=9)
    for side in ("metadata.csv", "manifest.json"):
        shutil.copy(src_p / "val" / side, dst_p / "val" / side)
    size = sum(p.stat().st_size for p in dst_p.rglob("*") if p.is_file()) / 2 ** 20
    print(f"bundle {dst_p}: {size:.1f} MiB")


if __name__ == "__main__":
    main(*sys.argv[1:])
