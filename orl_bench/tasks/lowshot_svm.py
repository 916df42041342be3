"""VOC07 low-shot SVM core (docs/protocols.md 5.2): the seeded per-class draw and the evaluation
over k and draws, with the official test-chosen cost or a leakage-free CV choice. Built on the
solver, AP and input checks of `svm`."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from joblib import delayed

from orl_bench.tasks.svm import (NEGATIVES_PER_POSITIVE, OFFICIAL_COSTS, SVM_MAX_ITER, SVM_RANDOM_STATE,
                                 SVM_TOL, _check_cost, _fit, _labels, _split_arrays, check_solver, fit_class,
                                 ordered_jobs, train_labels, voc_ap)
from orl_bench.tasks.svm_gram import augmented_gram, solve_path


# ----------------------------------------------------------------------------- low-shot sampling


def sample_low_shot(
    labels: np.ndarray, k: int, rng: np.random.Generator | int
) -> dict[int, np.ndarray]:
    """docs/protocols.md 5.2 draw: per class independently, k rows labelled 1 and 19 k labelled 0.

    Without replacement; rows labelled -1 are never drawn. Returns class index -> sorted row
    indices (sorted so a class's training rows keep dataset order, as the official masked label
    matrix does). ``rng`` is a numpy Generator or a seed; classes draw from it in index order,
    positives before negatives.
    """
    y = _labels(labels, "labels", 2)
    if int(k) != k or k < 1:
        raise ValueError(f"k must be a positive integer, got {k}")
    k = int(k)
    gen = np.random.default_rng(rng)
    drawn: dict[int, np.ndarray] = {}
    for c in range(y.shape[1]):
        parts = []
        for value, count in ((1, k), (0, NEGATIVES_PER_POSITIVE * k)):
            pool = np.flatnonzero(y[:, c] == value)
            if pool.size < count:
                raise ValueError(
                    f"class {c}: low-shot k={k} needs {count} rows labelled {value}, "
                    f"only {pool.size} exist"
                )
            parts.append(gen.choice(pool, size=count, replace=False))
        drawn[c] = np.sort(np.concatenate(parts))
    return drawn


# ----------------------------------------------------------------------------- low-shot evaluation

LOW_SHOT_PROTOCOLS = ("official", "cv")


@dataclass(frozen=True)
class LowShotResult:
    """One k of docs/protocols.md 5.2: the test mAP (x 100) of each of the samples at the chosen
    cost(s). `cost` is the official single cost per k (the best mean test mAP over the samples);
    under `cv` each (sample, class) chose its own, counted in `cost_counts`."""

    k: int
    maps: tuple[float, ...]  # per sample
    cost: float | None
    cost_counts: dict[float, int]
    cost_source_k: int  # the k whose training samples chose the costs (k itself unless CV was impossible)

    @property
    def mean(self) -> float:
        return float(np.mean(self.maps))

    @property
    def std(self) -> float:  # population std over the samples, as the official aggregation
        return float(np.std(self.maps))


def low_shot_rng(seed: int, k: int, sample: int) -> np.random.Generator:
    """The draw of (k, sample): independent of which other k and samples are evaluated."""
    return np.random.default_rng([seed, k, sample])


@dataclass(frozen=True)
class _Grams:
    """The gram solver's kernels: train x train, and test x train for the test decision values."""
    train: np.ndarray
    test_train: np.ndarray


def _cost_aps(xtr: np.ndarray, ytr: np.ndarray, rows: np.ndarray, xte: np.ndarray, yte: np.ndarray,
              costs: tuple[float, ...], grams: _Grams | None) -> tuple[float, ...]:
    """Test AP of the SVM trained on `rows` at each cost, no CV (liblinear when `grams` is None)."""
    y = train_labels(ytr[rows])
    if grams is None:
        aps = []
        for cost in costs:
            model, _ = _fit(xtr[rows], y, cost)
            aps.append(voc_ap(model.decision_function(xte), yte))
        return tuple(aps)
    betas, _ = solve_path(grams.train[np.ix_(rows, rows)], y, costs, SVM_TOL, SVM_MAX_ITER, SVM_RANDOM_STATE)
    scores = grams.test_train[:, rows] @ betas.T
    return tuple(voc_ap(scores[:, i], yte) for i in range(len(costs)))


