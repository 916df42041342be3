"""DenseCL (Wang et al., CVPR 2021): MoCo v2 plus a dense contrastive loss (docs/methods.md).

Beside MoCo v2's global head, a dense head (1x1 conv -> ReLU -> 1x1 conv) projects every position
of the backbone map. Each query position's positive is the key position whose *backbone* feature
is most similar (argmax of the cosine, query -> key, no gradient); its negatives are a second
queue holding one vector per image, the key's dense projections averaged over positions (k2).
Loss = (1 - loss_lambda) * InfoNCE(global) + loss_lambda * InfoNCE(dense), view 1 always the
query as in MoCo v2. Views, queue, shuffled key BN and the constant key momentum are MoCo v2's.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from orl_bench.config import PretrainConfig
from orl_bench.methods.base import Progress
from orl_bench.methods.contrastive import info_nce
from orl_bench.methods.mocov2 import MoCoV2, MoCoV2Params, enqueue_into, projection_head
from orl_bench.models.backbones import ResNet
from orl_bench.registry import METHODS

# The backbone map the dense head and the correspondence use: res5 as the official code; res4
# (stride 16, half res5's channels) has 4x the positions, for small views where res5 is 2x2 or less.
DENSE_LAYERS = ("res5", "res4")


@dataclass(frozen=True)
class DenseCLParams(MoCoV2Params):
    # queue_size sizes both queues, as the official code's one queue_len
    head_init: str = "kaiming"  # the official neck's init_linear='kaiming'
    loss_lambda: float = 0.5  # weight of the dense loss; the global one gets 1 - loss_lambda
    dense_layer: str = "res5"
    # steps trained on the global loss alone (lambda 0) before the dense one joins: the official
    # DenseCLWarmupHook, which no official config registers, hence 0
    dense_warmup_steps: int = 0

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0 <= self.loss_lambda <= 1:
            raise ValueError(f"method.loss_lambda must be in [0, 1], got {self.loss_lambda}")
        if self.dense_layer not in DENSE_LAYERS:
            raise ValueError(f"method.dense_layer must be one of {', '.join(DENSE_LAYERS)}, got '{self.dense_layer}'")
        if self.dense_warmup_steps < 0:
            raise ValueError(f"method.dense_warmup_steps must be >= 0, got {self.dense_warmup_steps}")


class DenseEncoder(nn.Module):
    """Images -> (global projection (N, proj_dim), dense projections (N, proj_dim, positions),
    the `dense_layer` backbone map (N, channels, positions)); none normalised."""

    def __init__(self, backbone: ResNet, dense_layer: str, hidden_dim: int, proj_dim: int, head_init: str):
        super().__init__()
        self.backbone = backbone
        self.dense_layer = dense_layer
        features = backbone.num_features
        self.head = projection_head(features, hidden_dim, proj_dim, head_init)
        dense_channels = features if dense_layer == "res5" else features // 2  # every ResNet halves res5 at res4
        # PyTorch's default init: the official neck initialises only its Linear and norm layers
        self.dense_head = nn.Sequential(nn.Conv2d(dense_channels, hidden_dim, 1), nn.ReLU(inplace=True),
                                        nn.Conv2d(hidden_dim, proj_dim, 1))

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        maps = self.backbone.taps(images, {"res5", self.dense_layer})
        dense_map = maps[self.dense_layer]
        return (self.head(maps["res5"].mean(dim=(2, 3))), self.dense_head(dense_map).flatten(2),
                dense_map.flatten(2))


@torch.no_grad()
def correspondence(query_map: torch.Tensor, key_map: torch.Tensor) -> torch.Tensor:
    """(N, query positions): for each query position, the key position of the same image whose
    feature is most similar (cosine). In float32: bf16 rounding would decide near-ties."""
    with torch.autocast(query_map.device.type, enabled=False):
        q = F.normalize(query_map.float(), dim=1)
        k = F.normalize(key_map.float(), dim=1)
        return torch.bmm(q.transpose(1, 2), k).argmax(dim=2)


def dense_info_nce(query_grid: torch.Tensor, key_grid: torch.Tensor, match: torch.Tensor,
                   queue: torch.Tensor, temperature: float) -> torch.Tensor:
    """InfoNCE of every query position against its matched key position, with the queue as the
    negatives, averaged over all N x positions rows."""
    positives = key_grid.gather(2, match[:, None, :].expand(-1, key_grid.shape[1], -1))
    return info_nce(rows_of(query_grid), rows_of(positives), queue, temperature)


def rows_of(grid: torch.Tensor) -> torch.Tensor:
    """(N, dim, positions) -> (N * positions, dim), image-major."""
    return grid.transpose(1, 2).reshape(-1, grid.shape[1])


@METHODS.register("densecl")
class DenseCL(MoCoV2):
    Params = DenseCLParams

    def __init__(self, cfg: PretrainConfig, inputs: Mapping[str, Path] | None = None):
        super().__init__(cfg, inputs)
        p = self.params
        self.register_buffer("queue2", F.normalize(torch.randn(p.queue_size, p.proj_dim), dim=1))
        self.register_buffer("queue2_ptr", torch.zeros((), dtype=torch.long))

    def build_query(self) -> DenseEncoder:
        p = self.params
        self.backbone = self.build_backbone()
        return DenseEncoder(self.backbone, p.dense_layer, p.hidden_dim, p.proj_dim, p.head_init)

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], progress: Progress) -> dict[str, torch.Tensor]:
        p = self.params
        view1, view2 = batch
        q, q_grid, q_map = self.query(view1)
        with torch.no_grad():
            k, k_grid, k_map = self.encode_keys(self.key, view2, progress.step)
            match = correspondence(q_map, k_map)
            k = F.normalize(k.float(), dim=1)
            k2 = F.normalize(k_grid.float().mean(dim=2), dim=1)
        # copies: the enqueues below write into the queues the losses' backward still needs
        global_loss = info_nce(q, k, self.queue.clone(), p.temperature)
        dense_loss = dense_info_nce(q_grid, k_grid, match, self.queue2.clone(), p.temperature)
        weight = p.loss_lambda if progress.step >= p.dense_warmup_steps else 0.0
        enqueue_into(self.queue, self.queue_ptr, k)
        enqueue_into(self.queue2, self.queue2_ptr, k2)
        return {"loss": (1 - weight) * global_loss + weight * dense_loss,
                "loss_global": global_loss, "loss_dense": dense_loss}
