"""``experiments/slab_ties.py``: a thick-slice shift's Dice loss split into the truth's share
(the slab's ties) and the network's (issue 35)."""

import numpy as np


def test_ties_are_where_both_neighbours_agree_on_another_label(load_script):
    script = load_script("experiments/slab_ties.py")
    truth = np.zeros((4, 1, 3), np.uint8)
    truth[:, 0, 0] = (1, 3, 1, 1)  # slice 1 between two RVs: a tie
    truth[:, 0, 1] = (1, 3, 2, 2)  # neighbours disagree: the centre's half still wins
    truth[:, 0, 2] = (3, 1, 1, 3)  # end slices never tie
    ties = script.slab_ties(truth)
    assert ties[:, 0, 0].tolist() == [False, True, False, False]
    assert not ties[:, 0, 1:].any()
    assert script.flipped(truth)[:, 0, 0].tolist() == [1, 1, 1, 1]


def test_a_mask_wrong_only_on_ties_is_perfect_without_them(load_script):
    script = load_script("experiments/slab_ties.py")
    truth = np.zeros((3, 6, 6), np.uint8)
    truth[:, 1:5, 1:5] = 3
    truth[1, 2:4, 2:4] = 2  # a myocardium island between two LV slices: ties
    dice, outside, wrong, in_ties = script.score(truth, script.flipped(truth))
    assert dice < 1.0 and outside == 1.0 and wrong == in_ties == 4


def test_the_script_reads_folders_and_names_a_folder_missing_masks(load_script, phantom_dir, tmp_path, capsys):
    script = load_script("experiments/slab_ties.py")
    val = phantom_dir / "h5" / "val"
    assert script.main([str(val), str(val)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert "against itself" in out[0]
    assert out[1].startswith(f"{val}: ") and "volume Dice 1.000, without the slab ties 1.000" in out[1]
    assert script.main([str(val), str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and str(tmp_path) in err and "no mask for" in err
