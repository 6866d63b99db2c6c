"""Each measure's estimated error (issue 36): the raw spreads from the model's probability bands,
the stroke-volume mismatch, the calibration fitted to a quantile of true errors, the limits a user
sets, and how ``cmrseg evaluate`` scores the verdict against real failures."""

import json

import numpy as np
import pytest
import torch

from cmrseg.data.volume import Geometry, Study, Volume
from cmrseg.errors import CmrsegError
from cmrseg.evaluation.quality_check import names_gross_measure, qc_performance
from cmrseg.inference.error_estimates import (
    CALIBRATION_FILE,
    DEFAULT_LIMITS,
    MEASURES,
    basal_stake,
    error_features,
    estimate,
    experts_sv_allowance,
    fit_calibration,
    fit_qc_calibration,
    load_calibration,
    parse_limits,
)
from cmrseg.inference.predictor import BAND, Prediction
from cmrseg.inference.quality import qc_verdict
from cmrseg.labels import LV, RV


def test_limits_default_to_the_failure_definition_and_take_overrides():
    assert parse_limits(None) == DEFAULT_LIMITS
    limits = parse_limits("LVEF=5, volume=15")
    assert limits["LVEF (%)"] == 5.0 and limits["RVEF (%)"] == 10.0
    assert {limits[m] for m in ("LVEDV (mL)", "LVESV (mL)", "RVEDV (mL)", "RVESV (mL)")} == {15.0}
    for bad in ("LVEF", "LVEF=x", "EF=8", "LVM=-1", "RVEF=nan"):
        with pytest.raises(CmrsegError, match="--qc-limits"):
            parse_limits(bad)


def _band_prediction(sure, possible):
    """A prediction whose RV, MYO and LV each have ``sure`` pixels at probability 0.9 and
    ``possible - sure`` more at 0.4, on each of 2 slices."""
    probs = torch.zeros(2, 4, 40, 40)
    probs[:, 0] = 1.0
    for c in (1, 2, 3):
        row = 10 * c
        probs[:, :, row, :possible] = torch.tensor([0.6, 0, 0, 0]).view(4, 1)
        probs[:, c, row, :possible] = 0.4
        probs[:, 0, row, :sure] = 0.1
        probs[:, c, row, :sure] = 0.9
    return Prediction.from_probabilities(probs, None, "none", 0.0)


def test_bands_count_the_sure_and_the_possible_pixels_and_give_each_measure_its_spread():
    assert BAND == (0.25, 0.75)
    ed, es = _band_prediction(30, 40), _band_prediction(10, 14)
    np.testing.assert_array_equal(ed.bands[0], [[30, 40]] * 3)
    geom = Geometry(spacing=(10.0, 1.0, 1.0))
    frames = [Volume(np.zeros((2, 40, 40), np.float32), geom, None, f"f{t}", "nifti") for t in range(2)]
    study = Study("s", frames, None, "cine")
    voxel_ml = 0.01
    meas = {"voxel_ml": voxel_ml, "ed": 0, "es": 1,
            "measures": {"LVEDV (mL)": 0.7, "LVESV (mL)": 0.24, "RVEDV (mL)": 0.7, "RVESV (mL)": 0.24,
                         "LVSV (mL)": 0.46, "RVSV (mL)": 0.36}}
    features = error_features(study, [ed, es], meas)
    raw = features["raw"]
    # half the band: (possible - sure) pixels on 2 slices, halved, in mL
    assert raw["LVEDV (mL)"] == pytest.approx(10 * 2 / 2 * voxel_ml)
    assert raw["RVESV (mL)"] == pytest.approx(4 * 2 / 2 * voxel_ml)
    assert raw["LVM (g)"] == pytest.approx(1.05 * raw["LVEDV (mL)"])
    d_ed, d_es = raw["LVEDV (mL)"], raw["LVESV (mL)"]
    assert raw["LVEF (%)"] == pytest.approx(100 * np.hypot(d_es / 0.7, 0.24 * d_ed / 0.7 ** 2))
    assert features["sv_mismatch (mL)"] == pytest.approx(0.1)
    assert error_features(study, [ed, ed], {**meas, "es": 0}) is None  # one frame: no ejection
    assert error_features(study, [ed, es], {**meas, "voxel_ml": None}) is None


