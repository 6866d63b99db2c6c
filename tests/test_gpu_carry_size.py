"""The working tree must leave room for the GPU bundle: the device takes the tree plus the
carried ``.gpu`` bundle and MONAI wheel, 64 MiB in all (experiments/make_gpu_bundle.py). A new
shipped model (4 MiB) once pushed the total over; this fails before a GPU call would."""

import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DEVICE_LIMIT_MIB = 64.0
BUNDLE_MIB = 49.4  # .gpu/acdc from make_gpu_bundle.py (train.npz.xz 41.8 + val 7.5), measured 2026-11-28
WHEEL_MIB = 1.6  # .whl/monai-1.6.1 (gpu_job.sh)


def test_tracked_tree_leaves_room_for_the_gpu_bundle():
    if shutil.which("git") is None or not (REPO / ".git").exists():
        pytest.skip("not a git checkout")
    files = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True, check=True).stdout
    tree_mib = sum((REPO / f).stat().st_size for f in files.decode().split("\0") if f and (REPO / f).is_file()) / 2**20
    assert tree_mib + BUNDLE_MIB + WHEEL_MIB <= DEVICE_LIMIT_MIB, (
        f"tracked tree {tree_mib:.1f} MiB + bundle {BUNDLE_MIB} + wheel {WHEEL_MIB} > {DEVICE_LIMIT_MIB} MiB")
