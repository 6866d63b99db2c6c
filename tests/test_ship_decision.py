"""experiments/ship_decision.py: rules 14 and 15 of docs/RESULTS.md, bar by bar."""

import json


def _evaluation(folder, volume=0.925, apex=0.84, lvm_bias=0.5, lvm=6.0, lvef=1.9, rvef=7.0, fragment=0.0):
    folder.mkdir()
    clinical = {"LVM (g) bias": lvm_bias, "LVM (g) MAE": lvm, "LVEF (%) MAE": lvef, "RVEF (%) MAE": rvef}
    (folder / "summary.json").write_text(json.dumps({
        "levels": {"volume": {"avg": volume}, "apex": {"avg": apex}}, "fragment_rate": fragment, "hole_rate": 0.0,
        "clinical": {"all": clinical}}))
    return folder


def test_rule_14_bars_and_rule_15_against_a(tmp_path, load_script):
    rules = load_script("experiments/ship_decision.py")

    def holds(bars):
        return all(ok for _, _, ok in bars)

    a = rules.scores(_evaluation(tmp_path / "a"))
    assert holds(rules.rule14_bars(a))
    # the default's own scores, 0.9173 / 0.8288, are its 0.917 / 0.829: not above the volume bar
    assert not holds(rules.rule14_bars(rules.scores(_evaluation(tmp_path / "same", volume=0.9173, apex=0.8288))))
    for i, bad in enumerate(({"apex": 0.8284}, {"lvm_bias": -2.1}, {"rvef": 7.39 * 1.1 + 0.01}, {"fragment": 0.1})):
        assert not holds(rules.rule14_bars(rules.scores(_evaluation(tmp_path / f"bad{i}", **bad)))), bad
    b = rules.scores(_evaluation(tmp_path / "b", volume=0.927, lvef=1.99))
    assert holds(rules.rule15_bars(a, b, 2.4, 0.9, native_bf16=True))
    assert not holds(rules.rule15_bars(a, b, 2.6, 0.9, native_bf16=True))  # 2.5 s where bf16 is native
    assert holds(rules.rule15_bars(a, b, 5.8, 2.1, native_bf16=False))  # else 2.8 x the default's
    worse = rules.scores(_evaluation(tmp_path / "worse", volume=0.927, lvef=1.9 * 1.05 + 0.01))
    assert not holds(rules.rule15_bars(a, worse, 2.0, 0.9, native_bf16=True))  # an MAE more than 5 % above A's
    assert not holds(rules.rule15_bars(a, rules.scores(_evaluation(tmp_path / "tie")), 2.0, 0.9, native_bf16=True))
