"""Method.param_groups: the optimiser's parameter groups a method declares. By default the
recipe's rule (optim.exclude_bias_and_norm); a plugin's own groups may scale or fix their learning
rate, which the schedule honours and a resumed optimiser keeps; a bad group stops the run with one
error line before its first step."""
from __future__ import annotations

import io
import math

import pytest
import torch
from torch import nn

from orl_bench.cli import main
from orl_bench.config import ConfigError, OptimConfig, PretrainConfig
from orl_bench.engine.optim import build_optimizer, lr_at, set_lr
from orl_bench.methods.base import Method
from orl_bench.methods.byol import BYOL
from orl_bench.registry import METHODS


class Tiny(Method):
    """Linear -> BN -> Linear, and a frozen Linear that no group may hold."""

    def __init__(self, cfg: PretrainConfig):
        super().__init__(cfg)
        self.body = nn.Linear(4, 8)
        self.norm = nn.BatchNorm1d(8)
        self.head = nn.Linear(8, 2)
        self.frozen = nn.Linear(2, 2).requires_grad_(False)

    def training_step(self, batch, progress):
        return {"loss": self.frozen(self.head(self.norm(self.body(batch)))).square().mean()}


class ScaledAndFixed(Tiny):
    """The body on the schedule, the norm at half of it, the head fixed at twice the peak lr."""

    def param_groups(self) -> list[dict]:
        return [{"params": list(self.body.parameters())},
                {"params": list(self.norm.parameters()), "lr_scale": 0.5, "weight_decay": 0.0},
                {"params": list(self.head.parameters()), "fixed_lr": True, "lr_scale": 2.0}]


def tiny_cfg(**optim) -> PretrainConfig:
    return PretrainConfig(method={"name": "tiny"}, optim=OptimConfig(**optim))


def group_names(method: nn.Module, optimizer: torch.optim.Optimizer) -> list[list[str]]:
    name_of = {id(p): n for n, p in method.named_parameters()}
    return [[name_of[id(p)] for p in group["params"]] for group in optimizer.param_groups]


def test_the_default_groups_are_the_recipes_rule():
    method = Tiny(tiny_cfg())
    optimizer = build_optimizer(method, method.cfg.optim, 0.1)
    assert group_names(method, optimizer) == [["body.weight", "body.bias", "norm.weight", "norm.bias",
                                               "head.weight", "head.bias"]]
    assert set(optimizer.param_groups[0]) == set(optimizer.defaults) | {"params"}  # nothing added to the state

    method = Tiny(tiny_cfg(name="lars", exclude_bias_and_norm=True, weight_decay=1e-6))
    optimizer = build_optimizer(method, method.cfg.optim, 0.1)
    assert group_names(method, optimizer) == [["body.weight", "head.weight"],
                                              ["body.bias", "norm.weight", "norm.bias", "head.bias"]]
    decayed, excluded = optimizer.param_groups
    assert (decayed["weight_decay"], decayed["lars_exclude"]) == (1e-6, False)
    assert (excluded["weight_decay"], excluded["lars_exclude"]) == (0.0, True)


def test_the_schedule_scales_and_fixes_group_learning_rates():
    method = ScaledAndFixed(tiny_cfg())
    peak, max_steps, warmup = 0.4, 10, 2
    optimizer = build_optimizer(method, method.cfg.optim, peak)
    assert optimizer.param_groups[2]["lr"] == 0.8  # fixed from the start
    # warmup 0.4 * (s + 1) / 2, then 0.4 * (cos(pi * (s - 2) / 8) + 1) / 2
    expected = {0: 0.2, 1: 0.4, 6: 0.2, 9: 0.2 * (math.cos(math.pi * 7 / 8) + 1)}
    for step in range(max_steps):
        set_lr(optimizer, lr_at(step, max_steps, warmup, peak, 0.0))
        if step in expected:
            body, norm, head = (g["lr"] for g in optimizer.param_groups)
            assert body == pytest.approx(expected[step], abs=1e-12)
            assert norm == pytest.approx(expected[step] / 2, abs=1e-12)
            assert head == 0.8


