"""A cohort on a cluster: ``--shard auto`` in a Slurm job array, and the example job script of
docs/how-to/segment_cohort.sbatch run as Slurm runs its tasks (side by side, one folder)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from cmrseg.errors import CmrsegError
from cmrseg.inference.options import parse_shard

SCRIPT = Path(__file__).resolve().parents[2] / "docs" / "how-to" / "segment_cohort.sbatch"


def test_shard_auto_reads_the_job_array_and_says_so():
    env = {"SLURM_ARRAY_TASK_ID": "3", "SLURM_ARRAY_TASK_COUNT": "4", "SLURM_ARRAY_TASK_MIN": "0"}
    shard, said = parse_shard("auto", env)
    assert shard == (3, 4) and "SLURM_ARRAY_TASK_ID=3" in said and "SLURM_ARRAY_TASK_COUNT=4" in said
    assert parse_shard("auto", {**env, "SLURM_ARRAY_TASK_ID": "1", "SLURM_ARRAY_TASK_MIN": "1"})[0] == (0, 4)
    stepped = {"SLURM_ARRAY_TASK_ID": "4", "SLURM_ARRAY_TASK_COUNT": "3", "SLURM_ARRAY_TASK_MIN": "0",
               "SLURM_ARRAY_TASK_STEP": "2"}  # --array=0-4:2: tasks 0, 2, 4
    assert parse_shard("auto", stepped)[0] == (2, 3)
    assert parse_shard("2/5") == ((1, 5), "--shard") and parse_shard(None)[0] == (0, 1)
    with pytest.raises(CmrsegError, match="not a Slurm job array"):
        parse_shard("auto", {})
    with pytest.raises(CmrsegError, match="need 1 <= i <= n"):
        parse_shard("auto", {**env, "SLURM_ARRAY_TASK_ID": "9"})


def test_the_example_job_array_segments_every_study_once(phantom_dir, smoke_model, tmp_path):
    cohort = tmp_path / "cohort"
    cohort.mkdir()
    for patient in ("patient001", "patient002", "patient003"):
        (cohort / patient).symlink_to(phantom_dir / "acdc" / patient, target_is_directory=True)
    out = tmp_path / "out"
    env = {**os.environ, "CMRSEG": str(Path(sys.executable).parent / "cmrseg"), "SLURM_ARRAY_TASK_COUNT": "2",
           "SLURM_ARRAY_TASK_MIN": "0", "SLURM_CPUS_PER_TASK": "1"}
    tasks = [subprocess.Popen(["bash", str(SCRIPT), str(cohort), str(out), "--model", str(smoke_model)],
                              env={**env, "SLURM_ARRAY_TASK_ID": str(i)}, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for i in (0, 1)]  # side by side, as Slurm runs them
    results = [t.communicate(timeout=600) + (t.returncode,) for t in tasks]
    for i, (stdout, stderr, code) in enumerate(results):
        assert code == 0, stderr[-2000:]
        assert f"({i + 1}/2, Slurm: SLURM_ARRAY_TASK_ID={i}," in stdout
    summary = json.loads((out / "summary.json").read_text())
    assert sorted(summary["studies"]) == ["patient001", "patient002", "patient003"]
    assert summary["shards"] == ["1/2", "2/2"] and summary["failed"] == []
    studies = [json.loads((out / "shards" / f"{i}-of-2.json").read_text())["studies"] for i in (1, 2)]
    assert sorted(studies[0] + studies[1]) == ["patient001", "patient002", "patient003"]
