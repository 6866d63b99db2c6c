"""experiments/ship_decision.py: rules 14 and 15 of docs/decisions.md, bar by bar."""

import json


def _evaluation(folder, volume=0.925, apex=0.84, lvm_bias=0.5, lvm=6.0, lvef=1.9, rvef=7.0, fragment=0.0, **volumes):
    folder.mkdir()
    clinical = {"LVM (g) bias": lvm_bias, "LVM (g) MAE": lvm, "LVEF (%) MAE": lvef, "RVEF (%) MAE": rvef}
    clinical.update({f"{k} (mL) MAE": volumes.get(k, 5.0) for k in ("LVEDV", "LVESV", "RVEDV", "RVESV")})
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


def test_rule_17_the_student_against_the_default_beside_it(tmp_path, load_script):
    rules = load_script("experiments/ship_decision.py")

    def holds(bars):
        return all(ok for _, _, ok in bars)

    default = rules.scores(_evaluation(tmp_path / "default", volume=0.9173, apex=0.8288))
    shift = tmp_path / "shift.json"
    shift.write_text(json.dumps({"overall": {"mean volume Dice": 0.9066}}))
    assert rules.shift_mean(shift) == 0.9066
    # 0.005 below the default's 0.917 and 0.01 below its 0.829 still pass, with a better shift mean
    ok = rules.scores(_evaluation(tmp_path / "ok", volume=0.9116, apex=0.8186, lvef=1.9 * 1.05))
    assert holds(rules.rule17_bars(ok, default, 0.91, 0.9066))
    assert not holds(rules.rule17_bars(ok, default, 0.9066, 0.9066))  # the shift mean must rise
    for i, bad in enumerate(({"volume": 0.9114}, {"apex": 0.8184}, {"rvef": 7.0 * 1.05 + 0.01},
                             {"RVESV": 5.0 * 1.05 + 0.01}, {"fragment": 0.05})):
        student = rules.scores(_evaluation(tmp_path / f"bad{i}", **bad))
        failed = [name for name, _, ok in rules.rule17_bars(student, default, 0.92, 0.9066) if not ok]
        assert len(failed) == 1, (bad, failed)


def _report(folder, volume_dice, lvm_errors):
    """A cmrseg evaluate folder's per-patient files: every class's volume Dice, one LV mass error per patient."""
    folder.mkdir()
    dice = ",".join(f"volume {c} Dice" for c in ("RV", "MYO", "LV"))
    (folder / "per_volume.csv").write_text("volume,patient,phase," + dice + "\n" + "".join(
        f"p{i}_ED,p{i},ED,{d},{d},{d}\n" for i, d in enumerate(volume_dice)))
    (folder / "clinical.csv").write_text("patient,error LVM (g)\n" + "".join(
        f"p{i},{e}\n" for i, e in enumerate(lvm_errors)))
    return folder


def test_against_the_default_the_paired_comparison_is_added(tmp_path, load_script):
    rules = load_script("experiments/ship_decision.py")
    default = _report(tmp_path / "default", [0.90 + 0.001 * i for i in range(8)], [1, -1, 2, -2, 0.5, -0.5, 1, -1])
    a = _report(tmp_path / "a", [0.91 + 0.0012 * i for i in range(8)], [3.1, 1.2, 4.3, 0.4, 2.6, 1.7, 3.2, 1.05])
    text = rules.paired_with_default(default, {"A": a}, tmp_path / "cmp")
    table = [[cell.strip() for cell in line.strip().strip("|").split("|")] for line in text.splitlines()
             if line.startswith("|")]
    cells = dict(zip(table[0], table[2]))
    assert cells["model"] == "A" and len(table) == 3
    assert cells["volume Dice"].startswith("+0.01") and cells["volume Dice"].endswith("*")  # 8 of 8 better
    assert cells["error LVM (g)"].strip().startswith("+2.")  # moved up by about 2 g for every patient
    assert (tmp_path / "cmp" / "compare.md").is_file() and (tmp_path / "cmp" / "compare.png").is_file()
    # each one's wall-thickness slope from its summary.json (none there: nan)
    (a / "summary.json").write_text(json.dumps({"wall_thickness": {"ED": {"all": {"slope": 0.91}},
                                                                   "ES": {"all": {"slope": 0.97}}}}))
    text = rules.paired_with_default(default, {"A": a}, tmp_path / "cmp")
    assert "  A: 0.91 / 0.97" in text and "  default: nan / nan" in text
