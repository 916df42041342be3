"""MLP heads: the BYOL projector / predictor shape (docs/protocols.md 1)."""
from __future__ import annotations

from torch import nn


class MLP(nn.Sequential):
    """Linear(bias) -> BN -> ReLU -> Linear(no bias), Kaiming fan-in initialisation."""

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
