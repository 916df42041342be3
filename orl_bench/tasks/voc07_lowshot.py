"""VOC07 low-shot SVM (docs/protocols.md 5.2): per class k positives and 19 k negatives drawn from
trainval, 5 seeded draws per k, one SVM per cost without CV, VOC AP on the full test split.
One record per (layer, k): the mean test mAP over the draws, with min, max, std and every draw's
value; the cost-choice protocol and the draw seed are in every record."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from orl_bench.config import volatile
from orl_bench.registry import TASKS
from orl_bench.tasks.base import BackboneRef, Task
from orl_bench.tasks.lowshot_svm import LOW_SHOT_PROTOCOLS, evaluate_low_shot
from orl_bench.tasks.svm import OFFICIAL_COSTS, check_solver
from orl_bench.tasks.voc07_svm import chance_record, check_voc07_splits, voc07_splits

PAPER_KS = (1, 2, 4, 8, 16, 32, 64, 96)
PROTOCOL_TEXT = {
    "official": "official: per k the cost with the best mean test mAP over the draws (chosen on test)",
    "cv": "cv: per draw and class the cost chosen by CV on the training draw (leakage-free)",
}


@dataclass(frozen=True)
class VOC07LowShotParams:
    ks: tuple[int, ...] = PAPER_KS  # positives per class; 19 k negatives each
    samples: int = 5  # independent draws per k
    sample_seed: int = 0  # the official scripts do not seed the draws; recorded in every record
    protocol: str = "official"  # official | cv: how the cost is chosen (see PROTOCOL_TEXT)
    costs: tuple[float, ...] = OFFICIAL_COSTS
    folds: int = 3  # cv protocol only: at most this many folds (k if smaller)
    n_jobs: int = volatile(2)  # fits run in parallel; results do not depend on it
    solver: str = "gram"  # gram (svm_gram: shared Gram matrix, warm starts) | liblinear (the official LinearSVC)

    def __post_init__(self) -> None:
        check_solver(self.solver)
        if self.protocol not in LOW_SHOT_PROTOCOLS:
            raise ValueError(f"params.protocol must be one of {LOW_SHOT_PROTOCOLS}, got '{self.protocol}'")


@TASKS.register("voc07_lowshot")
class VOC07LowShot(Task):
    Params = VOC07LowShotParams

    def check_data(self) -> None:
        check_voc07_splits(self)

    def evaluate(self, ref: BackboneRef) -> list[dict[str, Any]]:
        p: VOC07LowShotParams = self.params
        train, test, dataset = voc07_splits(self, ref)
        records = []
        for layer in self.cfg.features.layers:
            for r in evaluate_low_shot(train.x(layer), train.y, test.x(layer), test.y, ks=p.ks, samples=p.samples,
                                       seed=p.sample_seed, protocol=p.protocol, costs=p.costs, folds=p.folds,
                                       n_jobs=p.n_jobs, solver=p.solver):
                records.append({
                    "metric": "mAP", "value": round(r.mean, 4), "layer": layer, "k": r.k,
                    "min": round(min(r.maps), 4), "max": round(max(r.maps), 4), "std": round(r.std, 4),
                    "per_sample": [round(m, 4) for m in r.maps], "samples": p.samples, "sample_seed": p.sample_seed,
                    "low_shot_protocol": p.protocol, "protocol": PROTOCOL_TEXT[p.protocol], "svm_solver": p.solver,
                    "cost": r.cost, "cost_counts": {str(c): n for c, n in r.cost_counts.items()},
                    "cost_source_k": r.cost_source_k, "dataset": dataset,
                    "feature_dim": int(train.features.by_layer[layer].shape[1]),
                    "images": {"trainval": int(train.features.valid.sum()), "test": int(test.features.valid.sum())},
                })
        return records + [chance_record(test, dataset)]
