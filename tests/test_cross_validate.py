"""experiments/cross_validate.py: patient-disjoint folds, per-fold data, and one fold end to end."""

import csv
import json
from collections import Counter

import pytest

from cmrseg.errors import InputError


def _acdc_like(n_per_group=14):
    return {f"patient{g * 20 + i:03d}": group for g, group in enumerate(("DCM", "HCM", "MINF", "NOR", "RV"))
            for i in range(n_per_group)}


def test_folds_hold_every_patient_once_and_every_group_evenly(load_script):
    cv = load_script("experiments/cross_validate.py")
    patients = _acdc_like()
    splits = cv.make_splits(patients, 5)
    held = [p for s in splits for p in s["held_out"]]
    assert sorted(held) == sorted(patients)  # each patient held out exactly once
    for s in splits:
        assert not set(s["train"]) & set(s["held_out"])
        assert sorted(s["train"] + s["held_out"]) == sorted(patients)
        counts = Counter(patients[p] for p in s["held_out"])
        assert set(counts) == {"DCM", "HCM", "MINF", "NOR", "RV"} and max(counts.values()) - min(counts.values()) <= 1
    assert sorted(len(s["held_out"]) for s in splits) == [14] * 5
    assert cv.make_splits(patients, 5) == splits  # seeded
    with pytest.raises(ValueError, match="folds"):
        cv.make_splits(patients, 1)


def test_splits_are_written_once_and_a_mismatch_refused(tmp_path, load_script):
    cv = load_script("experiments/cross_validate.py")
    patients = _acdc_like(4)
    first = cv.load_or_make_splits(tmp_path, patients, 4)
    (tmp_path / "splits.json").write_text(json.dumps(list(reversed(first))))  # as another session left it
    assert cv.load_or_make_splits(tmp_path, patients, 4) == list(reversed(first))
    with pytest.raises(InputError, match="splits.json.*not 5 folds"):
        cv.load_or_make_splits(tmp_path, patients, 5)
    with pytest.raises(InputError, match="splits.json"):
        cv.load_or_make_splits(tmp_path, dict(list(patients.items())[:-1]), 4)


@pytest.mark.slow
def test_a_fold_is_trained_without_its_patients_and_scored_on_them(phantom_dir, tmp_path, load_script):
    cv = load_script("experiments/cross_validate.py")
    data, out = phantom_dir / "h5" / "train", tmp_path / "cv"
    assert cv.main([str(data), str(out), "--val", str(phantom_dir / "h5" / "val"), "--folds", "3", "--only", "1",
                    "--protocol", "smoke"]) == 0
    split = json.loads((out / "splits.json").read_text())[1]
    fold = out / "fold_1"
    train_h5 = {p.name.split("_")[0] for p in (fold / "data" / "train").glob("*.h5")}
    held_h5 = {p.name.split("_")[0] for p in (fold / "data" / "held_out").glob("*.h5")}
    assert train_h5 == set(split["train"]) and held_h5 == set(split["held_out"]) and not train_h5 & held_h5
    for part, patients in (("train", split["train"]), ("held_out", split["held_out"])):
        assert {e["patient"] for e in json.loads((fold / "data" / part / "manifest.json").read_text())} == set(patients)
        with open(fold / "data" / part / "metadata.csv", newline="") as f:
            assert {r["patient"] for r in csv.DictReader(f)} == set(patients)
    meta = json.loads((fold / "seg_as+ref_as_mt" / "model.json").read_text())
    assert meta["complete"]
    assert meta["gate"] == "seg" and meta["postprocess"] == "clean" and meta["tta"] is True
    with open(fold / "eval" / "per_volume.csv", newline="") as f:
        assert {r["patient"] for r in csv.DictReader(f)} == set(split["held_out"])
    table = (out / "out_of_fold.md").read_text()
    assert table.splitlines()[2].startswith("| 1 | 1 |")
    # a rerun finds every step done and trains nothing again; --shifts adds the fold's benchmark
    stamp = (fold / "seg_as+ref_as_mt" / "weights.safetensors").stat().st_mtime_ns
    assert cv.main([str(data), str(out), "--val", str(phantom_dir / "h5" / "val"), "--folds", "3", "--only", "1",
                    "--protocol", "smoke", "--no-train", "--shifts", "none"]) == 0
    assert (fold / "seg_as+ref_as_mt" / "weights.safetensors").stat().st_mtime_ns == stamp
    bench = json.loads((fold / "bench" / "shift_benchmark.json").read_text())
    assert [r["shift"] for r in bench["rows"]] == ["none"] and bench["model"] == [str(fold / "seg_as+ref_as_mt")]
    assert not (out / "fold_0" / "seg_as").exists()  # --only 1: no other fold trained


def test_a_failed_step_stops_with_one_line_naming_the_fold(phantom_dir, tmp_path, load_script, capsys):
    cv = load_script("experiments/cross_validate.py")
    code = cv.main([str(phantom_dir / "h5" / "train"), str(tmp_path), "--val", str(phantom_dir / "h5" / "val"),
                    "--folds", "3", "--only", "0", "--protocol", "no_such_protocol"])
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert code == 1 and err.startswith("error: fold 0: ") and "rerun to resume" in err


@pytest.mark.slow
def test_folds_trained_by_the_gpu_job_are_read_out_of_fold_here(phantom_dir, tmp_path, load_script):
    """``gpu_job.py --plan folds`` trains a fold's model on its training patients only (on CPU
    here, smoke protocol); ``cross_validate.py --models-from`` takes it instead of training one."""
    import subprocess
    import sys

    from cmrseg.data.dataset import StackDataset

    cv = load_script("experiments/cross_validate.py")
    data, val, out = phantom_dir / "h5" / "train", phantom_dir / "h5" / "val", tmp_path / "cv"
    args = [str(data), str(out), "--val", str(val), "--folds", "3", "--only", "1", "--protocol", "smoke"]
    assert cv.main([*args, "--no-train"]) == 0  # the splits, and nothing trained
    split = json.loads((out / "splits.json").read_text())[1]
    gpu, work = tmp_path / "gpu_out", tmp_path / "gpu_work"
    res = subprocess.run([sys.executable, str(cv.REPO / "experiments" / "gpu_job.py"), "--data", str(phantom_dir / "h5"),
                          "--out", str(gpu), "--work", str(work), "--plan", "folds", "--splits", str(out / "splits.json"),
                          "--fold", "1", "--fold-epochs", "1", "--protocol", "smoke", "--device", "cpu",
                          "--bench-seconds", "0", "--seconds", "200", "--startup", "5", "--set", "val_every=1"],
                         capture_output=True, text=True, timeout=400)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-2000:]
    trained_on = StackDataset.from_cache(work / "data" / "folds" / "fold_1" / "train.npz")
    assert {r.meta["patient"] for r in trained_on.records} == set(split["train"])
    model = gpu / "models" / "seg_as-ref_as_mt_fold1"
    meta = json.loads((model / "model.json").read_text())
    assert meta["complete"] and meta["trained_epochs"] == 1
    assert not (gpu / "models" / "seg_as-ref_as_mt_fold0").exists()  # --fold 1 only
    assert cv.main([*args, "--models-from", str(gpu / "models")]) == 0
    fold = out / "fold_1"
    assert not (fold / "seg_as").exists()  # nothing trained here
    assert (fold / "seg_as+ref_as_mt" / "weights.safetensors").read_bytes() == (model / "weights.safetensors").read_bytes()
    with open(fold / "eval" / "per_volume.csv", newline="") as f:
        assert {r["patient"] for r in csv.DictReader(f)} == set(split["held_out"])
