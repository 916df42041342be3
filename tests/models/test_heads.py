"""MLP heads: the default is the module every in-tree artifact was trained with (same parameter
names, initial weights and outputs), and MLPOptions builds each published projector / predictor
layer for layer as its official code does."""
from __future__ import annotations

from dataclasses import dataclass, field

import pytest
import torch
from torch import nn

from orl_bench.config import ConfigError, from_dict
from orl_bench.models.heads import MLP, MLPOptions


class BeforeOptions(nn.Sequential):
    """The head as it was before MLPOptions, verbatim."""

    def __init__(self, in_dim: int, hidden_dim: int, out_dim: int):
        super().__init__(
            nn.Linear(in_dim, hidden_dim),
            nn.BatchNorm1d(hidden_dim),
            nn.ReLU(inplace=True),
            nn.Linear(hidden_dim, out_dim, bias=False),
        )
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)


def test_the_default_is_the_head_in_tree_artifacts_were_trained_with():
    torch.manual_seed(3)
    before = BeforeOptions(64, 32, 16)
    torch.manual_seed(3)
    now = MLP(64, 32, 16)
    assert list(now.state_dict()) == list(before.state_dict())
    for key, value in before.state_dict().items():
        assert torch.equal(now.state_dict()[key], value), key
    x = torch.randn(8, 64, generator=torch.Generator().manual_seed(0))
    assert torch.equal(now(x), before(x))


def layers(mlp: nn.Sequential) -> list[tuple]:
    """Each layer as (kind, widths..., bias or affine)."""
    def describe(m: nn.Module) -> tuple:
        if isinstance(m, nn.Linear):
            return "Linear", m.in_features, m.out_features, m.bias is not None
        if isinstance(m, nn.BatchNorm1d):
            return "BN", m.num_features, m.affine
        return (type(m).__name__,)
    return [describe(m) for m in mlp]


# The expected layers, in `layers`' terms, read like the official code.
def linear(in_dim: int, out_dim: int, bias: bool) -> tuple:
    return "Linear", in_dim, out_dim, bias


def bn(width: int, affine: bool = True) -> tuple:
    return "BN", width, affine


RELU = ("ReLU",)

# Built on the meta device: the published widths, without allocating them.
PUBLISHED = {
    # SimCLR v1 (paper, sec. 2.1: W2 ReLU(W1 h)) and MoCo v2 (moco/builder.py, --mlp): no BN
    "simclr_v1_mocov2": (lambda: MLP(2048, 2048, 128, MLPOptions(hidden_bn=False, last_bias=True)),
                         [linear(2048, 2048, True), RELU, linear(2048, 128, True)]),
    # SimCLR v2 (tf2/model.py ProjectionHead, 3 layers): BN on every layer, no bias before a BN
    "simclr_v2": (lambda: MLP(2048, (2048, 2048), 128, MLPOptions(hidden_bias=False, last_bn="affine")),
                  [linear(2048, 2048, False), bn(2048), RELU, linear(2048, 2048, False), bn(2048), RELU,
                   linear(2048, 128, False), bn(128)]),
    # MoCo v3 (moco/builder.py _build_mlp(3, 2048, 4096, 256) and _build_mlp(2, 256, 4096, 256, last_bn=False))
    "mocov3_projector": (lambda: MLP(2048, (4096, 4096), 256, MLPOptions(hidden_bias=False, last_bn="no_affine")),
                         [linear(2048, 4096, False), bn(4096), RELU, linear(4096, 4096, False), bn(4096), RELU,
                          linear(4096, 256, False), bn(256, affine=False)]),
    "mocov3_predictor": (lambda: MLP(256, 4096, 256, MLPOptions(hidden_bias=False)),
                         [linear(256, 4096, False), bn(4096), RELU, linear(4096, 256, False)]),
    # BYOL as this project trains it (docs/protocols.md 1): the default
    "byol": (lambda: MLP(2048, 4096, 256), [linear(2048, 4096, True), bn(4096), RELU, linear(4096, 256, False)]),
    # SimSiam (simsiam/builder.py): the projector's last Linear has its bias switched off; BN(affine=False) follows
    "simsiam_projector": (lambda: MLP(2048, (2048, 2048), 2048, MLPOptions(hidden_bias=False, last_bn="no_affine")),
                          [linear(2048, 2048, False), bn(2048), RELU, linear(2048, 2048, False), bn(2048), RELU,
                           linear(2048, 2048, False), bn(2048, affine=False)]),
    "simsiam_predictor": (lambda: MLP(2048, 512, 2048, MLPOptions(hidden_bias=False, last_bias=True)),
                          [linear(2048, 512, False), bn(512), RELU, linear(512, 2048, True)]),
    # Barlow Twins (main.py, --projector 8192-8192-8192; its BatchNorm1d(affine=False) sits in the loss)
    "barlow_twins": (lambda: MLP(2048, (8192, 8192), 8192, MLPOptions(hidden_bias=False)),
                     [linear(2048, 8192, False), bn(8192), RELU, linear(8192, 8192, False), bn(8192), RELU,
                      linear(8192, 8192, False)]),
    "linear": (lambda: MLP(2048, (), 128), [linear(2048, 128, False)]),
}


@pytest.mark.parametrize("name", PUBLISHED)
def test_each_published_head_builds_layer_for_layer(name):
    build, expected = PUBLISHED[name]
    with torch.device("meta"):
        assert layers(build()) == expected


def test_every_linear_layer_starts_kaiming_fan_in_with_zero_bias():
    torch.manual_seed(0)
    mlp = MLP(1024, (512, 256), 512, MLPOptions(hidden_bn=False, last_bias=True))
    for linear in (mlp[0], mlp[2], mlp[4]):
        fan_in = linear.in_features
        assert linear.weight.std().item() == pytest.approx((2 / fan_in) ** 0.5, rel=0.02)
        assert not linear.bias.any()


@dataclass(frozen=True)
class ProjectorParams:
    """A plugin's Params holding the projector's options, as a recipe sets them."""
    proj_dim: int = 128
    projector: MLPOptions = field(default_factory=MLPOptions)


def test_a_recipe_sets_the_options_through_a_plugins_params():
    params = from_dict(ProjectorParams, {"projector": {"hidden_bias": False, "last_bn": "no_affine"}}, "method")
    assert params.projector == MLPOptions(hidden_bias=False, last_bn="no_affine")
    with pytest.raises(ConfigError, match="mlp.last_bn must be one of none, affine, no_affine, got 'yes'"):
        from_dict(ProjectorParams, {"projector": {"last_bn": "yes"}}, "method")
    with pytest.raises(ConfigError, match="unknown key 'method.projector.last_norm'"):
        from_dict(ProjectorParams, {"projector": {"last_norm": "affine"}}, "method")
