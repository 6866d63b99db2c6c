"""Copy a finished run into the package as a shipped model (``cmrseg/weights/<name>/``):
``weights.safetensors`` as trained and ``model.json`` with its provenance.

    python experiments/ship_model.py RUN_DIR NAME "how it was trained (protocol, machine, date)"
"""

import json
import shutil
import sys
from pathlib import Path

from cmrseg.checkpoint import read_tensors, save_weights

WEIGHTS = Path(__file__).resolve().parents[1] / "src" / "cmrseg" / "weights"


def main(run: str, name: str, provenance: str) -> None:
    run_p = Path(run)
    meta = json.loads((run_p / "model.json").read_text())
    if not meta.get("complete"):
        raise SystemExit(f"{run}: not a complete run")
    dst = WEIGHTS / name
    dst.mkdir(parents=True, exist_ok=True)
    for key in ("stage1_run",):  # machine-specific paths are not provenance
        meta.pop(key, None)
    meta["shipped"] = {"name": name, "trained": provenance}
    save_weights(read_tensors(run_p / "weights.safetensors"), dst / "weights.safetensors",
                 metadata={"model": meta["model"], "protocol": str(meta.get("protocol"))})
    (dst / "model.json").write_text(json.dumps(meta, indent=2) + "\n")
    shutil.copy(run_p / "config.yaml", dst / "config.yaml")
    size = (dst / "weights.safetensors").stat().st_size / 2 ** 20
    print(f"shipped {name}: {size:.1f} MiB")


if __name__ == "__main__":
    main(*sys.argv[1:])
