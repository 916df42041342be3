"""Linear classification on frozen features (docs/protocols.md 5.3): ImageNet, Places205, iNat18.

The backbone stays in eval mode and never receives gradients; every evaluated layer gets its own
head (BatchNorm without affine -> Linear, weights N(0, 0.01)) and all heads train together on one
forward pass per batch. Like MoCo's linear evaluation, the backbone's weights and BN buffers are
compared bit for bit before and after, and a moved backbone is an error. One record per layer
(top-1 and top-5 on the centre crop); the best layer's record carries `best: true`.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from orl_bench.config import check_fields
from orl_bench.engine import rehearsal
from orl_bench.models.backbones import ResNet
from orl_bench.registry import TASKS
from orl_bench.tasks.base import BackboneRef
from orl_bench.tasks.classify import (ClassificationParams, ClassificationTask, Schedule, chance_record, run_epochs,
                                      test_transform, topk_correct, train_transform)
from orl_bench.tasks.features import check_layers, tap_features


class LayerHeads(nn.Module):
    """One BN(no affine) -> Linear head per layer."""

    def __init__(self, dims: dict[str, int], classes: int):
        super().__init__()
        self.heads = nn.ModuleDict()
        for layer, dim in dims.items():
            linear = nn.Linear(dim, classes)
            nn.init.normal_(linear.weight, 0.0, 0.01)
            nn.init.zeros_(linear.bias)
            self.heads[layer] = nn.Sequential(nn.BatchNorm1d(dim, affine=False), linear)

    def forward(self, features: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {layer: head(features[layer]) for layer, head in self.heads.items()}


def frozen_snapshot(backbone: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in backbone.state_dict().items()}


def check_unchanged(backbone: nn.Module, snapshot: dict[str, torch.Tensor]) -> None:
    """MoCo's sanity check: every weight and BN buffer of the frozen backbone is bit-identical."""
    moved = [k for k, v in backbone.state_dict().items() if not torch.equal(v.cpu(), snapshot[k].cpu())]
    if moved:
        raise RuntimeError(f"the frozen backbone changed during linear evaluation: {len(moved)} tensors, e.g. "
                           f"{moved[:5]}; the evaluation is invalid")


@dataclass(frozen=True)
class LinearParams(ClassificationParams):
    epochs: int = 28
    milestones: tuple[int, ...] = (8, 16, 24)  # lr x 0.1 at each
    lr: float = 0.01
    weight_decay: float = 1e-4
    batch_size: int = 256
    jitter: bool = True  # ColorJitter + PCA lighting in training (ImageNet's recipe only)

    def __post_init__(self) -> None:
        check_fields(self, "params", ("epochs", self.epochs >= 1, ">= 1"), ("lr", self.lr > 0, "> 0"),
                     ("batch_size", self.batch_size >= 1, ">= 1"))
        self.schedule()  # its milestones must lie within the epochs: refused now, not after pretraining

    def schedule(self) -> Schedule:
        return Schedule(self.epochs, self.milestones, 0.1, self.batch_size, 0.9, nesterov=True)


@dataclass(frozen=True)
class PlacesLinearParams(LinearParams):
    epochs: int = 14
    milestones: tuple[int, ...] = (4, 8, 12)
    jitter: bool = False


@dataclass(frozen=True)
class INatLinearParams(LinearParams):
    epochs: int = 84
    milestones: tuple[int, ...] = (24, 48, 72)
    jitter: bool = False


def train_linear_heads(backbone: ResNet, heads: LayerHeads, loader_at: Callable[[int], Iterable], schedule: Schedule,
                       lr: float, weight_decay: float, state_path: Path, seed: int, device: torch.device) -> list[float]:
    """Train `heads` on the frozen `backbone`'s layer features; `loader_at(epoch)` gives the batches."""
    layers = tuple(heads.heads)
    optimizer = torch.optim.SGD(heads.parameters(), lr=lr, momentum=schedule.momentum, nesterov=schedule.nesterov,
                                weight_decay=weight_decay)
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, list(schedule.milestones), schedule.gamma)

    def epoch(index: int) -> float:
        heads.train()
        total, count = 0.0, 0
        for images, targets in loader_at(index):
            images = images.to(device, memory_format=torch.channels_last)
            targets = targets.to(device)
            with torch.no_grad():
                features = tap_features(backbone, images, layers)
            logits = heads(features)
            loss = sum(F.cross_entropy(logits[layer], targets) for layer in layers)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total, count = total + loss.item() * len(targets), count + len(targets)
            if rehearsal.step_done(len(targets)):
                break
        return total / count / len(layers)

    return run_epochs(state_path, {"heads": heads}, optimizer, scheduler, schedule.epochs, seed, epoch)


