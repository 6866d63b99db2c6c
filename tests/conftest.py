"""Shared fixtures: a small phantom cohort made once per test session, and the real ACDC
validation split when ``../shared/data/acdc`` is present (it is in CI)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

# Under pytest-xdist (`-n N`, as `make test` runs) every worker is one process of N sharing the
# machine's cores: each gets its share of threads, and the CLI subprocesses the tests start
# inherit it through OMP_NUM_THREADS, so N workers do not oversubscribe the cores.
_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
_THREADS = max(1, min(2, (os.cpu_count() or 1) // _WORKERS))
if _WORKERS > 1:
    os.environ["OMP_NUM_THREADS"] = str(_THREADS)
torch.set_num_threads(_THREADS)



def pytest_collection_modifyitems(config, items):
    """The longer integration tests (``slow``) first, in their files' order: with ``make test``'s
    ``--dist worksteal`` the workers start on them and share out the short ones at the end,
    instead of one worker finishing a long test alone."""
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)


REPO = Path(__file__).resolve().parents[1]
ACDC = REPO.parent / "shared" / "data" / "acdc"


@pytest.fixture(scope="session")
def load_script():
    """``load_script("experiments/x.py")``: a script of the repository (not a package) as a module."""
    import importlib.util
    import sys

    def load(relative: str):
        path = REPO / relative
        spec = importlib.util.spec_from_file_location(path.stem, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[path.stem] = module  # dataclasses in the script look their module up
        spec.loader.exec_module(module)
        return module

    return load


@pytest.fixture(scope="session")
def phantom_dir(tmp_path_factory) -> Path:
    from cmrseg.data.phantom import generate

    out = tmp_path_factory.mktemp("phantom")
    return generate(out, patients=3, val_patients=1, frames=4, seed=1, size=(128, 136), dicom=True, progress=False)


@pytest.fixture(scope="session")
def acdc_val() -> Path:
    if not (ACDC / "val").is_dir():
        pytest.skip("real ACDC data not present at ../shared/data/acdc")
    return ACDC / "val"


@pytest.fixture(scope="session")
def smoke_model(phantom_dir, tmp_path_factory) -> Path:
    """A two-stage model trained on the phantom with the smoke protocol (seconds)."""
    import subprocess
    import sys

    run = tmp_path_factory.mktemp("model") / "run"
    res = subprocess.run([sys.executable, "-m", "cmrseg", "train", "--model", "seg_as+ref_as_mt", "--protocol", "smoke",
                          "--data", str(phantom_dir / "h5"), "--out", str(run), "--set", "progress=false"],
                         capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-2000:]
    return run


class IntensityLabeller(torch.nn.Module):
    """Stand-in for a network: background 0, MYO 0.5, LV cavity 1.0 in the normalised image
    become class scores (RV never wins), soft at boundaries as a network's are, so the
    probabilities keep sub-pixel positions when they are resampled back. Each boundary's
    partial-volume pixels split at the midpoint of its two classes, as an unbiased network's
    would."""

    levels = torch.tensor([0.0, 10.0, 0.5, 1.0])

    def forward(self, x, stack_sizes=None):
        from cmrseg.models.outputs import SegOutput

        d = x - self.levels.view(1, -1, 1, 1).to(x)
        return SegOutput(-(d ** 2) * 20.0)


@pytest.fixture
def intensity_predictor():
    """``intensity_predictor(crop=None, postprocess="clean")``: a :class:`Predictor` running
    :class:`IntensityLabeller` (no training; the masks follow the image's intensities)."""
    from cmrseg.inference.options import InferenceOptions
    from cmrseg.inference.predictor import Predictor

    def make(crop: int | None = None, postprocess: str = "clean") -> Predictor:
        meta = {"model": "stand-in", "preprocess": {"target_spacing": 1.6, "canvas": 192, "percentiles": [0.5, 99.5]},
                "inference_crop": crop}
        return Predictor(IntensityLabeller(), meta, InferenceOptions(device="cpu", postprocess=postprocess))

    return make
