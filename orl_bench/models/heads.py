"""MLP heads (projectors, predictors). The default is the BYOL projector / predictor shape this
project trains (docs/protocols.md 1); `MLPOptions` builds the other published ones (SimCLR v1/v2,
MoCo v2/v3, SimSiam, Barlow Twins: tests/models/test_heads.py spells each out)."""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from torch import nn

from orl_bench.config import check_fields

LAST_BN = ("none", "affine", "no_affine")


@dataclass(frozen=True)
class MLPOptions:
    """How an MLP's layers are built, its widths apart. A plugin may hold one in its Params, so
    that recipes can set it (`method: {projector: {last_bn: no_affine}}`)."""
    hidden_bias: bool = True  # in the hidden Linear layers (redundant before BN, but the default heads have it)
    hidden_bn: bool = True  # BN between each hidden Linear layer and its ReLU
    last_bias: bool = False
    # BN after the last Linear layer: none, affine (learned scale and shift) or no_affine (SimSiam, MoCo v3)
    last_bn: str = "none"

    def __post_init__(self) -> None:
        check_fields(self, "mlp", ("last_bn", self.last_bn in LAST_BN, f"one of {', '.join(LAST_BN)}"))


class MLP(nn.Sequential):
    """Linear layers from `in_dim` through each hidden width to `out_dim`, each but the last
    followed by [BN ->] ReLU; Kaiming fan-in initialisation, zero biases. With the default options
    and one hidden width: Linear(bias) -> BN -> ReLU -> Linear(no bias)."""

    def __init__(self, in_dim: int, hidden_dim: int | Sequence[int], out_dim: int,
                 options: MLPOptions = MLPOptions()):
        """`hidden_dim`: one width per hidden layer (one int: a single hidden layer; none: a
        linear head)."""
        widths = (in_dim, *([hidden_dim] if isinstance(hidden_dim, int) else hidden_dim))
        layers: list[nn.Module] = []
        for width_in, width_out in zip(widths, widths[1:]):
            layers.append(nn.Linear(width_in, width_out, bias=options.hidden_bias))
            if options.hidden_bn:
                layers.append(nn.BatchNorm1d(width_out))
            layers.append(nn.ReLU(inplace=True))
        layers.append(nn.Linear(widths[-1], out_dim, bias=options.last_bias))
        if options.last_bn != "none":
            layers.append(nn.BatchNorm1d(out_dim, affine=options.last_bn == "affine"))
        super().__init__(*layers)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
