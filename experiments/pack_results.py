"""Pack a ``cmrseg reproduce`` folder for the trip back from a GPU machine, whose file
return is limited (8 files, 16 MiB each): one ``results.tar.gz`` with every table, figure,
log, config and model description, plus the weights of the chosen runs as float16
safetensors, one file per run (``<run>.safetensors``; the proposed model is 15.8 MiB).

    python experiments/pack_results.py /tmp/repro $OUT seg_as+ref_as_mt seg_ss seg_as det_seg
"""

import sys
import tarfile
from pathlib import Path

import torch

from cmrseg.checkpoint import read_tensors, save_weights

SMALL = {".md", ".csv", ".json", ".yaml", ".png", ".log"}


def main(src: str, dst: str, *runs: str) -> None:
    src_p, dst_p = Path(src), Path(dst)
    dst_p.mkdir(parents=True, exist_ok=True)
    with tarfile.open(dst_p / "results.tar.gz", "w:gz") as tar:
        for p in sorted(src_p.rglob("*")):
            if p.is_file() and p.suffix in SMALL and p.stat().st_size < 4 * 2 ** 20:
                tar.add(p, arcname=str(p.relative_to(src_p)))
            elif p.is_file() and "tensorboard" in p.parts:
                tar.add(p, arcname=str(p.relative_to(src_p)))
    for run in runs:
        w = src_p / "runs" / run.replace("@", "_") / "weights.safetensors"
        if w.is_file():
            save_weights(read_tensors(w), dst_p / f"{run.replace('+', '-')}.safetensors", dtype=torch.float16)
            print(f"packed {run}: {(dst_p / (run.replace('+', '-') + '.safetensors')).stat().st_size / 2 ** 20:.1f} MiB")
        else:
            print(f"no weights for {run}")


if __name__ == "__main__":
    main(*sys.argv[1:])