def test_the_basal_stake_is_the_slice_a_model_may_take_or_drop_whole():
    ed, es = np.zeros((4, 10, 10), np.uint8), np.zeros((4, 10, 10), np.uint8)
    ed[0:3, :5, :4] = RV  # 20 px on slices 0-2
    es[1, :2, :5] = RV  # at ES the RV starts a slice lower, 10 px there
    es[2, :3, :3] = RV
    ed[1:3, 6:, 6:] = LV  # 16 px
    es[1, 6:8, 6:9] = LV  # 6 px
    m = {"LVEDV (mL)": 100.0, "LVESV (mL)": 40.0, "RVEDV (mL)": 100.0, "RVESV (mL)": 50.0}
    stake = basal_stake(ed, es, 0.5, m)
    assert stake["RVEDV (mL)"] == 10.0  # ED's most basal RV slice: 20 px x 0.5 mL
    # ES's most basal RV slice holds 10 px, but ED has the RV one slice higher (20 px): that one
    assert stake["RVESV (mL)"] == 10.0
    # the LV starts on slice 1 in both phases: each phase's own most basal slice
    assert stake["LVEDV (mL)"] == 8.0 and stake["LVESV (mL)"] == 3.0
    assert stake["LVM (g)"] == 0.0 and stake["RVEF (%)"] > 0


def test_the_estimate_adds_the_mismatch_in_each_measures_units():
    features = {"raw": {m: 1.0 for m in MEASURES}, "sv_mismatch (mL)": 20.0}
    measures = {"LVEDV (mL)": 200.0, "RVEDV (mL)": 100.0}
    calibration = {"measures": {m: {"a": 0.5, "b": 2.0, "c": 1.0} for m in MEASURES}}
    est = estimate(features, measures, calibration)
    assert est["LVEDV (mL)"] == pytest.approx(0.5 + 2 + 20)  # mL
    assert est["LVEF (%)"] == pytest.approx(0.5 + 2 + 10)  # 20 mL of a 200 mL EDV: 10 points
    assert est["RVEF (%)"] == pytest.approx(0.5 + 2 + 20)  # of a 100 mL EDV: 20 points
    assert est["LVM (g)"] == pytest.approx(0.5 + 2)  # mass has no stroke volume
    verdict, reasons = qc_verdict([], {}, est, DEFAULT_LIMITS)
    assert verdict == "review"
    assert "RVEF likely off by more than 10 points (likely error 22.5)" in reasons
    assert not any(r.startswith("LVM") for r in reasons)  # 2.5 g is within 20 g
    assert qc_verdict([], {}, est, {**DEFAULT_LIMITS, **{m: 100.0 for m in MEASURES}}) == ("ok", [])


