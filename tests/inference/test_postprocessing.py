"""Mask clean-up: fragments removed, holes filled, the protocol's topology counts go to zero,
and ``auto`` takes the model's own choice."""

import numpy as np
import pytest

from cmrseg.errors import CmrsegError
from cmrseg.inference.options import InferenceOptions
from cmrseg.inference.postprocessing import fill_holes, largest_component, postprocess
from cmrseg.inference.predictor import Predictor
from cmrseg.measures.topology import topology_counts


def _ring_slice():
    """MYO ring around an LV disc, a background hole in the LV, an RV pixel inside the
    ring, a stray MYO fragment and an RV crescent."""
    yy, xx = np.mgrid[:40, :40]
    r = np.hypot(yy - 20, xx - 20)
    m = np.zeros((40, 40), np.uint8)
    m[r < 10] = 2
    m[r < 7] = 3
    m[20, 20] = 0  # hole in the cavity
    m[20, 28] = 1  # RV pixel enclosed by the myocardium
    m[2:4, 2:4] = 2  # fragment
    m[5:9, 30:38] = 1
    return m[None]


def test_fill_holes_and_largest_component_fix_what_the_protocol_counts():
    m = _ring_slice()
    before = topology_counts(m)
    assert before.slices_with_holes == 1 and before.fragmented_pairs == 2  # MYO and RV
    filled = fill_holes(m)
    assert filled[0, 20, 20] == 3 and filled[0, 20, 28] == 2
    assert topology_counts(filled).slices_with_holes == 0
    cleaned = postprocess(m, "clean")
    after = topology_counts(cleaned)
    assert after.slices_with_holes == 0 and after.fragmented_pairs == 0
    assert (cleaned[0, 2:4, 2:4] == 0).all() and (cleaned[0, 5:9, 30:38] == 1).all()
    assert np.array_equal(largest_component(m)[0, 2:4, 2:4], np.zeros((2, 2)))
    assert np.array_equal(postprocess(m, "none"), m)


def test_auto_takes_the_models_choice_and_unknown_methods_fail():
    from cmrseg.models import create_model

    model = create_model("seg_ss", widths=(4, 8, 8, 16))
    meta = {"model": "seg_ss", "preprocess": {"target_spacing": None, "canvas": 32}}
    assert Predictor(model, meta, InferenceOptions(device="cpu")).postprocess == "none"
    assert Predictor(model, {**meta, "postprocess": "clean"}, InferenceOptions(device="cpu")).postprocess == "clean"
    assert Predictor(model, {**meta, "postprocess": "clean"}, InferenceOptions(device="cpu", postprocess="none")).postprocess == "none"
    with pytest.raises(CmrsegError, match="unknown post-processing"):
        InferenceOptions(postprocess="smooth")


@pytest.mark.parametrize("method", ["largest_component", "fill_holes", "clean"])
def test_working_on_the_foreground_box_changes_nothing(method):
    from cmrseg.inference.postprocessing import _METHODS

    rng = np.random.default_rng(0)
    stack = np.zeros((3, 90, 100), np.uint8)
    stack[0, 30:70, 25:65] = _ring_slice()[0]
    stack[1, 35:75, 60:100] = _ring_slice()[0]  # touches the image border
    stack[2, 40:60, 20:40] = (rng.random((20, 20)) < 0.3) * rng.integers(1, 4, (20, 20))
    assert np.array_equal(postprocess(stack, method), _METHODS[method](stack))
    assert np.array_equal(postprocess(np.zeros((2, 8, 8), np.uint8), method), np.zeros((2, 8, 8)))


def test_unknown_method_on_the_command_line_fails_in_one_line_before_writing(phantom_dir, tmp_path):
    import subprocess
    import sys

    h5 = sorted((phantom_dir / "h5" / "val").glob("*.h5"))[0]
    res = subprocess.run([sys.executable, "-m", "cmrseg", "segment", "-i", str(h5), "-o", str(tmp_path / "out"),
                          "--postprocess", "smooth"], capture_output=True, text=True)
    assert res.returncode == 2 and "unknown post-processing 'smooth'" in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1 and not (tmp_path / "out").exists()
