"""``experiments/basal_slice_decisions.py``: the basal slices a model and the experts decide
differently, and how sure the model was there (issue 36)."""

import numpy as np


def test_a_whole_slice_decided_differently_is_listed_with_what_the_model_thought_possible(load_script):
    script = load_script("experiments/basal_slice_decisions.py")
    truth = np.zeros((4, 8, 8), np.uint8)
    mask = np.zeros_like(truth)
    truth[0:3, 2:5, 2:5] = 1  # the experts' RV starts on slice 0 ...
    mask[1:3, 2:5, 2:5] = 1  # ... the model's on slice 1
    truth[0:3, 6:8, 6:8] = mask[0:3, 6:8, 6:8] = 3  # LV agreed
    bands = np.zeros((4, 3, 2), np.int64)
    bands[1:3, 0] = (9, 10)
    rv, myo, lv = script.decisions(truth, mask, bands, slices=3)
    assert rv["rows"] == [(0, 9, 0), (9, 9, 10), (9, 9, 10)]
    assert rv["whole_slice"] == [(0, 0, 9, 0)]  # slice 0: mask none, experts 9 px, nothing possible
    assert myo["whole_slice"] == [] and lv["whole_slice"] == []


def test_the_table_runs_on_a_labelled_folder(load_script, smoke_model, phantom_dir, capsys):
    script = load_script("experiments/basal_slice_decisions.py")
    assert script.main([str(phantom_dir / "h5" / "val"), "--model", str(smoke_model), "--slices", "2"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("| volume | structure |") and len(lines) > 2
    assert all(line.count("|") == 5 for line in lines)


def test_the_experts_basal_end_systolic_rv_is_found_on_their_first_diastolic_rv_slice(load_script):
    script = load_script("experiments/basal_slice_decisions.py")
    ed = np.zeros((4, 8, 8), np.uint8)
    ed[1:4, 2:5, 2:5] = 1  # the ED RV starts on slice 1
    es = np.zeros_like(ed)
    es[2:4, 2:4, 2:4] = 1
    assert script.basal_es_rv(ed, es, 0.5) == (False, 0.0)  # left out at ES there
    es[1, 2:4, 2:4] = 1
    assert script.basal_es_rv(ed, es, 0.5) == (True, 2.0)  # 4 px of 0.5 mL
    assert script.basal_es_rv(np.zeros_like(ed), es, 0.5) is None
    assert script.habit_line([("p1", True, 2.0), ("p2", False, 0.0), ("p3", True, 6.0), ("p4", False, 0.0)]) == (
        "4 patients: the experts drew the RV at ES on the first slice of their ED RV in 2 (50 %); "
        "its volume there median 4.0 mL (range 2.0-6.0)")


def test_experts_only_reads_no_model(load_script, phantom_dir, capsys):
    script = load_script("experiments/basal_slice_decisions.py")
    assert script.main([str(phantom_dir / "h5" / "train"), "--experts-only"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[-1].startswith("3 patients: the experts drew the RV at ES") and len(out) == 4
