"""Semi-supervised ImageNet (docs/protocols.md 5.4): fine-tune the whole network on SimCLR's 1% or
10% subset of the training images, test on val (top-1 and top-5 on the centre crop).

Global pool -> Linear, SGD momentum 0.9, 20 epochs with lr x 0.2 at 12 and 16, the head's lr a
multiple of the backbone's. Defaults: the paper's lrs (backbone 0.01, head 1) with the official
configs' weight decay (5e-4 at 1%, 1e-4 at 10%; the paper says 0 at 1%). `grid: true` runs the
official search instead (backbone lr 0.001 / 0.01 / 0.1 x head multiplier 1 / 10 / 100). With
`select_on: val` it records every point and marks the best on val, as the official scripts choose
(an optimistic score: val picks the point it then reports). With `select_on: held_out` every point
is trained on the labelled subset less a seeded `held_out_fraction` of each class and scored on that
held-out part; the chosen point is retrained on the whole subset, and only that run is tested on val.
The 1% subset of a small set has one image per class, nothing to hold out: `held_out_subset:
10percent` makes the choice on the 10% subset's held-out part, then trains the chosen point on the
1% images alone (the subsets differ, so the choice never sees the images it is tested on).
Each fine-tuning run checkpoints every epoch and resumes where it stopped.
"""
from __future__ import annotations

import copy
import itertools
import zlib
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from orl_bench.config import ConfigError, added_later, check_fields
from orl_bench.data.classification import IMAGENET_SUBSETS, ClassificationSplit
from orl_bench.engine import rehearsal
from orl_bench.registry import TASKS
from orl_bench.tasks.base import BackboneRef
from orl_bench.tasks.classify import (ClassificationParams, ClassificationTask, Schedule, chance_record, run_epochs,
                                      test_transform, topk_correct, train_transform)

OFFICIAL_BACKBONE_LRS = (0.001, 0.01, 0.1)
OFFICIAL_HEAD_MULTIPLIERS = (1.0, 10.0, 100.0)


@dataclass(frozen=True)
class SemiParams(ClassificationParams):
    epochs: int = 20
    milestones: tuple[int, ...] = (12, 16)  # lr x 0.2 at each
    batch_size: int = 256
    backbone_lr: float = 0.01  # the paper's
    head_lr_multiplier: float = 100.0  # head lr = backbone lr x this (the paper's head lr 1)
    weight_decay: float = 5e-4  # official config at 1% (the paper: 0)
    grid: bool = False  # the official 3 x 3 lr search
    select_on: str = added_later("val")  # the grid's choice: "val" (the official scripts) or "held_out" (see the module doc)
    held_out_fraction: float = added_later(0.2)  # select_on held_out: the share of each class's labelled images held out
    # select_on held_out: the subset whose held-out part chooses the point (None: the task's own)
    held_out_subset: str | None = added_later(None)

    def __post_init__(self) -> None:
        check_fields(self, "params", ("epochs", self.epochs >= 1, ">= 1"), ("batch_size", self.batch_size >= 1, ">= 1"),
                     ("backbone_lr", self.backbone_lr > 0, "> 0"),
                     ("head_lr_multiplier", self.head_lr_multiplier > 0, "> 0"),
                     ("select_on", self.select_on in ("val", "held_out"), "'val' or 'held_out'"),
                     ("held_out_fraction", 0 < self.held_out_fraction < 1, "in (0, 1)"),
                     ("held_out_subset", self.held_out_subset in (None, *IMAGENET_SUBSETS), f"null or one of {IMAGENET_SUBSETS}"))
        if self.held_out_subset is not None and not (self.grid and self.select_on == "held_out"):
            raise ConfigError(f"params.held_out_subset={self.held_out_subset} chooses the grid's point on a held-out part; "
                             f"it needs grid=true and select_on=held_out, got grid={self.grid}, "
                             f"select_on={self.select_on}")
        self.schedule()  # its milestones must lie within the epochs: refused now, not after pretraining

    def schedule(self) -> Schedule:
        return Schedule(self.epochs, self.milestones, 0.2, self.batch_size, 0.9)