def test_a_calibration_counts_only_the_mismatch_beyond_its_allowance():
    features = {"raw": {m: 1.0 for m in MEASURES}, "sv_mismatch (mL)": 20.0}
    measures = {"LVEDV (mL)": 200.0, "RVEDV (mL)": 100.0}
    constants = {m: {"a": 0.5, "b": 2.0, "c": 1.0} for m in MEASURES}
    est = estimate(features, measures, {"sv_allowance (mL)": 15.0, "measures": constants})
    assert est["LVEDV (mL)"] == pytest.approx(0.5 + 2 + 5)  # 20 mL apart, 15 allowed
    assert est["RVEF (%)"] == pytest.approx(0.5 + 2 + 5)  # 5 mL of a 100 mL EDV
    within = estimate({**features, "sv_mismatch (mL)": 9.0}, measures, {"sv_allowance (mL)": 15.0, "measures": constants})
    assert within["LVEDV (mL)"] == pytest.approx(0.5 + 2)  # never negative

    # the fit sees the same term, and keeps the allowance for every later estimate
    rng = np.random.default_rng(1)
    rows = []
    for _ in range(300):
        mismatch = rng.uniform(0, 60)
        err = max(0.0, mismatch - 20.0) * rng.uniform(0, 1)  # only a mismatch beyond 20 mL is an error
        rows.append({"features": {"raw": {m: 0.0 for m in MEASURES}, "sv_mismatch (mL)": mismatch},
                     "measures": {"LVEDV (mL)": 100.0}, "errors": {"LVEDV (mL)": err}})
    fitted = fit_qc_calibration(rows, allowance=20.0)
    assert fitted["sv_allowance (mL)"] == 20.0
    k = fitted["measures"]["LVEDV (mL)"]
    assert k["a"] == pytest.approx(0.0, abs=0.3) and k["c"] == pytest.approx(0.85, abs=0.1)
    # without the allowance the same errors need a term that overstates small mismatches
    plain = fit_qc_calibration(rows)
    assert "sv_allowance (mL)" not in plain
    small = {"raw": {m: 0.0 for m in MEASURES}, "sv_mismatch (mL)": 15.0}
    assert estimate(small, {}, fitted)["LVEDV (mL)"] < 0.5 < estimate(small, {}, plain)["LVEDV (mL)"]


def _labelled(patient: str, phase: str, lv: int, rv: int) -> Volume:
    label = np.zeros((2, 10, 10), np.uint8)
    label[0].flat[:lv] = LV
    label[1].flat[:rv] = RV
    return Volume(np.zeros((2, 10, 10), np.float32), Geometry(spacing=(10.0, 1.0, 1.0)), None, f"{patient}_{phase}",
                  "h5", label, {"patient": patient, "phase": phase})


def test_the_allowance_is_the_median_mismatch_of_the_experts_masks():
    # voxels of 0.01 mL: stroke volumes LV 0.5 / RV 0.1 mL (0.4 apart), 0.3 / 0.3 (0), 0.9 / 0.1 (0.8)
    volumes = [_labelled("p1", "ED", 60, 30), _labelled("p1", "ES", 10, 20),
               _labelled("p2", "ED", 50, 50), _labelled("p2", "ES", 20, 20),
               _labelled("p3", "ED", 90, 20), _labelled("p3", "ES", 0, 10),
               _labelled("p4", "ED", 90, 20)]  # no ES: not counted
    assert experts_sv_allowance(volumes) == pytest.approx(0.4)
    with pytest.raises(CmrsegError, match="stroke-volume allowance"):
        experts_sv_allowance(volumes[-1:])


def test_the_fit_is_the_85th_percentile_and_covers_85_percent_of_new_studies():
    rng = np.random.default_rng(0)

    def rows(n):
        out = []
        for _ in range(n):
            raw = rng.uniform(0, 10)
            features = {"raw": {m: raw for m in MEASURES}, "sv_mismatch (mL)": 0.0}
            err = rng.uniform(0, 1) * (2.0 + 1.5 * raw) * rng.choice([-1, 1])
            out.append({"features": features, "measures": {}, "errors": {m: err for m in MEASURES}})
        return out

    fitted = fit_calibration(rows(400))
    k = fitted["measures"]["LVEF (%)"]
    assert fitted["quantile"] == 0.85 and k["studies"] == 400
    assert k["a"] == pytest.approx(0.85 * 2.0, abs=0.5) and k["b"] == pytest.approx(0.85 * 1.5, abs=0.15)
    fresh = rows(2000)
    covered = np.mean([abs(r["errors"]["LVEF (%)"]) <= estimate(r["features"], r["measures"], fitted)["LVEF (%)"]
                       for r in fresh])
    assert 0.80 <= covered <= 0.90


