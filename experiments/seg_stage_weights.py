"""The Seg stage's weights of a two-stage weights file, alone and in float32: what a ``seg_as``
run starts from when it continues a shipped proposed model (``cmrseg.checkpoint.stage_tensors``).

    python experiments/seg_stage_weights.py TWO_STAGE.safetensors OUT.safetensors
"""

import sys

from cmrseg.checkpoint import read_tensors, save_weights, stage_tensors

if __name__ == "__main__":
    save_weights(stage_tensors(read_tensors(sys.argv[1]), "seg"), sys.argv[2])
