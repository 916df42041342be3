"""SimCLR (Chen et al., 2020), one of the paper's image-level baselines (docs/methods.md).

Two views of each image go through the backbone and a two-layer projector to 128-d; NT-Xent
pulls the two views of an image together against every other view in the global batch.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch

from orl_bench.config import PretrainConfig
from orl_bench.data.views import ViewParams, ViewSpec, two_view_specs
from orl_bench.methods.base import Method, Progress
from orl_bench.methods.contrastive import check_temperature, nt_xent
from orl_bench.models.heads import MLP
from orl_bench.registry import METHODS


@dataclass(frozen=True)
class SimCLRViews(ViewParams):
    """SimCLR's augmentation, as ORL's official SimCLR config: colour jitter of strength 0.8
    (0.8, 0.8, 0.8, 0.2), blur with p 0.5 on both views, no solarize."""
    color_jitter: tuple[float, float, float, float] = (0.8, 0.8, 0.8, 0.2)
    blur_p: tuple[float, float] = (0.5, 0.5)
    solarize_p: tuple[float, float] = (0.0, 0.0)


@dataclass(frozen=True)
class SimCLRParams:
    views: SimCLRViews = field(default_factory=SimCLRViews)
    hidden_dim: int = 2048
    proj_dim: int = 128
    temperature: float = 0.1

    def __post_init__(self) -> None:
        check_temperature(self.temperature)


@METHODS.register("simclr")
class SimCLR(Method):
    Params = SimCLRParams

    def __init__(self, cfg: PretrainConfig, inputs: Mapping[str, Path] | None = None):
        super().__init__(cfg, inputs)
        self.backbone = self.build_backbone()
        self.projector = MLP(self.backbone.num_features, self.params.hidden_dim, self.params.proj_dim)

    def view_specs(self) -> list[ViewSpec]:
        return two_view_specs(self.params.views)

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], progress: Progress) -> dict[str, torch.Tensor]:
        view1, view2 = batch
        # One forward pass over both views, as the official code does: BN statistics over 2N crops.
        z1, z2 = self.projector(self.backbone(torch.cat((view1, view2)))).chunk(2)
        return {"loss": nt_xent(z1, z2, self.params.temperature)}