def test_the_verdicts_likely_error_is_a_lower_percentile_than_the_interval():
    rng = np.random.default_rng(1)
    rows = []
    for _ in range(400):
        raw = rng.uniform(0, 10)
        err = rng.uniform(0, 1) * (2.0 + 1.5 * raw)
        rows.append({"features": {"raw": {m: raw for m in MEASURES}, "sv_mismatch (mL)": 0.0}, "measures": {},
                     "errors": {m: err for m in MEASURES}})
    fitted = fit_qc_calibration(rows)
    assert fitted["quantile"] == 0.85 and fitted["verdict_quantile"] == 0.6
    features = {"raw": {m: 8.0 for m in MEASURES}, "sv_mismatch (mL)": 0.0}
    interval = estimate(features, {}, fitted)["RVEF (%)"]
    likely = estimate(features, {}, fitted, part="verdict")["RVEF (%)"]
    assert interval == pytest.approx(0.85 * 14.0, abs=1.0) and likely == pytest.approx(0.6 * 14.0, abs=1.0)
    # an error that may exceed 10 points (interval 11.9) but more likely does not (8.4): no review
    assert qc_verdict([], {}, {"RVEF (%)": likely}, DEFAULT_LIMITS)[0] == "ok"
    assert estimate(features, {}, {"measures": fitted["measures"]}, part="verdict") == {}  # older files: none


def _patients(rng, scales, per_patient=30):
    """Studies of patients whose true errors are ``scale`` x (2 + 1.5 raw) x uniform(0, 1)."""
    out = []
    for p, scale in enumerate(scales):
        for _ in range(per_patient):
            raw = rng.uniform(0, 10)
            err = scale * rng.uniform(0, 1) * (2.0 + 1.5 * raw)
            out.append({"features": {"raw": {m: raw for m in MEASURES}, "sv_mismatch (mL)": 0.0}, "measures": {},
                        "errors": {m: err for m in MEASURES}, "patient": f"p{p}"})
    return out


def test_intervals_are_widened_to_cover_a_patient_left_out():
    rng = np.random.default_rng(2)
    rows = _patients(rng, [1, 1, 1, 1, 6])  # one patient's errors six times the others'
    plain = fit_qc_calibration(rows)
    wide = fit_qc_calibration(rows, widen=True)
    k, k0 = wide["measures"]["RVEF (%)"], plain["measures"]["RVEF (%)"]
    # fitted without the outlier patient, the others' intervals cover few of its studies, a fifth
    # of all studies: the 85th percentile of the left-out ratios lies among them
    assert k["widened_by"] > 1.5
    assert k["a"] == pytest.approx(k0["a"] * k["widened_by"]) and k["b"] == pytest.approx(k0["b"] * k["widened_by"])
    assert wide["verdict"] == plain["verdict"]  # the verdict's likely error is never widened
    # the factor makes 85 % of the studies' left-out ratios fall inside, and the next smaller ratio
    # would not reach split-conformal's rank, ceil(0.85 (n + 1)) of n
    ratios = []
    for p in sorted({r["patient"] for r in rows}):
        other = fit_calibration([r for r in rows if r["patient"] != p])
        ratios += [abs(r["errors"]["RVEF (%)"]) / estimate(r["features"], {}, other)["RVEF (%)"]
                   for r in rows if r["patient"] == p]
    assert np.mean(np.array(ratios) <= k["widened_by"] + 1e-9) >= 0.85
    assert np.sum(np.array(ratios) < k["widened_by"] - 1e-9) < np.ceil(0.85 * (len(ratios) + 1))


def test_alike_patients_barely_widen_and_rows_without_patients_not_at_all():
    rng = np.random.default_rng(3)
    rows = _patients(rng, [1] * 6)
    assert 0.8 < fit_qc_calibration(rows, widen=True)["measures"]["LVEF (%)"]["widened_by"] < 1.3
    anonymous = [{k: v for k, v in r.items() if k != "patient"} for r in rows]
    assert "widened_by" not in fit_qc_calibration(anonymous, widen=True)["measures"]["LVEF (%)"]
    assert fit_qc_calibration(anonymous, widen=True)["measures"] == fit_qc_calibration(rows)["measures"]