@dataclass(frozen=True)
class Semi10Params(SemiParams):
    weight_decay: float = 1e-4  # official config and paper at 10%


class FineTuned(nn.Module):
    def __init__(self, backbone: nn.Module, features: int, classes: int):
        super().__init__()
        self.backbone = backbone
        self.head = nn.Linear(features, classes)
        nn.init.normal_(self.head.weight, 0.0, 0.01)
        nn.init.zeros_(self.head.bias)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(images))  # the backbone's forward ends in the global pool


class SemiSupervised(ClassificationTask):
    DATASET = "imagenet"
    Params = SemiParams

    def fine_tune(self, ref: BackboneRef, train, val, backbone_lr: float, multiplier: float,
                  selection: str = "") -> dict[str, Any]:
        p: SemiParams = self.params
        f, schedule = self.cfg.features, p.schedule()
        torch.manual_seed(p.seed)
        model = FineTuned(copy.deepcopy(ref.backbone), ref.backbone.num_features, len(train.classes))
        model = model.to(self.device, memory_format=torch.channels_last)
        optimizer = torch.optim.SGD([{"params": model.backbone.parameters(), "lr": backbone_lr},
                                     {"params": model.head.parameters(), "lr": backbone_lr * multiplier}],
                                    lr=backbone_lr, momentum=schedule.momentum, weight_decay=p.weight_decay)
        scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, list(schedule.milestones), schedule.gamma)
        transform = train_transform(f.size, jitter=False)

        def epoch(index: int) -> float:
            model.train()
            total, count = 0.0, 0
            for images, targets in self.loader(train, transform, p.batch_size, True, index):
                logits = model(images.to(self.device, memory_format=torch.channels_last))
                loss = F.cross_entropy(logits, targets.to(self.device))
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                total, count = total + loss.item() * len(targets), count + len(targets)
                if rehearsal.step_done(len(targets)):
                    break
            return total / count

        run = f"-lr{backbone_lr:g}-x{multiplier:g}{selection}" if p.grid else ""
        losses = run_epochs(self.state_path(ref.sha256, run), {"model": model}, optimizer, scheduler,
                            schedule.epochs, p.seed, epoch)
        model.eval()
        correct, seen = {1: 0, 5: 0}, 0
        with torch.no_grad():
            for images, targets in self.loader(val, test_transform(f.resize_short, f.size), p.batch_size, False):
                logits = model(images.to(self.device, memory_format=torch.channels_last)).cpu()
                for k, n in topk_correct(logits, targets).items():
                    correct[k] += n
                seen += len(targets)
        return {"top1": 100 * correct[1] / seen, "top5": 100 * correct[5] / seen, "final_train_loss": losses[-1],
                "backbone_lr": backbone_lr, "head_lr": backbone_lr * multiplier}

    @property
    def selection_subset(self) -> str:
        """The subset whose held-out part chooses the grid point (select_on held_out)."""
        return self.params.held_out_subset or self.SUBSET

    def check_data(self) -> None:
        super().check_data()
        if self.params.grid and self.params.select_on == "held_out":
            fewest = min(np.bincount(self.split("train", self.selection_subset).targets))
            if fewest < 2:
                raise ValueError(f"task.params.select_on=held_out holds out part of each class's labelled images, but "
                                 f"a class of the {self.selection_subset} subset has {fewest}; expected at least 2 "
                                 f"(or held_out_subset=10percent, select_on=val, or the fixed lrs with grid=false)")

    def evaluate(self, ref: BackboneRef) -> list[dict[str, Any]]:
        p: SemiParams = self.params
        train, val = self.split("train", self.SUBSET), self.split("val")
        if train.classes != val.classes:
            raise ValueError(f"the {self.SUBSET} subset and val class lists differ ({len(train.classes)} vs "
                             f"{len(val.classes)} classes)")
        points = list(itertools.product(OFFICIAL_BACKBONE_LRS, OFFICIAL_HEAD_MULTIPLIERS)) if p.grid \
            else [(p.backbone_lr, p.head_lr_multiplier)]
        dataset = val.key.rsplit("-", 1)[0]
        protocol = (f"semi-supervised: fine-tune all layers on the {self.SUBSET} subset, SGD {p.epochs} epochs, "
                    f"lr x0.2 at {list(p.milestones)}, weight decay {p.weight_decay:g}; ")
        common = {"layer": "res5_gap", "subset": self.SUBSET, "dataset": dataset, "weight_decay": p.weight_decay}

        def row(r: dict[str, Any], metric: str, best: bool, images: dict[str, int], how: str) -> dict[str, Any]:
            return {**common, "metric": metric, "value": round(r["top1"], 4), "top5": round(r["top5"], 4), "best": best,
                    "protocol": protocol + how, "backbone_lr": r["backbone_lr"], "head_lr": r["head_lr"],
                    "final_train_loss": round(r["final_train_loss"], 6), "images": images}

        if p.grid and p.select_on == "held_out":
            chooser = train if self.selection_subset == self.SUBSET else self.split("train", self.selection_subset)
            fit, held_out = held_out_split(chooser, p.held_out_fraction, p.seed)
            scores = [self.fine_tune(ref, fit, held_out, lr, multiplier, f"-held_out-{self.selection_subset}")
                      for lr, multiplier in points]
            best = max(range(len(scores)), key=lambda i: scores[i]["top1"])
            final = self.fine_tune(ref, train, val, *points[best])
            how = (f"official grid, chosen on a held-out {p.held_out_fraction:g} of the subset, retrained on all of it"
                   if self.selection_subset == self.SUBSET else
                   f"official grid, chosen on a held-out {p.held_out_fraction:g} of the {self.selection_subset} subset, "
                   f"trained on the {self.SUBSET} subset")
            sizes = {"train": len(fit.paths), "held_out": len(held_out.paths)}
            return ([row(r, "held_out_top1", i == best, sizes, how) for i, r in enumerate(scores)]
                    + [row(final, "top1", True, {"train": len(train.paths), "val": len(val.paths)}, how),
                       chance_record(val, dataset)])
        results = [self.fine_tune(ref, train, val, lr, multiplier) for lr, multiplier in points]
        best = max(range(len(results)), key=lambda i: results[i]["top1"])
        how = "official grid, best on val" if p.grid else "fixed lrs"
        return [row(r, "top1", i == best, {"train": len(train.paths), "val": len(val.paths)}, how)
                for i, r in enumerate(results)] + [chance_record(val, dataset)]


def held_out_split(split: ClassificationSplit, fraction: float, seed: int) -> tuple[ClassificationSplit, ClassificationSplit]:
    """(the rest, the held-out part): max(1, round(fraction x n)) of each class's n images (n >= 2), drawn
    by a generator seeded with `seed`, each part in the split's order."""
    rng = np.random.default_rng([seed, zlib.crc32(b"semi/held_out")])
    held = np.zeros(len(split.paths), bool)
    for k in range(len(split.classes)):
        members = np.flatnonzero(split.targets == k)
        held[rng.choice(members, min(len(members) - 1, max(1, round(fraction * len(members)))), replace=False)] = True

    def part(mask: np.ndarray, name: str) -> ClassificationSplit:
        return replace(split, paths=[q for q, m in zip(split.paths, mask) if m], targets=split.targets[mask],
                       key=f"{split.key}-{name}{fraction:g}-seed{seed}")

    return part(~held, "fit"), part(held, "held_out")


@TASKS.register("semi_imagenet_1pct")
class SemiImageNet1(SemiSupervised):
    SUBSET = "1percent"


@TASKS.register("semi_imagenet_10pct")
class SemiImageNet10(SemiSupervised):
    SUBSET = "10percent"
    Params = Semi10Params
