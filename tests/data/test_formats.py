"""The format table is the one place formats are known: a format added there alone (here a
toy ``.npz`` stack with its spacing) is found by discovery, read and written back by
``cmrseg segment``'s readers and writers, and scored by ``cmrseg evaluate``."""

from pathlib import Path

import numpy as np
import pytest

from cmrseg.data.io import formats
from cmrseg.data.io.discovery import discover
from cmrseg.data.io.formats import Format, format_of
from cmrseg.data.io.readers import mask_output_path, read_label_volume, read_volumes, write_mask
from cmrseg.data.volume import Geometry, Volume
from cmrseg.evaluation.evaluate import evaluate_folders


def _read(path: Path, slice_order: str, spacing) -> list[Volume]:
    with np.load(path) as z:
        return [Volume(z["image"].astype(np.float32), Geometry(spacing=tuple(z["spacing"]), spacing_source="header"),
                       path, path.name[:-4], "npz")]


def _write(mask: np.ndarray, like: Volume, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, label=mask, spacing=np.array(like.geometry.spacing))
    return path


def _read_label(path: Path, slice_order: str) -> list[Volume]:
    with np.load(path) as z:
        label = z["label"]
        return [Volume(np.zeros((label.shape[0], 0, 0), np.float32), Geometry(spacing=tuple(z["spacing"])), path,
                       path.name[:-4], "npz", label=label)]


NPZ = Format("npz", ".npz", (".npz",), _read, _write, None, _read_label)


@pytest.fixture
def with_npz(monkeypatch):
    monkeypatch.setattr(formats, "FORMATS", formats.FORMATS + (NPZ,))


def _stack(path: Path, label: np.ndarray) -> None:
    np.savez(path, image=np.random.default_rng(0).random(label.shape), spacing=np.array([10.0, 1.5, 1.5]), label=label)


def test_a_format_added_to_the_table_is_read_written_found_and_scored(tmp_path, with_npz):
    gt = np.zeros((4, 16, 16), np.uint8)
    gt[:, 4:12, 4:12] = 3
    gt[:, 6:10, 6:10] = 0
    (tmp_path / "in").mkdir()
    _stack(tmp_path / "in" / "case1.npz", gt)
    assert format_of(tmp_path / "in" / "case1.npz") is NPZ
    sources, skipped = discover([tmp_path / "in"])
    assert [(s.name, s.kind) for s in sources] == [("case1", "file")] and not skipped
    (vol,) = read_volumes(sources[0].paths[0])
    assert vol.fmt == "npz" and vol.geometry.spacing == (10.0, 1.5, 1.5)
    assert mask_output_path(vol, tmp_path / "pred") == tmp_path / "pred" / "case1.npz"
    pred = gt.copy()
    pred[0] = 0  # one slice missed
    write_mask(pred, vol, tmp_path / "pred")
    assert read_label_volume(tmp_path / "pred" / "case1.npz").label.tolist() == pred.tolist()
    summary = evaluate_folders(tmp_path / "pred", tmp_path / "in", tmp_path / "eval", progress=False)
    assert summary["n_volumes"] == 1
    assert summary["levels"]["volume"]["LV"] == pytest.approx(2 * 3 / (3 + 4))


def test_without_the_table_row_the_file_is_an_unknown_format(tmp_path):
    _stack(tmp_path / "case1.npz", np.zeros((2, 8, 8), np.uint8))
    assert format_of(tmp_path / "case1.npz") is None
    with pytest.raises(Exception, match=r"unknown format \(expected .nii, .nii.gz, .h5, .hdf5, DICOM\)"):
        read_volumes(tmp_path / "case1.npz")