def _low_shot_fits(xtr: np.ndarray, ytr: np.ndarray, rows: np.ndarray, xte: np.ndarray, yte: np.ndarray,
                   costs: tuple[float, ...], folds: int | None, grams: _Grams | None
                   ) -> tuple[tuple[float, ...], float | None]:
    """One (sample, k, class). folds None (official): the test AP at every cost. Otherwise the
    cost chosen by `folds`-fold CV on the sampled rows, and the test AP of its refit (as a 1-tuple)."""
    if folds is None:
        return _cost_aps(xtr, ytr, rows, xte, yte, costs, grams), None
    solver = "liblinear" if grams is None else "gram"
    fit = fit_class(xtr[rows], ytr[rows], costs, folds, solver, None if grams is None else grams.train[np.ix_(rows, rows)])
    return (voc_ap(fit.decision_function(xte), yte),), fit.best_cost


def evaluate_low_shot(
    train_x: np.ndarray,
    train_y: np.ndarray,
    test_x: np.ndarray,
    test_y: np.ndarray,
    ks: tuple[int, ...],
    samples: int = 5,
    seed: int = 0,
    protocol: str = "official",
    costs: tuple[float, ...] = OFFICIAL_COSTS,
    folds: int = 3,
    n_jobs: int | None = None,
    solver: str = "gram",
) -> list[LowShotResult]:
    """docs/protocols.md 5.2 from features to the per-k mAP over `samples` draws.

    `official`: one SVM per (sample, k, class, cost), no CV; per k the cost with the best mean
    test mAP over the samples (the cost is chosen on the test set, as the official scripts do).
    `cv`: per (sample, k, class) the cost is chosen by min(folds, k)-fold CV on the training
    sample alone; at k = 1 CV is impossible (one positive), so each (sample, class) takes the
    cost its draw at the smallest k >= 2 chose (that k is recorded as `cost_source_k`).
    `solver` as `svm.fit_class`; with `gram` every draw's kernel is a block of one Gram matrix.
    """
    if protocol not in LOW_SHOT_PROTOCOLS:
        raise ValueError(f"unknown low-shot protocol '{protocol}'; expected one of {LOW_SHOT_PROTOCOLS}")
    check_solver(solver)
    if samples < 1:
        raise ValueError(f"samples must be >= 1, got {samples}")
    xtr, ytr = _split_arrays(train_x, train_y, "train")
    xte, yte = _split_arrays(test_x, test_y, "test")
    costs = tuple(_check_cost(c) for c in costs)
    ks = tuple(sorted(set(int(k) for k in ks)))
    if not ks or ks[0] < 1:
        raise ValueError(f"ks must be positive integers, got {ks}")
    if protocol == "cv" and ks == (1,):
        raise ValueError("protocol 'cv' at k = 1 takes its costs from a k >= 2 (one positive cannot be "
                         "cross-validated): add a k >= 2")
    classes = ytr.shape[1]
    draws = {(k, s): sample_low_shot(ytr, k, low_shot_rng(seed, k, s)) for k in ks for s in range(samples)}
    fitted = [k for k in ks if protocol == "official" or k >= 2]
    jobs = [(k, s, c) for k in fitted for s in range(samples) for c in range(classes)]
    grams = _Grams(augmented_gram(xtr), augmented_gram(xte, xtr)) if solver == "gram" else None
    out = dict(zip(jobs, ordered_jobs([delayed(_low_shot_fits)(xtr, ytr[:, c], draws[k, s][c], xte, yte[:, c], costs,
                                                               None if protocol == "official" else min(folds, k), grams)
                                       for k, s, c in jobs], n_jobs, solver)))
    results = []
    for k in fitted:
        if protocol == "official":
            by_cost = np.array([[np.mean([out[k, s, c][0][i] for c in range(classes)]) for i in range(len(costs))]
                                for s in range(samples)])  # samples x costs
            best = int(np.argmax(by_cost.mean(axis=0)))  # ties: first in grid order
            results.append(LowShotResult(k, tuple(100 * by_cost[:, best]), costs[best], {costs[best]: samples}, k))
        else:
            maps = tuple(100 * float(np.mean([out[k, s, c][0][0] for c in range(classes)])) for s in range(samples))
            chosen = [out[k, s, c][1] for s in range(samples) for c in range(classes)]
            results.append(LowShotResult(k, maps, None, {x: chosen.count(x) for x in sorted(set(chosen))}, k))
    if protocol == "cv" and ks[0] == 1:
        source = fitted[0]
        pairs = [(s, c) for s in range(samples) for c in range(classes)]
        aps = [ap for (ap,) in ordered_jobs([delayed(_cost_aps)(xtr, ytr[:, c], draws[1, s][c], xte, yte[:, c],
                                                                (out[source, s, c][1],), grams) for s, c in pairs],
                                            n_jobs, solver)]
        maps = tuple(100 * float(np.mean(aps[s * classes:(s + 1) * classes])) for s in range(samples))
        chosen = [out[source, s, c][1] for s, c in pairs]
        results.insert(0, LowShotResult(1, maps, None, {x: chosen.count(x) for x in sorted(set(chosen))}, source))
    return results
