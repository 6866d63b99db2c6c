"""Copy a finished run into the package as a shipped model (``cmrseg/weights/<name>/``):
``weights.safetensors`` in float16 and ``model.json`` with its provenance.

    python experiments/ship_model.py RUN_DIR NAME "how it was trained (protocol, machine, date)" [--postprocess M]
        [--gate G] [--tta]

``--postprocess``, ``--gate`` and ``--tta`` record the clean-up, classifier gate and flips
``cmrseg segment`` applies with this model by default (choose them on val, see RESULTS).
"""

import argparse
import json
from pathlib import Path

import yaml

from cmrseg.checkpoint import half_precision, read_tensors, save_weights

WEIGHTS = Path(__file__).resolve().parents[1] / "src" / "cmrseg" / "weights"


def main(run: str, name: str, provenance: str, postprocess: str | None = None, gate: str | None = None,
         tta: bool = False) -> None:
    run_p = Path(run)
    meta = json.loads((run_p / "model.json").read_text())
    if not meta.get("complete"):
        raise SystemExit(f"{run}: not a complete run")
    dst = WEIGHTS / name
    dst.mkdir(parents=True, exist_ok=True)
    machine_paths = ("seg_stage_run", "init_weights")  # this machine's paths are not provenance
    for key in machine_paths:
        meta.pop(key, None)
    meta["shipped"] = {"name": name, "trained": provenance}
    if postprocess:
        meta["postprocess"] = postprocess
    if gate:
        meta["gate"] = gate
    meta["tta"] = bool(tta)
    # float16 halves the package (and the working tree that travels to GPU machines); the
    # normalisation statistics stay float32 (small variances would lose precision)
    tensors = half_precision(read_tensors(run_p / "weights.safetensors"))
    meta["shipped"]["dtype"] = "float16 (normalisation statistics float32)"
    save_weights(tensors, dst / "weights.safetensors",
                 metadata={"model": meta["model"], "protocol": str(meta.get("protocol"))})
    (dst / "model.json").write_text(json.dumps(meta, indent=2) + "\n")
    config = yaml.safe_load((run_p / "config.yaml").read_text())
    config.update({k: None for k in machine_paths if k in config})
    (dst / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    size = (dst / "weights.safetensors").stat().st_size / 2 ** 20
    print(f"shipped {name}: {size:.1f} MiB")


if __name__ == "__main__":
    from cmrseg.inference.gating import GATE_MODES
    from cmrseg.inference.postprocessing import POSTPROCESS

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run")
    ap.add_argument("name")
    ap.add_argument("provenance")
    ap.add_argument("--postprocess", choices=POSTPROCESS)
    ap.add_argument("--gate", choices=GATE_MODES, help="the classifier's gate at inference (chosen on val)")
    ap.add_argument("--tta", action="store_true", help="average over in-plane flips at inference (chosen on val)")
    a = ap.parse_args()
    main(a.run, a.name, a.provenance, a.postprocess, a.gate, a.tta)
