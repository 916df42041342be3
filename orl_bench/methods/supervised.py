"""Supervised pretraining: the paper's "Supervised" row, the ceiling of every benchmark table.

The same backbone trained with labels instead of a pretext task. On scene data (the embedded
scenes, COCO) the labels are the image-level categories of the instances JSON and the loss is
multi-label binary cross-entropy: an image is positive for every category it contains. On class
folders (ImageNet) each image has one class and the loss is cross-entropy. The labels are written
once per image list (`build_inputs`), so their sha256 keys the artifact like any other input, and
a relabelled dataset cannot silently reuse an old artifact.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

from orl_bench.config import ConfigError, PretrainConfig
from orl_bench.data.coco import category_matrix
from orl_bench.data.pretrain_dataset import ViewsDataset
from orl_bench.data.sources import ImageList
from orl_bench.data.views import ViewParams, view_transform
from orl_bench.engine.distributed import barrier
from orl_bench.io import save_npy
from orl_bench.methods.base import Method, Progress, StageContext
from orl_bench.registry import METHODS

LABELS = "labels.npy"


@dataclass(frozen=True)
class SupervisedViews(ViewParams):
    """One view per image. The crop keeps at least half the image so that an image-level label
    still describes what the view shows; colour jitter and grayscale keep colour a nuisance, as
    in the self-supervised recipes; no blur or solarize."""
    scale: tuple[float, float] = (0.5, 1.0)
    blur_p: tuple[float, float] = (0.0, 0.0)
    solarize_p: tuple[float, float] = (0.0, 0.0)


@dataclass(frozen=True)
class SupervisedParams:
    views: SupervisedViews = field(default_factory=SupervisedViews)


def multi_hot(images: ImageList) -> np.ndarray:
    """(N, C) uint8: image i contains category c, c ranked by category id across the splits."""
    if any(split.split == "unlabeled2017" for split in images.coco):
        raise ConfigError("supervised pretraining cannot use unlabeled2017 (COCO+): use data.source=coco "
                          "(synth for the embedded scenes)")
    labels = category_matrix(images.coco)
    if not labels.shape[1]:
        raise ConfigError(f"supervised pretraining needs labelled images, but {images.key} has no categories "
                          "in its instances JSON")
    return labels.astype(np.uint8)


class LabelledViews(Dataset):
    """ViewsDataset's views (seeded per sample, unreadable images reported) with their label row."""

    def __init__(self, views: ViewsDataset, labels: np.ndarray):
        if len(labels) != len(views):
            raise ValueError(f"{len(labels)} label rows for {len(views)} images: the labels file "
                             "belongs to another image list")
        # class indices stay integer (cross-entropy targets); multi-hot rows become float (BCE targets)
        self.views = views
        self.labels = torch.from_numpy(labels.astype(np.int64 if labels.ndim == 1 else np.float32))

    def __len__(self) -> int:
        return len(self.views)

    def __getitem__(self, key: int) -> tuple[int, Any]:
        index, view = self.views[key]
        return index, None if view is None else (view, self.labels[index])


@METHODS.register("supervised")
class Supervised(Method):
    Params = SupervisedParams

    def __init__(self, cfg: PretrainConfig, inputs: Mapping[str, Path] | None = None):
        super().__init__(cfg, inputs)
        self.backbone = self.build_backbone()
        # Sized by the labels file; without one (a bare instance) there is nothing to classify.
        self.classifier = nn.Linear(self.backbone.num_features, self.num_classes()) if "labels" in self.inputs else None

    def num_classes(self) -> int:
        labels = np.load(self.inputs["labels"], mmap_mode="r")
        return int(labels.max()) + 1 if labels.ndim == 1 else labels.shape[1]

    @classmethod
    def build_inputs(cls, cfg: PretrainConfig, ctx: StageContext) -> tuple[dict[str, Path], dict[str, Any]]:
        path = ctx.workdir / "artifacts" / f"labels-{ctx.images.key}" / LABELS
        if ctx.info.is_main:
            # (N,) class indices for class folders, (N, C) multi-hot for scenes. Rebuilt every time
            # (cheap next to training): a key such as "coco" names a source, not its contents, so a
            # stored file may describe another copy of the dataset; it is rewritten only if it differs.
            labels = ctx.images.class_index if ctx.images.class_index is not None else multi_hot(ctx.images)
            if not path.exists() or not np.array_equal(np.load(path), labels):
                save_npy(path, labels)
        barrier(ctx.info)
        return {"labels": path}, {}

    def view_transform(self) -> Any:
        return view_transform(self.params.views, 1)

    def make_dataset(self, paths: list[Path]) -> LabelledViews:
        if "labels" not in self.inputs:
            raise ValueError("supervised pretraining needs the input 'labels' (orl-bench run / pretrain build it)")
        labels = np.load(self.inputs["labels"])
        return LabelledViews(ViewsDataset(paths, self.view_transform(), self.cfg.train.seed), labels)

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], progress: Progress) -> dict[str, torch.Tensor]:
        images, targets = batch
        logits = self.classifier(self.backbone(images)).float()
        if targets.ndim == 1:
            return {"loss": F.cross_entropy(logits, targets)}
        return {"loss": F.binary_cross_entropy_with_logits(logits, targets)}
