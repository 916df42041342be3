"""Every registered method (installed plugins included; the SimSiam example in tests/plugins) is
covered the moment it exists by orl_bench.testing's checks (train, export, strict reload, finite
losses, kill -9 and resume to the same bytes), the very checks a plugin's own tests call; then
BYOL's pieces.

For a multi-stage method (ORL; UniVIP's proposals) the kill lands in its last stage and the
earlier stages are the first run's, reused: killing ORL inside stages 1 and 2 costs minutes, so
tests/test_kill_chain.py (slow) does that, at every fault point along the chain."""
import math

import pytest
import torch

from orl_bench.engine.checkpoint import read_manifest
from orl_bench.methods import byol
from orl_bench.methods.base import Progress, byol_loss, ema_update, momentum_at
from orl_bench.registry import METHODS
from orl_bench.testing import check_method, tiny_config, train_tiny


@pytest.mark.parametrize("name", METHODS.names())
def test_method_passes_the_checks_every_method_passes(name, workdir):
    check_method(name, workdir)


def test_byol_loss_matches_its_formula():
    g = torch.Generator().manual_seed(0)
    p, z = torch.randn(5, 7, generator=g), torch.randn(5, 7, generator=g)
    expected = sum(2 - 2 * float(p[i] @ z[i]) / float(p[i].norm() * z[i].norm()) for i in range(5)) / 5
    assert byol_loss(p, z).item() == pytest.approx(expected, rel=1e-6)
    assert byol_loss(p, 3 * p).item() == pytest.approx(0.0, abs=1e-6)
    assert byol_loss(p, -p).item() == pytest.approx(4.0, abs=1e-6)


def test_momentum_schedule_runs_from_base_to_one():
    assert momentum_at(0.99, Progress(0, 100, 0)) == pytest.approx(0.99)
    assert momentum_at(0.99, Progress(50, 100, 0)) == pytest.approx(0.995)
    assert momentum_at(0.99, Progress(100, 100, 0)) == pytest.approx(1.0)


def test_each_ema_update_uses_the_momentum_of_the_step_just_taken(workdir, monkeypatch):
    """As OpenSelfSup's BYOLHook: the update after step k (0-based, the steps done before it) uses
    tau(k), so the first update uses the base momentum and the last tau(max_steps - 1) < 1."""
    used, real = [], byol.ema_update

    def recording(target, online, momentum):
        used.append(momentum)
        real(target, online, momentum)

    monkeypatch.setattr(byol, "ema_update", recording)
    steps = read_manifest(train_tiny("byol", workdir))["steps"]  # 4
    base = tiny_config("byol").method["base_momentum"]
    assert len(used) == steps >= 3
    for k in (0, 1, steps - 1):
        assert used[k] == pytest.approx(1 - (1 - base) * (math.cos(math.pi * k / steps) + 1) / 2, rel=1e-12)
    assert used[0] == base


def test_ema_updates_parameters_but_not_buffers():
    online, target = torch.nn.BatchNorm1d(3), torch.nn.BatchNorm1d(3)
    with torch.no_grad():
        online.weight.fill_(2.0)
        target.weight.fill_(1.0)
        online.running_mean.fill_(5.0)
    ema_update(target, online, 0.9)
    assert torch.allclose(target.weight, torch.full((3,), 0.9 * 1.0 + 0.1 * 2.0))
    assert torch.equal(target.running_mean, torch.zeros(3))


def test_byol_symmetric_step_uses_both_directions():
    cfg = tiny_config("byol")
    byol = METHODS.get("byol")(cfg)
    x1, x2 = torch.randn(4, 3, 32, 32), torch.randn(4, 3, 32, 32)
    torch.manual_seed(0)
    loss = byol.training_step((x1, x2), Progress(0, 10, 0))["loss"]
    torch.manual_seed(0)
    p1, p2 = byol.predictor(byol.online(x1)), byol.predictor(byol.online(x2))
    with torch.no_grad():
        z1, z2 = byol.target(x1), byol.target(x2)
    assert loss.item() == pytest.approx((byol_loss(p1, z2) + byol_loss(p2, z1)).item(), rel=1e-5)


def test_target_starts_equal_and_receives_no_gradient():
    byol = METHODS.get("byol")(tiny_config("byol"))
    for o, t in zip(byol.online.parameters(), byol.target.parameters()):
        assert torch.equal(o, t) and not t.requires_grad
