"""``cmrseg evaluate --groups FILE.csv --group-by COLUMN``: errors by vendor, centre or any
column of a subjects table, instead of ACDC's pathology groups."""

import subprocess
import sys

import pytest

from cmrseg.errors import InputError
from cmrseg.evaluation.groups import read_groups


def _table(path, text):
    path.write_text(text)
    return path


def test_the_subject_column_is_found_and_names_cases_exactly_or_as_a_prefix(tmp_path):
    csv = _table(tmp_path / "info.csv", ",External code,VendorName,Centre\n0,A0S9V9,Siemens,1\n1,B1X2,GE,2\n"
                                        "2,B1X2_sa,Philips,3\n3,ZZZ,Canon,4\n")
    found = read_groups(csv, "VendorName", ["A0S9V9_sa", "B1X2_sa", "C3_sa"])
    assert found == {"A0S9V9_sa": "Siemens", "B1X2_sa": "Philips"}  # the longest value naming a case wins
    assert read_groups(csv, "Centre", ["A0S9V9"]) == {"A0S9V9": "1"}
    assert read_groups(csv, "VendorName", ["A0S9V9x", "A0S9V9_sa"]) == {"A0S9V9_sa": "Siemens"}  # prefix + "_" only
    with pytest.raises(InputError, match=r"info.csv: no column 'Vendor' for --group-by \(columns: , External code"):
        read_groups(csv, "Vendor", ["A0S9V9_sa"])
    with pytest.raises(InputError, match="no column names the evaluated cases"):
        read_groups(csv, "VendorName", ["patient001"])


def test_cmrseg_evaluate_reports_by_the_chosen_column(phantom_dir, tmp_path):
    val = phantom_dir / "h5" / "train"
    csv = _table(tmp_path / "vendors.csv", "subject,scanner\npatient001,GE\npatient002,GE\npatient003,Siemens\n")
    res = subprocess.run([sys.executable, "-m", "cmrseg", "evaluate", "--pred", str(val), "--gt", str(val),
                          "--groups", str(csv), "--group-by", "scanner", "-o", str(tmp_path / "r")],
                         capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-2000:]
    table = (tmp_path / "r" / "table.md").read_text()
    assert "Volume Dice by scanner" in table and "| GE | 1.000 |" in table and "| Siemens | 1.000 |" in table
    assert "| GE | 2 |" in table and "| Siemens | 1 |" in table  # patients per group in the clinical errors
    bad = subprocess.run([sys.executable, "-m", "cmrseg", "evaluate", "--pred", str(val), "--gt", str(val),
                          "--groups", str(csv), "--group-by", "vendor", "-o", str(tmp_path / "r2")],
                         capture_output=True, text=True)
    assert bad.returncode == 2 and "no column 'vendor'" in bad.stderr and len(bad.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "r2").exists()
