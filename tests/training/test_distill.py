"""Distillation (issue 35): the loss, the teacher's cached targets, and a student trained end to
end on the phantom from a trained two-stage teacher."""

import json
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from cmrseg.inference.options import InferenceOptions
from cmrseg.training.losses import DistillationLoss, SegLoss


def test_the_soft_term_is_the_cross_entropy_with_the_teachers_probabilities():
    torch.manual_seed(0)
    logits = torch.randn(3, 4, 8, 8, requires_grad=True)
    labels = torch.randint(0, 4, (3, 8, 8))
    onehot = F.one_hot(labels, 4).permute(0, 3, 1, 2).float()
    # a teacher that says what the labels say: the soft term is the plain cross-entropy
    loss = DistillationLoss(teacher_weight=1.0, dice_weight=0.0)
    torch.testing.assert_close(loss(logits, onehot, labels), F.cross_entropy(logits, labels))
    # the labels alone: the hard loss
    hard = DistillationLoss(teacher_weight=0.0, dice_weight=0.5)
    torch.testing.assert_close(hard(logits, onehot, labels), SegLoss(0.5)(logits, labels))
    # the gradient moves the student towards a soft teacher
    teacher = torch.softmax(torch.randn(3, 4, 8, 8), 1)
    DistillationLoss(1.0, 0.0)(logits, teacher, labels).backward()
    before = F.kl_div(F.log_softmax(logits, 1), teacher, reduction="batchmean")
    after = F.kl_div(F.log_softmax(logits - 0.5 * logits.grad, 1), teacher, reduction="batchmean")
    assert after < before


def _train(*args):
    return subprocess.run([sys.executable, "-m", "cmrseg", "train", *map(str, args)], capture_output=True, text=True)


STUDENT = ["--model", "seg_as", "--protocol", "smoke", "--set", "progress=false", "--set", "centred_inference=false",
           "--set", "augment={crop: 0, quarter_turns: 0.5, slice_mix: 0.5, sharpen: 1.0, gibbs: 0.5, shading: 0.4, "
           "hot_spot: 1.5, curve: 0.7, rician: 0.05, vendor_prob: 0.5, renormalise: true}"]


@pytest.mark.slow
def test_a_student_learns_from_a_teacher_and_reuses_its_targets(phantom_dir, smoke_model, tmp_path):
    out = tmp_path / "student"
    res = _train("--data", phantom_dir / "h5", "--out", out, *STUDENT, "--set", f"teacher={smoke_model}",
                 "--set", f"init_weights={smoke_model}")  # a two-stage model's weights: its Seg stage starts the student
    assert res.returncode == 0, res.stderr[-2000:]
    meta = json.loads((out / "model.json").read_text())
    assert meta["model"] == "seg_as" and meta["teacher"] == str(smoke_model) and meta["inference_crop"] is None
    stamp = json.loads((out / "teacher" / "stamp.json").read_text())
    assert stamp["teacher"] == str(smoke_model) and len(stamp["stacks"]) == 6
    header = (out / "log.csv").read_text().splitlines()
    assert header[0].split(",")[7:9] == ["soft", "hard"] and all(row.split(",")[7] for row in header[1:])
    # the targets are the teacher's canvas probabilities, as cmrseg segment computes them
    import numpy as np

    from cmrseg.data.dataset import StackDataset
    from cmrseg.data.preprocessing import PreprocessConfig
    from cmrseg.inference.ensemble import load_predictor

    teacher = load_predictor(str(smoke_model), InferenceOptions(device="cpu"))
    ds = StackDataset.from_folder(phantom_dir / "h5" / "train", PreprocessConfig(**meta["preprocess"]), progress=False)
    with np.load(out / "teacher" / "targets.npz") as data:
        probs, _ = teacher.predict_canvas(torch.from_numpy(ds.records[0].image).float().div(255)[:, None])
        assert np.abs(data["stack0"].astype(np.float32) / 255 - probs.numpy()).max() <= 0.5 / 255 + 1e-6
    # a second run with the same teacher and data reuses them; a student on another canvas is refused
    mtime = (out / "teacher" / "targets.npz").stat().st_mtime_ns
    (out / "model.json").unlink()  # unfinished again: it resumes
    assert _train("--data", phantom_dir / "h5", "--out", out, *STUDENT, "--set", f"teacher={smoke_model}").returncode == 0
    assert (out / "teacher" / "targets.npz").stat().st_mtime_ns == mtime
    res = _train("--data", phantom_dir / "h5", "--out", tmp_path / "other", *STUDENT, "--set", f"teacher={smoke_model}",
                 "--set", "preprocess.canvas=80")
    assert res.returncode == 2 and "another canvas" in res.stderr


def test_a_student_with_a_classifier_is_refused(phantom_dir, smoke_model, tmp_path):
    res = _train("--data", phantom_dir / "h5", "--out", tmp_path / "s", "--model", "seg_as_mt", "--protocol", "smoke",
                 "--set", f"teacher={smoke_model}")
    assert res.returncode == 2 and "without a classifier" in res.stderr
    assert not (tmp_path / "s" / "teacher").exists()  # refused before the teacher ran