@pytest.mark.parametrize("optimizer_name", ["sgd", "lars"])
def test_a_resumed_optimizer_keeps_its_groups_and_ends_where_an_uninterrupted_one_does(optimizer_name):
    """As the trainer resumes: a fresh method and optimizer, then their saved state dicts loaded."""
    steps, resume_at, peak = 6, 3, 0.4
    batches = torch.randn(steps, 16, 4, generator=torch.Generator().manual_seed(0))

    def train(method, optimizer, first, last):
        for step in range(first, last):
            set_lr(optimizer, lr_at(step, steps, 2, peak, 0.0))
            optimizer.zero_grad()
            method.training_step(batches[step], None)["loss"].backward()
            optimizer.step()

    def fresh():
        torch.manual_seed(0)
        method = ScaledAndFixed(tiny_cfg(name=optimizer_name))
        return method, build_optimizer(method, method.cfg.optim, peak)

    reference, reference_optimizer = fresh()
    train(reference, reference_optimizer, 0, steps)

    interrupted, optimizer = fresh()
    train(interrupted, optimizer, 0, resume_at)
    saved = io.BytesIO()
    torch.save({"model": interrupted.state_dict(), "optimizer": optimizer.state_dict()}, saved)
    saved.seek(0)
    state = torch.load(saved)
    resumed, optimizer = fresh()
    resumed.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    assert [(g.get("lr_scale"), g.get("fixed_lr")) for g in optimizer.param_groups] == \
        [(None, None), (0.5, None), (2.0, True)]
    train(resumed, optimizer, resume_at, steps)

    for (name, a), b in zip(resumed.state_dict().items(), reference.state_dict().values()):
        assert torch.equal(a, b), name
    assert [g["lr"] for g in optimizer.param_groups] == [g["lr"] for g in reference_optimizer.param_groups]


def without(method: Tiny, *names: str) -> list:
    return [p for n, p in method.named_parameters() if p.requires_grad and n not in names]


@pytest.mark.parametrize("groups,message", [
    (lambda m: [{"params": without(m)}, {"params": [m.head.weight]}],
     "parameter 'head.weight' is in groups 0 and 1"),
    (lambda m: [{"params": without(m, "norm.weight", "norm.bias")}],
     "2 trainable parameter(s) are in no group, e.g. norm.weight, norm.bias"),
    (lambda m: [{"params": without(m), "lr": 0.1}], "group 0 has unknown key(s) lr;"),
    (lambda m: [{"params": without(m) + [m.frozen.weight]}], "group 0 holds a Parameter that is not one of"),
    (lambda m: [{"params": without(m), "lr_scale": -1.0}], "group 0's lr_scale must be a number >= 0, got -1.0"),
    (lambda m: [{"params": m.body.weight}, {"params": without(m, "body.weight")}],
     "group 0 must be a dict with a 'params' list (ordered: "),
    (lambda m: [{"params": set(without(m))}], "got a set as 'params'"),
])
def test_a_bad_group_is_refused_naming_it(groups, message):
    method = Tiny(tiny_cfg())
    method.param_groups = lambda: groups(method)
    with pytest.raises(ConfigError) as refused:
        build_optimizer(method, method.cfg.optim, 0.1)
    assert str(refused.value).startswith("Tiny.param_groups(): ")
    assert message in str(refused.value) and "\n" not in str(refused.value)


class OverlappingBYOL(BYOL):
    """BYOL whose predictor is in both of its groups."""

    def param_groups(self) -> list[dict]:
        return [{"params": [p for p in self.parameters() if p.requires_grad]},
                {"params": list(self.predictor.parameters()), "fixed_lr": True}]


def test_a_method_with_a_bad_group_stops_with_one_line_before_its_first_step(workdir, monkeypatch, capsys):
    METHODS.get("byol")  # the registry loads its entries first; then byol's is swapped for the test's
    monkeypatch.setitem(METHODS._entries, "byol", OverlappingBYOL)
    assert main(["pretrain", "--method", "byol", "--recipe", "tiny", "--workdir", str(workdir)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("orl-bench: error: OverlappingBYOL.param_groups(): parameter 'predictor.0.weight' is "
                          "in groups 0 and 1;") and err.count("\n") == 1
    assert not list(workdir.glob("artifacts/*/log.jsonl")) and not list(workdir.glob("artifacts/*/train_state.pt"))
