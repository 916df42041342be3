"""Self-EMD (Liu, Li, Sun 2020, arXiv 2011.13677): BYOL whose embedding is the convolutional
feature map, two views compared by the Earth Mover's Distance (docs/methods.md).

No code was published and only the paper's abstract and introduction are readable; the design
below fills every gap with the closest established practice (BYOL, DeepEMD), each choice an
option recorded in the config:
- global term: BYOL on the pooled res5 map (its projector and predictor), symmetric.
- dense term: the `dense_layer` map's positions go through a 1x1-conv projector (an MLP on the
  (B * h * w, C) rows: BatchNorm1d over those rows is BatchNorm2d) and, online, a 1x1-conv
  predictor; the target's projector is an EMA of the online one, like BYOL's.
- EMD: between the online predictions of view a and the target projections of view b, cost
  1 - cos; masses DeepEMD's cross-reference weights (each node's ReLU'd dot product with the
  other set's mean unit vector, normalised; uniform where none is positive) or uniform; the
  log-domain Sinkhorn plan is detached; loss 2 - 2 * sum(plan * cos), summed over (a, b) = (1, 2),
  (2, 1). Computed in float32 with autocast off (sinkhorn.py says why).
- total: global + `emd_weight` * EMD.
Left out: the extra small views and the "Spatial Pyramid Cropping" that third-party summaries
mention (neither is defined in anything readable).
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from orl_bench.config import PretrainConfig
from orl_bench.methods.base import Progress, byol_loss, ema_update, make_target, momentum_at
from orl_bench.methods.byol import BYOL, BYOLParams
from orl_bench.methods.sinkhorn import similarity_masses, transported_cosine
from orl_bench.models.heads import MLP
from orl_bench.registry import METHODS

# the backbone maps the dense term can read -> res5's channels over theirs (each ResNet stage
# doubles the channels of the one before)
DENSE_LAYERS = {"res5": 1, "res4": 2}
NODE_WEIGHTS = ("cross_reference", "uniform")


@dataclass(frozen=True)
class SelfEMDParams(BYOLParams):
    dense_layer: str = "res5"  # whose positions are the EMD's nodes
    node_weights: str = "cross_reference"  # DeepEMD's; or uniform
    sinkhorn_eps: float = 0.05  # not from the paper
    sinkhorn_iters: int = 100  # not from the paper
    emd_weight: float = 1.0  # of the EMD term against the global BYOL term

    def __post_init__(self) -> None:
        if self.dense_layer not in DENSE_LAYERS:
            raise ValueError(f"method.dense_layer must be one of {', '.join(DENSE_LAYERS)}, got '{self.dense_layer}'")
        if self.node_weights not in NODE_WEIGHTS:
            raise ValueError(f"method.node_weights must be one of {', '.join(NODE_WEIGHTS)}, "
                             f"got '{self.node_weights}'")
        if self.sinkhorn_eps <= 0 or self.sinkhorn_iters < 1 or self.emd_weight < 0:
            raise ValueError(f"need method.sinkhorn_eps > 0, sinkhorn_iters >= 1 and emd_weight >= 0, got "
                             f"{self.sinkhorn_eps}, {self.sinkhorn_iters}, {self.emd_weight}")


def node_masses(nodes: torch.Tensor, others: torch.Tensor, weights: str) -> torch.Tensor:
    """(B, n) transport masses of (B, n, d) nodes facing the other view's (B, m, d) nodes:
    DeepEMD's cross-reference weights (each unit node's ReLU'd dot product with the mean of the
    others' unit vectors, normalised; uniform where none is positive) or uniform."""
    if weights == "uniform":
        return torch.full(nodes.shape[:2], 1 / nodes.shape[1], device=nodes.device)
    # the reference's length cancels in the normalisation: ReLU'd cosines weigh as dot products
    return similarity_masses(nodes, F.normalize(others.float(), dim=-1).mean(dim=1))


def emd_loss(online: torch.Tensor, target: torch.Tensor, p: SelfEMDParams) -> torch.Tensor:
    """2 - 2 * sum(plan * cos) averaged over the batch, between the (B, n, d) online predictions
    of one view and the (B, m, d) target projections of the other."""
    with torch.no_grad():
        masses = node_masses(online, target, p.node_weights), node_masses(target, online, p.node_weights)
    return (2 - 2 * transported_cosine(online, target, *masses, p.sinkhorn_eps, p.sinkhorn_iters)).mean()


def self_emd_losses(global_preds: list[torch.Tensor], global_targets: list[torch.Tensor],
                    dense_preds: list[torch.Tensor], dense_targets: list[torch.Tensor],
                    p: SelfEMDParams) -> dict[str, torch.Tensor]:
    """The loss of two views' embeddings (lists indexed by view): each view's online embeddings
    regress the other view's target ones, pooled by BYOL's loss, dense by EMD."""
    global_term = byol_loss(global_preds[0], global_targets[1]) + byol_loss(global_preds[1], global_targets[0])
    emd_term = emd_loss(dense_preds[0], dense_targets[1], p) + emd_loss(dense_preds[1], dense_targets[0], p)
    return {"loss": global_term + p.emd_weight * emd_term, "loss_global": global_term, "loss_emd": emd_term}


def per_position(head: nn.Module, nodes: torch.Tensor) -> torch.Tensor:
    """A 1x1 conv head on (B, n, C) positions: the MLP on their B * n rows."""
    return head(nodes.flatten(0, 1)).unflatten(0, nodes.shape[:2])


@METHODS.register("selfemd")
class SelfEMD(BYOL):
    """BYOL's networks on the pooled res5 map, plus the dense projector (online and EMA target)
    and predictor on the positions of `dense_layer`."""

    Params = SelfEMDParams

    def __init__(self, cfg: PretrainConfig, inputs: Mapping[str, Path] | None = None):
        super().__init__(cfg, inputs)
        p: SelfEMDParams = self.params
        channels = self.backbone.num_features // DENSE_LAYERS[p.dense_layer]
        self.dense_projector = MLP(channels, p.hidden_dim, p.proj_dim)
        self.dense_predictor = MLP(p.proj_dim, p.hidden_dim, p.proj_dim)
        self.dense_target = make_target(self.dense_projector)

    def embed(self, backbone: nn.Module, projector: nn.Module, dense_projector: nn.Module,
              views: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """From one backbone pass: the (B, proj_dim) projection of the pooled res5 map and the
        (B, h * w, proj_dim) projections of the dense layer's positions (row-major)."""
        layer = self.params.dense_layer
        maps = backbone.taps(views, {"res5", layer})
        nodes = maps[layer].permute(0, 2, 3, 1).flatten(1, 2)  # a view under channels_last
        return projector(maps["res5"].mean(dim=(2, 3))), per_position(dense_projector, nodes)

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], progress: Progress) -> dict[str, torch.Tensor]:
        online = [self.embed(self.backbone, self.projector, self.dense_projector, v) for v in batch]
        with torch.no_grad():
            backbone, projector = self.target
            targets = [self.embed(backbone, projector, self.dense_target, v) for v in batch]
        return self_emd_losses([self.predictor(z) for z, _ in online], [z for z, _ in targets],
                               [per_position(self.dense_predictor, d) for _, d in online], [d for _, d in targets],
                               self.params)

    def after_step(self, progress: Progress) -> None:
        super().after_step(progress)
        ema_update(self.dense_target, self.dense_projector, momentum_at(self.params.base_momentum, progress))
