"""BYOL (Grill et al., 2020) as used by ORL's stage 1 and as its baseline (docs/protocols.md 1).

An online network (backbone -> projector -> predictor) regresses the target network's
projection of another view of the same image; the target is an EMA of the online weights.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from orl_bench.config import PretrainConfig
from orl_bench.data.views import ViewParams, ViewSpec, two_view_specs
from orl_bench.methods.base import Method, Progress, byol_loss, ema_update, make_target, momentum_at
from orl_bench.models.heads import MLP
from orl_bench.registry import METHODS


@dataclass(frozen=True)
class BYOLParams:
    views: ViewParams = field(default_factory=ViewParams)
    hidden_dim: int = 4096  # projector and predictor hidden width
    proj_dim: int = 256
    base_momentum: float = 0.99  # tau rises from this to 1 on a cosine


@METHODS.register("byol")
class BYOL(Method):
    Params = BYOLParams

    def __init__(self, cfg: PretrainConfig, inputs: Mapping[str, Path] | None = None):
        super().__init__(cfg, inputs)
        p = self.params
        self.backbone = self.build_backbone()
        self.projector = MLP(self.backbone.num_features, p.hidden_dim, p.proj_dim)
        self.online = nn.Sequential(self.backbone, self.projector)
        self.predictor = MLP(p.proj_dim, p.hidden_dim, p.proj_dim)
        self.target = make_target(self.online)

    def view_specs(self) -> list[ViewSpec]:
        return two_view_specs(self.params.views)

    def symmetric_loss(self, predictor: nn.Module, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """BYOL loss of a pair in both directions; each input is its own forward pass."""
        pred_a, pred_b = predictor(self.online(a)), predictor(self.online(b))
        with torch.no_grad():
            target_a, target_b = self.target(a), self.target(b)
        return byol_loss(pred_a, target_b) + byol_loss(pred_b, target_a)

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], progress: Progress) -> dict[str, torch.Tensor]:
        view1, view2 = batch
        return {"loss": self.symmetric_loss(self.predictor, view1, view2)}

    def after_step(self, progress: Progress) -> None:
        ema_update(self.target, self.online, momentum_at(self.params.base_momentum, progress))
