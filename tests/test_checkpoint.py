"""Weights and training state: round trips, safe loading, one-unit checkpoints, atomic files."""

import json
import pickle

import pytest
import torch
import torch.nn as nn

from cmrseg.atomic import atomic_path, write_text
from cmrseg.checkpoint import (
    find_training_state,
    half_precision,
    load_training_state,
    load_weights,
    read_tensors,
    save_training_state,
    save_weights,
)
from cmrseg.errors import InputError


def _net(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.Conv2d(4, 2, 1))


def test_weights_round_trip_and_prefix(tmp_path):
    a, b = _net(0), _net(1)
    a[1].running_var.fill_(1e-5)
    save_weights(a, tmp_path / "w.safetensors")
    load_weights(b, tmp_path / "w.safetensors")
    for (k, x), y in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(x, y), k
    wrapped = {f"seg.{k}": v for k, v in a.state_dict().items()}
    save_weights(wrapped, tmp_path / "two.safetensors")
    c = _net(2)
    load_weights(c, tmp_path / "two.safetensors", prefix="seg.")
    assert torch.equal(c[0].weight, a[0].weight)


def test_half_precision_keeps_normalisation_statistics_in_float32():
    t = half_precision(_net().state_dict())
    assert t["0.weight"].dtype == torch.float16
    assert t["1.running_var"].dtype == torch.float32 and t["1.num_batches_tracked"].dtype == torch.int64


def test_weights_that_do_not_fit_are_one_clear_error(tmp_path):
    save_weights(nn.Conv2d(1, 8, 3), tmp_path / "w.safetensors")
    with pytest.raises(InputError, match="do not fit"):
        load_weights(nn.Conv2d(1, 4, 3), tmp_path / "w.safetensors")


class _Payload:
    def __reduce__(self):  # would create a file if anything unpickled it
        return (open, (str(_Payload.target), "w"))


def test_a_pickle_is_refused_without_being_run(tmp_path):
    _Payload.target = tmp_path / "pwned"
    bad = tmp_path / "weights.safetensors"
    bad.write_bytes(pickle.dumps({"w": _Payload()}))
    with pytest.raises(InputError, match="not a valid safetensors file"):
        read_tensors(bad)
    assert not _Payload.target.exists()


def test_training_state_round_trip_restores_optimizer_and_schedule(tmp_path):
    net = _net()
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 ** s)
    for _ in range(3):
        opt.zero_grad()
        net(torch.randn(2, 1, 6, 6)).square().mean().backward()
        opt.step()
        sched.step()
    save_training_state(tmp_path / "last", net, opt, sched, {"epoch": 3, "best_score": 0.5})
    net2 = _net(5)
    opt2 = torch.optim.Adam(net2.parameters(), lr=1e-2)
    sched2 = torch.optim.lr_scheduler.LambdaLR(opt2, lambda s: 0.5 ** s)
    state = load_training_state(find_training_state(tmp_path / "last"), net2, opt2, sched2)
    assert state == {"epoch": 3, "best_score": 0.5}
    assert torch.equal(net2[0].weight, net[0].weight)
    m1, m2 = opt.state_dict()["state"][0]["exp_avg"], opt2.state_dict()["state"][0]["exp_avg"]
    assert torch.equal(m1, m2) and opt2.param_groups[0]["lr"] == pytest.approx(opt.param_groups[0]["lr"])
    assert sched2.last_epoch == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last"]  # no .tmp / .old left


def test_a_kill_during_the_swap_leaves_the_old_checkpoint_usable(tmp_path):
    net = _net()
    opt = torch.optim.Adam(net.parameters())
    save_training_state(tmp_path / "last", net, opt, None, {"epoch": 1})
    (tmp_path / "last").rename(tmp_path / "last.old")  # killed between the two renames
    (tmp_path / "last").mkdir()  # a half-made folder without state.json
    found = find_training_state(tmp_path / "last")
    assert found == tmp_path / "last.old"
    assert json.loads((found / "state.json").read_text())["state"] == {"epoch": 1}
    assert find_training_state(tmp_path / "missing") is None


def test_atomic_write_keeps_the_old_file_when_the_writer_fails(tmp_path):
    target = tmp_path / "report.md"
    write_text(target, "old")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("killed")
    assert target.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.md"]
