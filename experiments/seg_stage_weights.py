"""The Seg stage's weights of a two-stage weights file, alone and in float32: what a ``seg_as``
run starts from when it continues a shipped proposed model.

    python experiments/seg_stage_weights.py TWO_STAGE.safetensors OUT.safetensors
"""

import sys

from cmrseg.checkpoint import read_tensors, save_weights

if __name__ == "__main__":
    tensors = read_tensors(sys.argv[1])
    save_weights({k[len("seg."):]: v.float() for k, v in tensors.items() if k.startswith("seg.")}, sys.argv[2])