@torch.no_grad()
def evaluate_heads(backbone: ResNet, heads: LayerHeads, loader: Iterable, device: torch.device) -> dict[str, dict[int, float]]:
    """Per layer, top-1 and top-5 accuracy (%) over the loader's images."""
    heads.eval()
    correct = {layer: {1: 0, 5: 0} for layer in heads.heads}
    seen = 0
    for images, targets in loader:
        features = tap_features(backbone, images.to(device, memory_format=torch.channels_last), tuple(heads.heads))
        for layer, logits in heads(features).items():
            for k, n in topk_correct(logits.cpu(), targets).items():
                correct[layer][k] += n
        seen += len(targets)
    return {layer: {k: 100 * n / seen for k, n in hits.items()} for layer, hits in correct.items()}


class LinearProbe(ClassificationTask):
    Params = LinearParams

    def evaluate(self, ref: BackboneRef) -> list[dict[str, Any]]:
        p: LinearParams = self.params
        layers = tuple(self.cfg.features.layers)
        check_layers(layers)
        train, val = self.split("train"), self.split("val")
        if train.classes != val.classes:
            raise ValueError(f"{self.DATASET}: train and val class lists differ ({len(train.classes)} vs "
                             f"{len(val.classes)} classes)")
        f = self.cfg.features
        backbone = ref.backbone.eval().to(self.device, memory_format=torch.channels_last)
        snapshot = frozen_snapshot(backbone)
        with torch.no_grad():
            probe = next(iter(self.loader(val, test_transform(f.resize_short, f.size), 2, train=False)))[0]
            dims = {k: v.shape[1] for k, v in tap_features(backbone, probe.to(self.device), layers).items()}
        torch.manual_seed(p.seed)
        heads = LayerHeads(dims, len(train.classes)).to(self.device)
        losses = train_linear_heads(
            backbone, heads, lambda epoch: self.loader(train, train_transform(f.size, p.jitter), p.batch_size, True,
                                                       epoch),
            p.schedule(), p.lr, p.weight_decay, self.state_path(ref.sha256), p.seed, self.device)
        accuracy = evaluate_heads(backbone, heads, self.loader(val, test_transform(f.resize_short, f.size),
                                                               p.batch_size, train=False), self.device)
        check_unchanged(backbone, snapshot)
        dataset = val.key.rsplit("-", 1)[0]  # the split's key without "-val"
        best = max(accuracy, key=lambda layer: accuracy[layer][1])
        records = [{"metric": "top1", "value": round(acc[1], 4), "top5": round(acc[5], 4), "layer": layer,
                    "best": layer == best, "feature_dim": dims[layer], "dataset": dataset,
                    "protocol": f"linear: frozen BN-eval backbone, BN(no affine)->Linear per layer, SGD nesterov "
                                f"lr {p.lr} x0.1 at {list(p.milestones)} of {p.epochs} epochs, centre-crop top-1",
                    "final_train_loss": round(losses[-1], 6), "backbone_unchanged": True,
                    "images": {"train": len(train.paths), "val": len(val.paths)}}
                   for layer, acc in accuracy.items()]
        return records + [chance_record(val, dataset)]


@TASKS.register("linear_imagenet")
class LinearImageNet(LinearProbe):
    DATASET = "imagenet"


@TASKS.register("linear_places205")
class LinearPlaces205(LinearProbe):
    DATASET = "places205"
    Params = PlacesLinearParams


@TASKS.register("linear_inat18")
class LinearINat18(LinearProbe):
    DATASET = "inat18"
    Params = INatLinearParams
