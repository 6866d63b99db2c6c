"""The batch report: what a reader sees for good, failed and skipped studies."""

import re

import numpy as np

from cmrseg.inference.report import montage, volume_curve, write_html
from cmrseg.measures.clinical import REPORT_MEASURES


def _figures(out):
    img = np.random.default_rng(0).random((3, 32, 32)).astype(np.float32)
    mask = np.zeros((3, 32, 32), np.uint8)
    mask[:, 10:20, 10:20] = 3
    m = montage([("ED", img, mask), ("ES", img, mask)], out / "figures" / "a_montage.png", title="a")
    c = volume_curve({"LV": [120.0, 80.0, 60.0], "RV": [130.0, 90.0, 70.0]}, [0, 40, 80], "trigger time (ms)",
                     0, 2, "mL", out / "figures" / "a_volumes.png", "a")
    return m, c


def test_report_shows_measures_verdicts_failures_and_skips(tmp_path):
    m, c = _figures(tmp_path)
    assert m.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and c.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    measures = {k: float(i + 1) for i, k in enumerate(REPORT_MEASURES)} | {"RVEF (%)": float("nan")}
    cases = [
        {"study": "a", "status": "ok", "qc": "review", "uncertainty": 0.123, "frames": 3, "ed_frame": 1, "es_frame": 3, "measures": measures,
         "montage": "figures/a_montage.png", "curve": "figures/a_volumes.png", "outputs": ["a.nii.gz"], "seconds": 1.5,
         "estimated_errors": {REPORT_MEASURES[1]: 2.5}, "qc_reasons": ["RVEF possibly off by more than 10 points"],
         "findings": ["LVM 403.0 g above the adult normal 50-200"],
         "flags": [{"flag": "lv_not_enclosed", "frame": "ED", "slice": 4, "detail": "LV touches <background>"}]},
        {"study": "<b>evil</b>", "status": "failed", "error": "x.nii.gz: unknown format"},
        {"study": "b", "status": "ok", "qc": "ok", "frames": 3, "ed_frame": 1, "es_frame": 3, "outputs": ["b.nii.gz"],
         "measures": measures | {"BSA (m2)": 1.8, "LVEDVi (mL/m2)": 0.5}, "seconds": 1.0, "flags": []},
    ]
    info = {"model": "seg_as+ref_as_mt", "device": "cpu", "skipped": [{"path": "loc/", "reason": "localiser"}]}
    path = write_html(tmp_path, cases, info, tmp_path / "report.html")
    text = path.read_text()
    assert "2 studies segmented, 1 failed" in text
    assert "<b>evil</b>" not in text and "&lt;b&gt;evil&lt;/b&gt;" in text  # names are escaped
    assert "x.nii.gz: unknown format" in text and "localiser" in text
    header = re.search(r"<h2>Measures</h2><p>.*?</p><table><tr>(.*?)</tr>", text).group(1)
    # the body-surface-area columns appear because one study has them
    assert re.findall(r"<th>(.*?)</th>", header)[4:-1] == [*REPORT_MEASURES, "BSA (m2)", "LVEDVi (mL/m2)"]
    row = re.search(r"<tr><td class='l'><a href='#a'>a</a></td>(.*?)</tr>", text).group(1)
    cells = re.findall(r"<td[^>]*>(.*?)</td>", row)
    assert cells[0] == "review" and cells[1] == "12 %"  # the share of its masks the model expects wrong
    # each measure with its estimated error where one was made (issue 36)
    assert cells[5:5 + len(REPORT_MEASURES)] == ["1.0", "2.0 ± 2.5", "3.0", "4.0", "5.0", "6.0", "–"]
    assert cells[5 + len(REPORT_MEASURES):-1] == ["–", "–"]
    row_b = re.findall(r"<td[^>]*>(.*?)</td>", re.search(r"<a href='#b'>b</a></td>(.*?)</tr>", text).group(1))
    assert row_b[1] == "–" and row_b[5 + len(REPORT_MEASURES):-1] == ["1.8", "0.5"]  # no uncertainty given
    assert text.count("data:image/png;base64,") == 2  # pictures embedded: the file works alone
    assert "lv_not_enclosed" in text and "LV touches &lt;background&gt;" in text
    # why it went to review, and the findings apart from the verdict
    assert re.search(r"<b>Why:</b></p><ul><li class='qc-review'>RVEF possibly off by more than 10 points</li>", text)
    assert re.search(r"<b>Findings</b>.*?<li>LVM 403.0 g above the adult normal 50-200</li>", text)


def test_montage_frames_the_slices_quality_control_flagged(tmp_path):
    import matplotlib.image

    from cmrseg.inference.report import FLAG_COLOUR

    img = np.random.default_rng(0).random((3, 32, 32)).astype(np.float32)
    mask = np.zeros((3, 32, 32), np.uint8)
    mask[:, 10:20, 10:20] = 3
    rows = [("ED", img, mask), ("ES", img, mask)]
    orange = np.array([int(FLAG_COLOUR[i:i + 2], 16) / 255 for i in (1, 3, 5)])

    def orange_pixels(flagged):
        path = montage(rows, tmp_path / f"m{len(flagged)}.png", flagged=flagged)
        rgb = matplotlib.image.imread(path)[..., :3]
        return int((np.abs(rgb - orange).max(axis=-1) < 0.05).sum())

    assert orange_pixels(set()) == 0
    one = orange_pixels({(1, 2)})
    assert one > 100 and orange_pixels({(1, 2), (0, 0)}) > 1.5 * one
