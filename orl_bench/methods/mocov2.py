"""MoCo v2 (Chen et al., 2020), one of the paper's image-level baselines (docs/methods.md).

A query encoder (backbone -> MLP head) is trained to match the momentum key encoder's embedding of
another view of the same image against a queue of keys from earlier batches. The queue and its
pointer are buffers of this module: they are part of the train state, so a resumed run continues
with exactly the queue it stopped with.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from orl_bench.config import ConfigError, PretrainConfig, added_later
from orl_bench.data.views import ViewParams, ViewSpec, sample_seed, two_view_specs
from orl_bench.engine.distributed import all_gather, world_size
from orl_bench.methods.base import Method, Progress, ema_update, make_target
from orl_bench.methods.contrastive import check_temperature, info_nce
from orl_bench.registry import METHODS

# How the key encoder's BN sees the batch. shuffle: the official code's shuffled BN (per-rank BN
# over a random share of the global batch, so a rank's keys are not normalised by the very images
# its queries come from, which would let BN leak the positive); sync: every BN synchronised across
# ranks (the trainer's train.sync_bn, query encoder included); local: per-rank BN, unshuffled.
KEY_BN = ("shuffle", "sync", "local")
# The head's Linear layers: "kaiming" (normal, fan-in, ReLU gain, zero bias) as the official
# OpenSelfSup MoCo and DenseCL code; "torch" PyTorch's default (uniform over +-1/sqrt(fan-in)).
HEAD_INITS = ("kaiming", "torch")


@dataclass(frozen=True)
class MoCoViews(ViewParams):
    """MoCo v2's augmentation, as ORL's official config: crop scale (0.2, 1), colour jitter
    (0.4, 0.4, 0.4, 0.1) with p 0.8, blur with p 0.5 on both views, no solarize."""
    scale: tuple[float, float] = (0.2, 1.0)
    color_jitter: tuple[float, float, float, float] = (0.4, 0.4, 0.4, 0.1)
    blur_p: tuple[float, float] = (0.5, 0.5)
    solarize_p: tuple[float, float] = (0.0, 0.0)


@dataclass(frozen=True)
class MoCoV2Params:
    views: MoCoViews = field(default_factory=MoCoViews)
    hidden_dim: int = 2048
    proj_dim: int = 128
    temperature: float = 0.2
    momentum: float = 0.999  # constant: MoCo has no momentum schedule
    queue_size: int = 65536
    key_bn: str = "shuffle"
    head_init: str = added_later("torch")  # added after mocov2 artifacts existed; paper recipe: kaiming

    def __post_init__(self) -> None:
        check_temperature(self.temperature)
        if self.head_init not in HEAD_INITS:
            raise ValueError(f"method.head_init must be one of {', '.join(HEAD_INITS)}, got '{self.head_init}'")
        if not 0 <= self.momentum < 1:
            raise ValueError(f"method.momentum must be in [0, 1), got {self.momentum}")
        if self.queue_size < 1:
            raise ValueError(f"method.queue_size must be >= 1, got {self.queue_size}")
        if self.key_bn not in KEY_BN:
            raise ValueError(f"method.key_bn must be one of {', '.join(KEY_BN)}, got '{self.key_bn}'")


@METHODS.register("mocov2")
class MoCoV2(Method):
    Params = MoCoV2Params

    def __init__(self, cfg: PretrainConfig, inputs: Mapping[str, Path] | None = None):
        super().__init__(cfg, inputs)
        p = self.params
        check_batch_and_bn(p, cfg)
        self.query = self.build_query()
        self.key = make_target(self.query)
        self.register_buffer("queue", F.normalize(torch.randn(p.queue_size, p.proj_dim), dim=1))
        self.register_buffer("queue_ptr", torch.zeros((), dtype=torch.long))

    def build_query(self) -> nn.Module:
        """The query encoder, whose copy is the key encoder; sets `backbone` (the exported part)."""
        p = self.params
        self.backbone = self.build_backbone()
        # The v2 head: Linear -> ReLU -> Linear, both with bias and no BN (the official code's).
        self.head = projection_head(self.backbone.num_features, p.hidden_dim, p.proj_dim, p.head_init)
        return nn.Sequential(self.backbone, self.head)

    def view_specs(self) -> list[ViewSpec]:
        return two_view_specs(self.params.views)

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], progress: Progress) -> dict[str, torch.Tensor]:
        view1, view2 = batch
        q = self.query(view1)
        with torch.no_grad():
            k = self.keys(view2, progress.step)
        # A copy: the enqueue below writes into the queue the loss's backward still needs.
        loss = info_nce(q, k, self.queue.clone(), self.params.temperature)
        self.enqueue(k)
        return {"loss": loss}

    def after_step(self, progress: Progress) -> None:
        ema_update(self.key, self.query, self.params.momentum)

    def keys(self, images: torch.Tensor, step: int) -> torch.Tensor:
        """The key encoder's unit-length embeddings of `images`."""
        (keys,) = self.encode_keys(lambda x: (self.key(x),), images, step)
        return F.normalize(keys.float(), dim=1)

    def encode_keys(self, encode: Callable[[torch.Tensor], tuple[torch.Tensor, ...]], images: torch.Tensor,
                    step: int) -> tuple[torch.Tensor, ...]:
        """`encode(images)`, the key encoder's outputs (batch first). Under shuffled BN the global
        batch is permuted across ranks before `encode` and every output restored after; the
        permutation is drawn from (seed, step), so every rank draws the same one and a resumed run too."""
        if self.params.key_bn != "shuffle" or world_size() == 1:
            return encode(images)
        everything, rows = all_gather(images)
        generator = torch.Generator().manual_seed(sample_seed(self.cfg.train.seed, step))
        order = torch.randperm(len(everything), generator=generator).to(images.device)
        restored = []
        for output in encode(everything[order[rows]]):
            shuffled, _ = all_gather(output)
            unshuffled = torch.empty_like(shuffled)
            unshuffled[order] = shuffled
            restored.append(unshuffled[rows])
        return tuple(restored)

    def enqueue(self, keys: torch.Tensor) -> None:
        enqueue_into(self.queue, self.queue_ptr, keys)


