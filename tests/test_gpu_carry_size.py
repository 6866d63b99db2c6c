"""The working tree must leave room for the GPU bundle: the device takes the tree plus the
carried ``.gpu`` bundle, 64 MiB in all (experiments/make_gpu_bundle.py). A new shipped model
(4 MiB) once pushed the total over; this fails before a GPU call would. The MONAI wheel (only
for the job's end-of-call evaluation on val, which the CPU machine repeats anyway) is carried
when it fits beside them: with four shipped models it no longer does (experiments/gpu_job.sh)."""

import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DEVICE_LIMIT_MIB = 64.0
BUNDLE_MIB = 49.4  # .gpu/acdc from make_gpu_bundle.py (train.npz.xz 41.8 + val 7.5), measured 2026-11-28


def test_tracked_tree_leaves_room_for_the_gpu_bundle():
    if shutil.which("git") is None or not (REPO / ".git").exists():
        pytest.skip("not a git checkout")
    files = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True, check=True).stdout
    tree_mib = sum((REPO / f).stat().st_size for f in files.decode().split("\0") if f and (REPO / f).is_file()) / 2**20
    assert tree_mib + BUNDLE_MIB <= DEVICE_LIMIT_MIB, (
        f"tracked tree {tree_mib:.1f} MiB + bundle {BUNDLE_MIB} > {DEVICE_LIMIT_MIB} MiB")
