"""VOC07 linear SVM (docs/protocols.md 5.1): frozen features of trainval -> per-class CV-tuned linear
SVMs -> VOC AP on test. One record per evaluated layer, and the test split's chance level."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any


from orl_bench.config import volatile
from orl_bench.data.sources import voc07
from orl_bench.results.records import CHANCE
from orl_bench.tasks.base import BackboneRef, Task
from orl_bench.tasks.features import FeatureCache
from orl_bench.tasks.svm import OFFICIAL_COSTS, chance_ap, evaluate_voc07, normalize_rows
from orl_bench.registry import TASKS


@dataclass(frozen=True)
class VOC07SVMParams:
    costs: tuple[float, ...] = OFFICIAL_COSTS  # the official 19-value grid
    folds: int = 3
    n_jobs: int = volatile(2)  # classes run in parallel processes; results do not depend on it


@TASKS.register("voc07_svm")
class VOC07SVM(Task):
    Params = VOC07SVMParams

    def evaluate(self, ref: BackboneRef) -> list[dict[str, Any]]:
        cache = FeatureCache(self.workdir / "features")
        splits = {}
        for split in ("trainval", "test"):
            voc, key = voc07(self.cfg.data, self.workdir, split)
            feats = cache.get(ref.backbone, ref.sha256, key, voc.paths, self.cfg.features, self.device)
            splits[split] = (voc, feats, key)
        (train_voc, train_f, train_key), (test_voc, test_f, _) = splits["trainval"], splits["test"]
        if train_voc.classes != test_voc.classes:
            raise ValueError(f"trainval and test class lists differ: {train_voc.classes} vs {test_voc.classes}")
        dataset = train_key.rsplit("-", 1)[0]
        records = []
        for layer in self.cfg.features.layers:
            result = evaluate_voc07(
                normalize_rows(train_f.by_layer[layer][train_f.valid]), train_voc.labels[train_f.valid],
                normalize_rows(test_f.by_layer[layer][test_f.valid]), test_voc.labels[test_f.valid],
                costs=self.params.costs, folds=self.params.folds, n_jobs=self.params.n_jobs)
            records.append({
                "metric": "mAP", "value": round(result.map, 4), "layer": layer,
                "feature_dim": int(train_f.by_layer[layer].shape[1]),
                "dataset": dataset,
                "protocol": "official: 3-fold CV per class over the cost grid, VOC2010+ AP",
                "per_class_ap": {c: round(100 * ap, 3) for c, ap in zip(train_voc.classes, result.ap)},
                "best_cost": dict(zip(train_voc.classes, result.best_cost)),
                "svm_unconverged_fits": result.unconverged,
                "images": {"trainval": int(train_f.valid.sum()), "test": int(test_f.valid.sum())},
                "unreadable_images": train_f.unreadable + test_f.unreadable,
            })
        # The floor the mAP rows are read against; a row naming its own method is not the backbone's.
        chance = chance_ap(test_voc.labels[test_f.valid])
        records.append({
            "method": CHANCE, "metric": "mAP", "value": round(100 * float(chance.mean()), 4), "layer": None,
            "dataset": dataset, "protocol": "chance: per class the test positive rate, ignore rows dropped",
            "per_class_ap": {c: round(100 * ap, 3) for c, ap in zip(test_voc.classes, chance)},
            "images": {"test": int(test_f.valid.sum())},
        })
        return records