def projection_head(features: int, hidden_dim: int, proj_dim: int, init: str) -> nn.Sequential:
    """MoCo v2's head: Linear -> ReLU -> Linear, both with bias and no BN (the official code's)."""
    head = nn.Sequential(nn.Linear(features, hidden_dim), nn.ReLU(inplace=True), nn.Linear(hidden_dim, proj_dim))
    if init == "kaiming":
        for linear in head[::2]:
            nn.init.kaiming_normal_(linear.weight, mode="fan_in", nonlinearity="relu")
            nn.init.zeros_(linear.bias)
    return head


@torch.no_grad()
def enqueue_into(queue: torch.Tensor, pointer: torch.Tensor, keys: torch.Tensor) -> None:
    """Replace the oldest entries of the ring buffer `queue` (next slot: `pointer`) with this step's
    keys of every rank, in rank order: the queue a single process holds after the same steps on
    the concatenated batches."""
    keys, _ = all_gather(keys)
    start = int(pointer)
    slots = (start + torch.arange(len(keys), device=keys.device)) % len(queue)
    queue[slots] = keys.to(queue.dtype)
    pointer.fill_((start + len(keys)) % len(queue))


def check_batch_and_bn(p: MoCoV2Params, cfg: PretrainConfig) -> None:
    """The official code's conditions: the queue holds whole batches, and shuffled BN is per-rank BN."""
    if p.queue_size % cfg.train.batch_size:
        raise ConfigError(f"method.queue_size {p.queue_size} must be a multiple of train.batch_size "
                          f"{cfg.train.batch_size} (the global batch), so that the queue holds whole batches")
    if (p.key_bn == "sync") != cfg.train.sync_bn:
        raise ConfigError(f"method.key_bn={p.key_bn} needs train.sync_bn={str(p.key_bn == 'sync').lower()}: "
                          "shuffled and local key BN are per-rank BN, and key_bn=sync is the trainer's SyncBN")
