"""Weighted kNN classification on frozen features, as DINO reports it (beyond the ORL paper).

Each test image's k nearest training images by cosine similarity (faiss, exact inner product on
L2-normalised rows) vote for their classes with weight exp(similarity / T); top-1 and top-5 of the
summed votes. k = 20, T = 0.07 by default. Features come from the shared feature cache, so a
backbone's features are extracted once for every task that uses them. `knn_monitor` runs the
same evaluation during pretraining (`train.monitor_every_epochs`).
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import faiss
import numpy as np
import torch

from orl_bench.config import DataConfig, FeatureConfig, check_fields
from orl_bench.data.classification import CLASSIFICATION_DATASETS, EmbeddedClassSpec, classification_split
from orl_bench.data.sources import SYNTH_SOURCES
from orl_bench.models.backbones import ResNet
from orl_bench.registry import TASKS
from orl_bench.tasks.base import BackboneRef
from orl_bench.tasks.classify import ClassificationParams, ClassificationTask, chance_record
from orl_bench.tasks.features import FeatureCache, compute_features


def knn_classify(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, test_y: np.ndarray, classes: int,
                 k: int = 20, temperature: float = 0.07) -> dict[str, float]:
    """Top-1 and top-5 accuracy (%) of the temperature-weighted kNN vote."""
    if k < 1 or temperature <= 0:
        raise ValueError(f"need k >= 1 and temperature > 0, got k={k}, temperature={temperature}")
    if train_x.shape[1] != test_x.shape[1]:
        raise ValueError(f"train features have {train_x.shape[1]} dims but test have {test_x.shape[1]}")
    k = min(k, len(train_x))
    index = faiss.IndexFlatIP(train_x.shape[1])
    index.add(_unit_rows(train_x))
    similarity, neighbours = index.search(_unit_rows(test_x), k)
    votes = np.zeros((len(test_x), classes), np.float64)
    np.add.at(votes, (np.arange(len(test_x))[:, None], train_y[neighbours]), np.exp(similarity / temperature))
    ranked = np.argsort(-votes, axis=1, kind="stable")[:, :5]
    hits = ranked == np.asarray(test_y)[:, None]
    return {"top1": 100 * float(hits[:, 0].mean()), "top5": 100 * float(hits.any(axis=1).mean())}


def _unit_rows(x: np.ndarray) -> np.ndarray:
    x = np.ascontiguousarray(x, dtype=np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


@dataclass(frozen=True)
class KNNParams(ClassificationParams):
    dataset: str = "imagenet"  # imagenet | places205 | inat18: which classification split
    k: int = 20
    temperature: float = 0.07

    def __post_init__(self) -> None:
        check_fields(self, "params", ("k", self.k >= 1, ">= 1"), ("temperature", self.temperature > 0, "> 0"))
        if self.dataset not in CLASSIFICATION_DATASETS:
            raise ValueError(f"params.dataset must be one of {CLASSIFICATION_DATASETS}, got '{self.dataset}'")


@TASKS.register("knn")
class KNN(ClassificationTask):
    Params = KNNParams

    @classmethod
    def dataset_of(cls, params: KNNParams) -> str:
        return params.dataset

    def evaluate(self, ref: BackboneRef) -> list[dict[str, Any]]:
        p: KNNParams = self.params
        cache = FeatureCache(self.workdir / "features")
        splits = {name: self.split(name) for name in ("train", "val")}
        features = {name: cache.get(ref.backbone, ref.sha256, s.key, s.paths, self.cfg.features, self.device)
                    for name, s in splits.items()}
        train, val = splits["train"], splits["val"]
        dataset = val.key.rsplit("-", 1)[0]
        records = []
        for layer in self.cfg.features.layers:
            acc = knn_classify(features["train"].by_layer[layer], train.targets, features["val"].by_layer[layer],
                               val.targets, len(train.classes), p.k, p.temperature)
            records.append({"metric": "top1", "value": round(acc["top1"], 4), "top5": round(acc["top5"], 4),
                            "layer": layer, "dataset": dataset, "k": p.k, "temperature": p.temperature,
                            "protocol": f"knn: cosine, {p.k} neighbours weighted exp(sim/{p.temperature:g})",
                            "images": {"train": len(train.paths), "val": len(val.paths)}})
        return records + [chance_record(val, dataset)]


def knn_monitor(data: DataConfig, workdir: Path, device: torch.device, root: str | None = None):
    """A callable backbone -> {knn_top1, knn_top5} for monitoring pretraining: the embedded
    ImageNet-style set in the pretraining data's look, or real ImageNet class folders at `root`."""
    if root:
        data, prep = DataConfig(source="imagenet", root=root), FeatureConfig(("res5_gap",), 256, 224, 128, 2)
    elif data.source in SYNTH_SOURCES:  # COCO+ or not, the same scenes' look
        data, prep = replace(data, source="synth"), FeatureConfig(("res5_gap",), 110, 96, 128, 1)
    else:
        raise ValueError("train.monitor_every_epochs needs train.monitor_root (ImageNet class folders) when the "
                         f"pretraining data is not the embedded default (data.source={data.source})")
    train, val = (classification_split(data, EmbeddedClassSpec(), workdir, "imagenet", s) for s in ("train", "val"))

    def monitor(backbone: ResNet) -> dict[str, float]:
        was_training = backbone.training
        x = {name: compute_features(backbone, s.paths, prep.layers, prep, device).by_layer["res5_gap"]
             for name, s in (("train", train), ("val", val))}
        backbone.train(was_training)
        acc = knn_classify(x["train"], train.targets, x["val"], val.targets, len(train.classes))
        return {"knn_top1": acc["top1"], "knn_top5": acc["top5"]}

    return monitor