def test_a_model_uses_its_own_calibration_else_the_defaults_else_none(tmp_path, monkeypatch):
    own = tmp_path / "model"
    own.mkdir()
    (own / CALIBRATION_FILE).write_text(json.dumps({"source": "val", "measures": {}}))
    assert load_calibration(["", str(tmp_path / "none"), str(own)])["source"] == "val"
    import cmrseg.inference.error_estimates as ee

    shipped = tmp_path / "weights"
    (shipped / ee.DEFAULT_MODEL).mkdir(parents=True)
    monkeypatch.setattr(ee, "WEIGHTS_DIR", shipped)
    assert load_calibration([str(tmp_path / "none")]) == {}  # nothing shipped: no estimates
    (shipped / ee.DEFAULT_MODEL / CALIBRATION_FILE).write_text(json.dumps({"source": "acdc val", "measures": {}}))
    assert "the shipped default's (acdc val)" in load_calibration([str(tmp_path / "none")])["source"]


def _outcome(failed, qc, estimate_, true_error, gross=False):
    return {"failed": failed, "gross": gross, "qc": qc, "estimates": {"LVEF (%)": estimate_},
            "errors": {m: 0.0 for m in DEFAULT_LIMITS} | {"LVEF (%)": true_error}}


def test_qc_performance_counts_recall_wasted_reviews_coverage_and_auroc():
    outcomes = [_outcome(True, "review", 12.0, 11.0, gross=True), _outcome(True, "ok", 4.0, 9.0),
                _outcome(False, "ok", 3.0, 1.0), _outcome(False, "review", 9.0, 2.0), _outcome(False, "ok", 2.0, 2.5)]
    perf = qc_performance(outcomes)
    assert perf["studies"] == 5 and perf["failed"] == 2 and perf["good"] == 3
    assert perf["recall"] == 0.5 and perf["good_to_review"] == pytest.approx(1 / 3)
    assert perf["gross"] == 1 and perf["gross_caught"] == 1
    # 9 > 4 and 2.5 > 2 missed; the intervals 12, 4, 3, 9, 2
    assert perf["coverage"]["LVEF (%)"] == {"studies": 5, "covered": 0.6, "median": 4.0}
    assert perf["coverage"]["RVEF (%)"] == {"studies": 0, "covered": None, "median": None}
    # scores 12, 4 for the failures against 3, 9, 2: pairs ranked right 3 + 2 of 6
    assert perf["auroc"] == pytest.approx(5 / 6)


def test_a_gross_failure_counts_as_named_only_when_a_reason_names_its_measure():
    """Issue 36: every gross failure flagged *with that measure named*: an EF off by more than 15
    points, or a measure of a structure whose Dice is below 0.6; ``fail`` rejects them all."""
    def gross(qc, reasons, rvef=-18.0, rv_dice=0.54):
        return {**_outcome(True, qc, 3.0, 0.0, gross=True), "qc_reasons": reasons,
                "errors": {m: 0.0 for m in DEFAULT_LIMITS} | {"RVEF (%)": rvef},
                "dice": {"ED": {"RV": 0.9, "MYO": 0.9, "LV": 0.9}, "ES": {"RV": rv_dice, "MYO": 0.9, "LV": 0.9}}}

    named = gross("review", ["class_missing_mid: RV; in doubt: RVEF, RVEDV, RVESV"])
    other = gross("review", ["class_missing_mid: MYO; in doubt: LVM"])
    dice_only = gross("review", ["RVESV likely off by more than 25 mL (likely error 30.0)"], rvef=-5.0)
    lv_instead = gross("review", ["LVEF likely off by more than 8 points (likely error 9.0)"])
    assert names_gross_measure(named) and names_gross_measure(dice_only) and names_gross_measure(gross("fail", []))
    assert not names_gross_measure(other) and not names_gross_measure(lv_instead)
    perf = qc_performance([named, other, gross("ok", [])])
    assert perf["gross"] == 3 and perf["gross_caught"] == 2 and perf["gross_named"] == 1
