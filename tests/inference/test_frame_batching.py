"""``--frames-per-forward``: a whole-canvas model segments several frames of a cine in one forward
pass and gives what it gives one frame at a time; heart-centred models stay one stack per pass."""

import numpy as np
import pytest
import torch

from cmrseg.data.volume import Geometry, Volume
from cmrseg.errors import CmrsegError
from cmrseg.inference.options import InferenceOptions
from cmrseg.inference.predictor import FRAMES_PER_FORWARD, Predictor
from cmrseg.models import create_model

META = {"model": "seg_as", "preprocess": {"target_spacing": 1.6, "canvas": 96, "percentiles": [0.5, 99.5]},
        "inference_crop": None}


def _cine(frames=5, slices=6):
    rng = np.random.default_rng(0)
    geom = Geometry(spacing=(8.0, 1.6, 1.6))
    yy, xx = np.mgrid[0:80, 0:88]
    disc = (np.hypot(yy - 40, xx - 44) < 14).astype(np.float32)
    return [Volume((disc * (1 + 0.1 * t) + 0.2 * rng.random((slices, 80, 88))).astype(np.float32), geom, None,
                   f"f{t}", "nifti") for t in range(frames)]


def _predictor(per: str, tta: str = "off", crop=None) -> Predictor:
    torch.manual_seed(0)
    model = create_model("seg_as", widths=(4, 8, 16), heads=2)
    return Predictor(model, {**META, "inference_crop": crop}, InferenceOptions(device="cpu", frames_per_forward=per,
                                                                              tta=tta))


@pytest.mark.parametrize("tta", ["off", "on"])
def test_frames_in_one_pass_give_the_masks_of_one_frame_at_a_time(tta):
    cine = _cine(frames=5 if tta == "off" else 3, slices=6 if tta == "off" else 4)
    one, three = _predictor("1", tta), _predictor("3" if tta == "off" else "2", tta)
    assert one.frames_per_forward == 1 and three.frames_per_forward == (3 if tta == "off" else 2)
    calls = []
    three.model.register_forward_hook(lambda m, args, kwargs, out: calls.append(kwargs.get("stack_sizes")),
                                      with_kwargs=True)
    alone, batched = one.predict_volumes(cine, keep_probabilities=True), three.predict_volumes(cine, True)
    # 5 frames in passes of 3 and 2 stacks (with flips, 3 in passes of 2 and 1), each once per flip
    expected = [[6, 6, 6], [6, 6]] if tta == "off" else [[4, 4]] * 4 + [None] * 4
    assert calls == expected
    for a, b in zip(alone, batched):
        np.testing.assert_allclose(a.probabilities.astype(np.float32), b.probabilities.astype(np.float32), atol=2e-3)
        assert (a.mask == b.mask).mean() > 0.999
        np.testing.assert_array_equal(a.bands.shape, b.bands.shape)
        assert b.seconds > 0


def test_heart_centred_models_run_one_stack_per_pass_and_auto_is_one_on_a_cpu():
    cropped = _predictor("4", crop=64)
    calls = []
    cropped.model.register_forward_hook(lambda m, args, kwargs, out: calls.append(kwargs.get("stack_sizes")),
                                        with_kwargs=True)
    cropped.predict_volumes(_cine(frames=2))
    assert all(c is None for c in calls)  # one stack at a time (locator pass and cropped pass)
    assert _predictor("auto").frames_per_forward == FRAMES_PER_FORWARD[False] == 1
    with pytest.raises(CmrsegError, match="several stacks"):
        cropped.predict_canvas(torch.zeros(4, 1, 96, 96), [2, 2])
    for bad in ("0", "-1", "two"):
        with pytest.raises(CmrsegError, match="frames-per-forward"):
            InferenceOptions(frames_per_forward=bad)
