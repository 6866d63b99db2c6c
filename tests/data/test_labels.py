"""Data labelled in another convention (issue: "on ACDC or their own data"): ``--labels`` turns
it into this project's, and a set whose RV and LV are swapped is refused rather than trained or
scored with the ventricles exchanged."""

import shutil
import subprocess
import sys

import h5py
import numpy as np
import pytest

from cmrseg.data.io import load_labelled_dataset
from cmrseg.errors import InputError
from cmrseg.labels import ACDC_LABELS, parse_labels, relabel, swapped_ventricles
from cmrseg.training.config import load_config

MNMS = "LV=1,MYO=2,RV=3"


def _as_mnms(src, dst, values=(0, 3, 2, 1)):
    """A copy of an h5 split with label value ``v`` written as ``values[v]`` (by default RV
    and LV exchanged, as M&Ms labels them)."""
    dst.mkdir()
    for f in src.iterdir():
        shutil.copy(f, dst / f.name)
        if f.suffix == ".h5":
            with h5py.File(dst / f.name, "r+") as h:
                label = h["label"][...]
                h["label"][...] = np.choose(label, values).astype(label.dtype)
    return dst


def test_parse_labels_maps_the_data_values_to_this_projects():
    assert parse_labels(MNMS)[:4].tolist() == [0, 3, 2, 1]
    assert parse_labels(ACDC_LABELS)[:4].tolist() == [0, 1, 2, 3]
    assert parse_labels("rv=10, myo=20, lv=30")[[10, 20, 30, 4]].tolist() == [1, 2, 3, 0]  # others: 0 (refused in data)
    for bad in ("LV=1,MYO=2", "LV=1,MYO=2,RV=1", "LV=1,MYO=x,RV=3", "LA=1,MYO=2,RV=3", "LV=0,MYO=2,RV=3"):
        with pytest.raises(ValueError, match="--labels"):
            parse_labels(bad)


def test_swapped_ventricles_are_told_by_the_myocardium_around_the_lv(phantom_dir):
    labels = [v.label for v in load_labelled_dataset(phantom_dir / "h5" / "train")]
    assert swapped_ventricles(labels) == 0
    assert swapped_ventricles([relabel(x, parse_labels(MNMS)) for x in labels]) == len(labels)


def test_a_dataset_in_another_convention_is_refused_then_read_with_labels(phantom_dir, tmp_path):
    mnms = _as_mnms(phantom_dir / "h5" / "train", tmp_path / "mnms")
    with pytest.raises(InputError, match=r"mnms: RV and LV look swapped .* --labels LV=1,MYO=2,RV=3"):
        load_labelled_dataset(mnms)
    ours = load_labelled_dataset(phantom_dir / "h5" / "train")
    theirs = load_labelled_dataset(mnms, labels=MNMS)
    assert all(np.array_equal(a.label, b.label) for a, b in zip(ours, theirs))
    assert load_config(protocol="smoke", overrides=[f"labels={MNMS}"]).labels == MNMS


def test_label_values_above_3_are_read_with_labels_and_unnamed_values_refused(phantom_dir, tmp_path):
    """Values 10/20/30 (any 1-255 that ``--labels`` names) pass the readers' own check; whether
    a value belongs is the convention's call, and one it does not name names its file."""
    ours = load_labelled_dataset(phantom_dir / "h5" / "train")
    tens = _as_mnms(phantom_dir / "h5" / "train", tmp_path / "tens", values=(0, 10, 20, 30))
    theirs = load_labelled_dataset(tens, labels="RV=10,MYO=20,LV=30")
    assert len(theirs) == len(ours) and all(np.array_equal(a.label, b.label) for a, b in zip(ours, theirs))
    first = sorted(tens.glob("*.h5"))[0]
    with pytest.raises(InputError, match=rf"{first.name}: label values \[10, 20, 30\] outside 0..3 .*--labels"):
        load_labelled_dataset(tens)
    with pytest.raises(InputError, match=rf"{first.name}: label values \[30\] not named by --labels RV=10,MYO=20,LV=3"):
        load_labelled_dataset(tens, labels="RV=10,MYO=20,LV=3")


def test_cmrseg_evaluate_reads_truth_in_another_convention(phantom_dir, tmp_path):
    val = phantom_dir / "h5" / "val"
    mnms = _as_mnms(val, tmp_path / "truth")

    def evaluate(*extra):
        return subprocess.run([sys.executable, "-m", "cmrseg", "evaluate", "--pred", str(val), "--gt", str(mnms),
                               "-o", str(tmp_path / "report"), *extra], capture_output=True, text=True)

    refused = evaluate()
    assert refused.returncode == 2 and "RV and LV look swapped" in refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1
    read = evaluate("--labels", MNMS)
    assert read.returncode == 0, read.stderr[-2000:]
    assert "|  | Volume | 1.000 | 1.000 | 1.000 | 1.000 |" in read.stdout  # the truth against itself


def test_cmrseg_evaluate_reads_truth_labelled_above_3(phantom_dir, tmp_path):
    val = phantom_dir / "h5" / "val"
    truth = _as_mnms(val, tmp_path / "truth", values=(0, 30, 20, 10))
    run = subprocess.run([sys.executable, "-m", "cmrseg", "evaluate", "--pred", str(val), "--gt", str(truth),
                          "-o", str(tmp_path / "report"), "--labels", "LV=10,MYO=20,RV=30"],
                         capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-2000:]
    assert "|  | Volume | 1.000 | 1.000 | 1.000 | 1.000 |" in run.stdout
    refused = subprocess.run([sys.executable, "-m", "cmrseg", "evaluate", "--pred", str(truth), "--gt", str(val),
                              "-o", str(tmp_path / "report2")], capture_output=True, text=True)
    assert refused.returncode == 2 and "outside 0..3" in refused.stderr and str(truth) in refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1
