"""Kill a two-stage training at random points, resume each time: the final weights are the
uninterrupted run's, to the bit (CPU, smoke protocol)."""

import json
import random
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from cmrseg.checkpoint import read_tensors

EPOCHS = 8


def _args(data, out):
    return [sys.executable, "-m", "cmrseg", "train", "--model", "seg_as+ref_as_mt", "--protocol", "smoke",
            "--data", str(data), "--out", str(out), "--epochs", str(EPOCHS), "--set", "progress=false",
            "--set", "val_every=2", "--set", "snapshot_fractions=[0.4]"]


def _epoch(state: Path) -> int:
    try:
        return json.loads(state.read_text())["state"]["epoch"]
    except (OSError, ValueError, KeyError):
        return 0


def _progress(run: Path) -> tuple:
    """What a run has finished so far: Seg epochs, Seg complete, Ref epochs."""
    return (_epoch(run / "stage1" / "last" / "state.json"), (run / "stage1" / "model.json").exists(),
            _epoch(run / "last" / "state.json"))


def _complete(run: Path) -> bool:
    return (run / "model.json").exists() and json.loads((run / "model.json").read_text()).get("complete", False)


@pytest.mark.slow
def test_ten_kills_at_random_points_resume_to_the_same_weights(phantom_dir, tmp_path):
    data = phantom_dir / "h5"
    res = subprocess.run(_args(data, tmp_path / "straight"), capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-2000:]
    rng = random.Random(7)
    run = tmp_path / "killed"
    quota = {False: 5, True: 5}  # kills left in the Seg stage (False) and after it (True)
    kills, points = 0, []
    while not _complete(run):
        start = _progress(run)
        proc = subprocess.Popen(_args(data, run), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        # wait for the next finished piece of work, then kill somewhere in the one after it:
        # an epoch, a checkpoint or snapshot being saved, the Ref stage's probability maps.
        # Five kills per stage, whatever the machine's speed (a stage whose kills are used up runs on)
        while proc.poll() is None and (_progress(run) == start or not quota[_progress(run)[1]]):
            time.sleep(0.02)
        if proc.poll() is None:
            stage = _progress(run)[1]
            time.sleep(rng.uniform(0.0, 0.3))
            proc.kill()
            quota[stage] -= 1
            kills += 1
            points.append(_progress(run))
        proc.wait(timeout=600)
    assert kills == 10, points
    assert any(p[1] for p in points) and any(not p[1] for p in points), points  # in both stages
    a, b = read_tensors(tmp_path / "straight" / "weights.safetensors"), read_tensors(run / "weights.safetensors")
    assert a.keys() == b.keys()
    assert [k for k in a if not torch.equal(a[k], b[k])] == []
    for log in (run / "log.csv", run / "stage1" / "log.csv"):  # every epoch logged once, in order
        epochs = [int(line.split(",")[0]) for line in log.read_text().splitlines()[1:]]
        assert epochs == list(range(1, EPOCHS + 1)), (log, epochs)
