"""VOC07 linear SVM (docs/protocols.md 5.1): frozen features of trainval -> per-class CV-tuned linear
SVMs -> VOC AP on test. One record per evaluated layer, and the test split's chance level."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from orl_bench.config import volatile
from orl_bench.data.sources import check_voc07, voc07
from orl_bench.data.voc import VOC2007
from orl_bench.registry import TASKS
from orl_bench.results.records import CHANCE
from orl_bench.tasks.base import BackboneRef, Task
from orl_bench.tasks.features import FeatureCache, Features
from orl_bench.tasks.svm import OFFICIAL_COSTS, chance_ap, check_solver, evaluate_voc07, normalize_rows


VOC07_SPLITS = ("trainval", "test")  # what the full and the low-shot SVM tasks read


@dataclass(frozen=True)
class VOC07SVMParams:
    costs: tuple[float, ...] = OFFICIAL_COSTS  # the official 19-value grid
    folds: int = 3
    n_jobs: int = volatile(2)  # classes run in parallel; results do not depend on it
    solver: str = "gram"  # gram (svm_gram: shared Gram matrix, warm starts) | liblinear (the official LinearSVC)

    def __post_init__(self) -> None:
        check_solver(self.solver)


@dataclass(frozen=True)
class VOC07Split:
    """One VOC07 split's labels and cached features, rows of unreadable images dropped."""
    voc: VOC2007
    features: Features

    def x(self, layer: str) -> np.ndarray:
        return normalize_rows(self.features.by_layer[layer][self.features.valid])

    @property
    def y(self) -> np.ndarray:
        return self.voc.labels[self.features.valid]


def voc07_splits(task: Task, ref: BackboneRef) -> tuple[VOC07Split, VOC07Split, str]:
    """trainval and test of the task's VOC07 data with `ref`'s cached features, and the dataset
    name records carry; shared by the full and the low-shot SVM tasks."""
    cache = FeatureCache(task.workdir / "features")
    splits, key = {}, ""
    for split in VOC07_SPLITS:
        voc, key = voc07(task.cfg.data, task.workdir, split)
        splits[split] = VOC07Split(voc, cache.get(ref.backbone, ref.sha256, key, voc.paths, task.cfg.features,
                                                  task.device))
    train, test = splits["trainval"], splits["test"]
    if train.voc.classes != test.voc.classes:
        raise ValueError(f"trainval and test class lists differ: {train.voc.classes} vs {test.voc.classes}")
    return train, test, key.rsplit("-", 1)[0]


def check_voc07_splits(task: Task) -> None:
    """The data of `voc07_splits`, checked before any work (Task.check_data)."""
    for split in VOC07_SPLITS:
        check_voc07(task.cfg.data, split)


def chance_record(test: VOC07Split, dataset: str) -> dict[str, Any]:
    """The floor mAP rows are read against; a row naming its own method is not the backbone's."""
    chance = chance_ap(test.y)
    return {"method": CHANCE, "metric": "mAP", "value": round(100 * float(chance.mean()), 4), "layer": None,
            "dataset": dataset, "protocol": "chance: per class the test positive rate, ignore rows dropped",
            "per_class_ap": {c: round(100 * ap, 3) for c, ap in zip(test.voc.classes, chance)},
            "images": {"test": int(test.features.valid.sum())}}


@TASKS.register("voc07_svm")
class VOC07SVM(Task):
    Params = VOC07SVMParams

    def check_data(self) -> None:
        check_voc07_splits(self)

    def evaluate(self, ref: BackboneRef) -> list[dict[str, Any]]:
        train, test, dataset = voc07_splits(self, ref)
        train_f, test_f = train.features, test.features
        records = []
        for layer in self.cfg.features.layers:
            result = evaluate_voc07(train.x(layer), train.y, test.x(layer), test.y,
                                    costs=self.params.costs, folds=self.params.folds, n_jobs=self.params.n_jobs,
                                    solver=self.params.solver)
            records.append({
                "metric": "mAP", "value": round(result.map, 4), "layer": layer,
                "feature_dim": int(train_f.by_layer[layer].shape[1]),
                "dataset": dataset,
                "protocol": "official: 3-fold CV per class over the cost grid, VOC2010+ AP",
                "per_class_ap": {c: round(100 * ap, 3) for c, ap in zip(train.voc.classes, result.ap)},
                "best_cost": dict(zip(train.voc.classes, result.best_cost)),
                "svm_unconverged_fits": result.unconverged, "svm_solver": self.params.solver,
                "images": {"trainval": int(train_f.valid.sum()), "test": int(test_f.valid.sum())},
                "unreadable_images": train_f.unreadable + test_f.unreadable,
            })
        return records + [chance_record(test, dataset)]
