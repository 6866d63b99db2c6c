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
