"""Linear-SVM solver and metric core of the VOC07 benchmarks (docs/protocols.md 5.1, and 5.2's pieces).

Pure numpy + scikit-learn. It reproduces the official benchmark code (OpenSelfSup's
``benchmarks/svm_tools``, derived from FAIR's self-supervision benchmark) with these recorded
choices:

- Labels are 1 (present), 0 (absent), -1 (ignore: difficult only). For training, 0 and -1 both
  become -1, so ignore rows stay in as negatives (the official code does this, in the
  cross-validation folds too). For test AP the ignore rows are dropped.
- Cost selection: per class, the cost with the best mean 3-fold cross-validated AP. The folds are
  scikit-learn's unshuffled ``StratifiedKFold`` and the fold score is ``average_precision_score`` on
  the decision function, i.e. exactly ``cross_val_score(svm, x, y, cv=3,
  scoring="average_precision")`` as in the official code. Ties go to the first cost in grid order
  (``np.argmax``, as the official ``get_chosen_costs``), then the SVM is refit on all rows.
- ``random_state`` is fixed (``SVM_RANDOM_STATE``). liblinear's dual coordinate descent shuffles
  its rows; the official code leaves the seed to numpy's global RNG, so its numbers vary slightly
  run to run while ours are reproducible.
- Test AP ties: scores are sorted with a stable sort, so tied rows keep their input order, as the
  VOC devkit's MATLAB ``sort`` does. (The official Python helper's ``argsort()[::-1]`` leaves the
  order of ties unspecified; with continuous SVM scores ties are rare.)
- Two solvers of that same problem (``SOLVERS``): ``liblinear`` is scikit-learn's LinearSVC, as
  the official code; ``gram`` (the default, `svm_gram`) runs liblinear's algorithm on a Gram
  matrix shared by every class, cost and fold, warm-started along the cost grid, many times
  faster. Both stop at the same tolerance; records name the one that ran.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from joblib import Parallel, delayed, effective_n_jobs
from sklearn.exceptions import ConvergenceWarning
from sklearn.metrics import average_precision_score
from sklearn.model_selection import StratifiedKFold
from sklearn.svm import LinearSVC
from threadpoolctl import threadpool_limits

from orl_bench.faults import fault_point
from orl_bench.tasks.svm_gram import augmented_gram, primal, solve_path

# Official grid, in the official order (it decides ties): "1.0,10.0,100.0" plus 0.5**k, k = 4..19.
OFFICIAL_COSTS: tuple[float, ...] = (1.0, 10.0, 100.0) + tuple(0.5**k for k in range(4, 20))

SVM_RANDOM_STATE = 0
SVM_MAX_ITER = 2000
SVM_TOL = 1e-4
SOLVERS = ("gram", "liblinear")  # svm_gram's Gram-space dual CD; scikit-learn's LinearSVC (official)
NEGATIVES_PER_POSITIVE = 19  # low-shot: k positives and 19 k negatives per class (docs/protocols.md 5.2)

_VALID_LABELS = (1, 0, -1)


# ----------------------------------------------------------------------------- input checks


def _labels(labels: np.ndarray, name: str, ndim: int) -> np.ndarray:
    arr = np.asarray(labels)
    if arr.ndim != ndim:
        raise ValueError(f"{name} must be {ndim}-D, got shape {arr.shape}")
    bad = ~np.isin(arr, _VALID_LABELS)
    if bad.any():
        found = np.unique(arr[bad])[:5].tolist()
        raise ValueError(
            f"{name} must hold only 1 (present), 0 (absent) or -1 (ignore); found {found}"
        )
    return arr.astype(np.int64)


def _features(features: np.ndarray, name: str) -> np.ndarray:
    # float64 C order once, so liblinear's own conversion is a no-op on every fit.
    arr = np.ascontiguousarray(features, dtype=np.float64)
    if arr.ndim != 2:
        raise ValueError(f"{name} must be 2-D (rows x dims), got shape {arr.shape}")
    if not np.isfinite(arr).all():
        bad_rows = np.flatnonzero(~np.isfinite(arr).all(axis=1))
        raise ValueError(
            f"{name} contain non-finite values (NaN or inf) in {bad_rows.size} rows, "
            f"first rows {bad_rows[:5].tolist()}"
        )
    return arr


def check_solver(solver: str) -> str:
    if solver not in SOLVERS:
        raise ValueError(f"unknown SVM solver '{solver}'; expected one of {SOLVERS}")
    return solver


def _check_cost(cost: float) -> float:
    cost = float(cost)
    if not (np.isfinite(cost) and cost > 0):
        raise ValueError(f"SVM cost must be a finite positive number, got {cost}")
    return cost


def _cv_problem(train_y: np.ndarray, folds: int) -> str | None:
    """Why ``folds``-fold stratified CV is impossible on +-1 labels, or None if it is possible."""
    if folds < 2:
        return f"needs folds >= 2, got {folds}"
    pos = int((train_y == 1).sum())
    neg = train_y.size - pos
    if pos < folds or neg < folds:
        return (
            f"has {pos} positive and {neg} negative/ignore rows; {folds}-fold stratified "
            f"cross-validation needs at least {folds} of each"
        )
    return None


# ----------------------------------------------------------------------------- building blocks


def normalize_rows(x: np.ndarray) -> np.ndarray:
    """Each row divided by (its L2 norm + 1e-5), as docs/protocols.md 5.1; float32 in, float32 out."""
    arr = np.asarray(x, dtype=np.float32)
    if arr.ndim != 2:
        raise ValueError(f"features must be 2-D (rows x dims), got shape {arr.shape}")
    # The official helper computes the norm in the features' own float32, and so do we.
    return arr / (np.linalg.norm(arr, axis=1, keepdims=True) + np.float32(1e-5))


def train_labels(labels: np.ndarray) -> np.ndarray:
    """Map {1, 0, -1} to SVM targets {1, -1, -1}: ignore rows train as negatives (official)."""
    y = _labels(labels, "labels", np.ndim(labels))
    return np.where(y == 1, 1, -1)


def make_svm(cost: float) -> LinearSVC:
    """The docs/protocols.md 5.1 solver: L2-regularised squared-hinge linear SVM, liblinear dual CD."""
    return LinearSVC(
        C=_check_cost(cost),
        penalty="l2",
        loss="squared_hinge",
        dual=True,
        tol=SVM_TOL,
        max_iter=SVM_MAX_ITER,
        class_weight={1: 2, -1: 1},
        fit_intercept=True,
        intercept_scaling=1.0,
        random_state=SVM_RANDOM_STATE,
    )


def decision_scores(x: np.ndarray, coef: np.ndarray, intercept: float) -> np.ndarray:
    """``x @ coef + intercept`` computed as LinearSVC.decision_function does (same BLAS call)."""
    x64 = np.asarray(x, dtype=np.float64)
    return (x64 @ np.asarray(coef, dtype=np.float64).reshape(-1, 1)).ravel() + intercept


def voc_ap(scores: np.ndarray, labels: np.ndarray) -> float:
    """VOC2010+ area AP (a fraction) of one class; rows labelled -1 are dropped.

    Scores are ranked descending with a stable sort (ties keep input order, as the devkit's
    MATLAB sort); precision is padded with 0 at both ends and recall with 0 and 1, made monotone
    non-increasing from the right, and summed as delta-recall x precision where recall changes.
    """
    s = np.asarray(scores, dtype=np.float64)
    y = _labels(labels, "labels", 1)
    if s.ndim != 1 or s.shape != y.shape:
        raise ValueError(f"scores {s.shape} and labels {y.shape} must be 1-D of equal length")
    if not np.isfinite(s).all():
        raise ValueError("scores contain non-finite values (NaN or inf)")
    keep = y != -1
    positive = y[keep] == 1
    num_pos = int(positive.sum())
    if num_pos == 0:
        raise ValueError("AP is undefined: no positive (label 1) rows among the scored rows")
    hits = positive[np.argsort(-s[keep], kind="stable")]
    tp = np.cumsum(hits)
    fp = np.cumsum(~hits)
    recall = np.concatenate(([0.0], tp / num_pos, [1.0]))
    precision = np.concatenate(([0.0], tp / (tp + fp), [0.0]))
    precision = np.maximum.accumulate(precision[::-1])[::-1]
    steps = np.flatnonzero(recall[1:] != recall[:-1]) + 1
    return float(np.sum((recall[steps] - recall[steps - 1]) * precision[steps]))


def chance_ap(labels: np.ndarray) -> np.ndarray:
    """Per class (N x C labels in {1, 0, -1}), the positive rate among rows not labelled -1: the
    chance level of ``voc_ap`` (a random ranking's expected AP as the split grows). Fractions."""
    y = _labels(labels, "labels", 2)
    positives = (y == 1).sum(axis=0)
    if not positives.all():
        missing = np.flatnonzero(positives == 0).tolist()
        raise ValueError(f"AP is undefined: classes {missing} have no positive (label 1) rows")
    return positives / (y != -1).sum(axis=0)


def ordered_jobs(jobs: list, n_jobs: int | None, solver: str) -> Iterator:
    """Run joblib `delayed` jobs, yielding results in order, each past the `svm.class` fault point.

    liblinear jobs run in processes: its shuffling RNG is one process-global generator, which
    threads would interleave. Gram jobs run in threads (the compiled loop releases the GIL), so
    they share the Gram matrix; BLAS is held to one thread each so workers do not oversubscribe.
    """
    threads = solver == "gram"
    with threadpool_limits(1 if threads and effective_n_jobs(n_jobs) > 1 else None, user_api="blas"):
        for result in Parallel(n_jobs=n_jobs, return_as="generator", prefer="threads" if threads else None)(jobs):
            yield result
            fault_point("svm.class")


def _fit(x: np.ndarray, y: np.ndarray, cost: float) -> tuple[LinearSVC, bool]:
    # Non-convergence is counted and reported in the result, so liblinear's per-fit warning
    # (hundreds per run at the small costs) is silenced here, inside the worker process.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        model = make_svm(cost).fit(x, y)
    return model, int(model.n_iter_) < SVM_MAX_ITER


Splits = list[tuple[np.ndarray, np.ndarray]]


def _cv(x: np.ndarray, y: np.ndarray, cost: float, splits: Splits) -> tuple[float, int]:
    """Mean held-out AP over the splits, and how many fold fits hit max_iter."""
    aps, unconverged = [], 0
    for train_idx, test_idx in splits:
        model, converged = _fit(x[train_idx], y[train_idx], cost)
        unconverged += not converged
        aps.append(average_precision_score(y[test_idx], model.decision_function(x[test_idx])))
    return float(np.mean(aps)), unconverged


def _splits(y: np.ndarray, folds: int) -> Splits:
    problem = _cv_problem(y, folds)
    if problem:
        raise ValueError(f"cross-validation impossible: the training data {problem}")
    # Unshuffled, so the folds are the ones cross_val_score(cv=folds) would use.
    return list(StratifiedKFold(n_splits=folds).split(np.zeros((y.size, 1)), y))


def _rows_match(x: np.ndarray, y: np.ndarray) -> None:
    if x.shape[0] != y.shape[0]:
        raise ValueError(f"features have {x.shape[0]} rows but labels have {y.shape[0]}")


def cv_ap(features: np.ndarray, labels: np.ndarray, cost: float, folds: int = 3) -> float:
    """Mean ``folds``-fold cross-validated AP of one class at one cost (labels in {1, 0, -1})."""
    x = _features(features, "features")
    y = train_labels(_labels(labels, "labels", 1))
    _rows_match(x, y)
    return _cv(x, y, _check_cost(cost), _splits(y, folds))[0]


# ----------------------------------------------------------------------------- per class, full task


@dataclass(frozen=True)
class ClassFit:
    """One class: the CV AP of every cost, the chosen cost, and the SVM refit on all rows."""

    costs: tuple[float, ...]
    cv_ap: tuple[float, ...]  # mean CV AP (sklearn's, a fraction) per cost, grid order
    best_cost: float
    coef: np.ndarray  # (D,) float64
    intercept: float
    unconverged: int  # fits (CV folds and refit) that stopped at max_iter

    def decision_function(self, x: np.ndarray) -> np.ndarray:
        return decision_scores(x, self.coef, self.intercept)


def _cv_aps_liblinear(x: np.ndarray, y: np.ndarray, costs: tuple[float, ...], splits: Splits) -> tuple[list[float], int]:
    results = [_cv(x, y, cost, splits) for cost in costs]
    return [ap for ap, _ in results], sum(n for _, n in results)


def _cv_aps_gram(gram: np.ndarray, y: np.ndarray, costs: tuple[float, ...], splits: Splits) -> tuple[list[float], int]:
    """The same CV as `_cv_aps_liblinear`, each fold's whole cost path solved on its Gram block."""
    per_fold, unconverged = [], 0
    for train_idx, test_idx in splits:
        betas, converged = solve_path(gram[np.ix_(train_idx, train_idx)], y[train_idx], costs, SVM_TOL,
                                      SVM_MAX_ITER, SVM_RANDOM_STATE)
        unconverged += int((~converged).sum())
        held_out = gram[np.ix_(test_idx, train_idx)] @ betas.T  # decision values, rows x costs
        per_fold.append([average_precision_score(y[test_idx], held_out[:, i]) for i in range(len(costs))])
    return [float(ap) for ap in np.mean(per_fold, axis=0)], unconverged


def fit_class(
    features: np.ndarray,
    labels: np.ndarray,
    costs: tuple[float, ...] = OFFICIAL_COSTS,
    folds: int = 3,
    solver: str = "gram",
    gram: np.ndarray | None = None,
) -> ClassFit:
    """Choose the cost by CV AP (ties -> first in grid order), then refit on all rows.

    ``solver``: ``gram`` (`svm_gram`, the default) or ``liblinear`` (scikit-learn's LinearSVC, the
    official code's solver); both solve the same problem to the same tolerance. ``gram`` may be
    the precomputed `augmented_gram` of ``features`` (one Gram serves every class).
    """
    x = _features(features, "features")
    y = train_labels(_labels(labels, "labels", 1))
    _rows_match(x, y)
    costs = tuple(_check_cost(c) for c in costs)
    if not costs:
        raise ValueError("the cost grid is empty")
    check_solver(solver)
    splits = _splits(y, folds)
    if solver == "liblinear":
        aps, unconverged = _cv_aps_liblinear(x, y, costs, splits)
        best = costs[int(np.argmax(aps))]
        model, converged = _fit(x, y, best)
        coef, intercept = model.coef_.ravel().copy(), float(model.intercept_[0])
    else:
        gram = augmented_gram(x) if gram is None else gram
        if gram.shape != (x.shape[0],) * 2:
            raise ValueError(f"gram must be {x.shape[0]} x {x.shape[0]} (rows x rows), got {gram.shape}")
        aps, unconverged = _cv_aps_gram(gram, y, costs, splits)
        best = costs[int(np.argmax(aps))]
        betas, refit_converged = solve_path(gram, y, (best,), SVM_TOL, SVM_MAX_ITER, SVM_RANDOM_STATE)
        converged = bool(refit_converged[0])
        coef, intercept = primal(x, betas[0])
    return ClassFit(costs=costs, cv_ap=tuple(aps), best_cost=best, coef=coef, intercept=intercept,
                    unconverged=unconverged + (not converged))


@dataclass(frozen=True)
class SvmResult:
    """VOC07 SVM outcome. ``ap`` and ``cv_ap`` are fractions; ``map`` is mean test AP x 100."""

    ap: tuple[float, ...]
    best_cost: tuple[float, ...]
    cv_ap: tuple[tuple[float, ...], ...]  # per class, per cost
    costs: tuple[float, ...]
    map: float
    num_classes: int
    unconverged: int  # SVM fits, over all classes, that stopped at max_iter


def _split_arrays(x: np.ndarray, y: np.ndarray, split: str) -> tuple[np.ndarray, np.ndarray]:
    xs = _features(x, f"{split} features")
    ys = _labels(y, f"{split} labels", 2)
    if xs.shape[0] != ys.shape[0]:
        raise ValueError(
            f"{split} features have {xs.shape[0]} rows but {split} labels have {ys.shape[0]}"
        )
    return xs, ys


def evaluate_voc07(
    train_x: np.ndarray,
    train_y: np.ndarray,
    test_x: np.ndarray,
    test_y: np.ndarray,
    costs: tuple[float, ...] = OFFICIAL_COSTS,
    folds: int = 3,
    n_jobs: int | None = None,
    solver: str = "gram",
) -> SvmResult:
    """docs/protocols.md 5.1 from features to mAP: one CV-tuned SVM per class, VOC AP on test.

    Features (N x D) should already be ``normalize_rows``-ed; labels are N x C in {1, 0, -1}.
    ``n_jobs`` follows joblib (None: 1 unless inside ``joblib.parallel_config``; -1: all
    cores); results do not depend on it. ``solver`` as `fit_class`: with ``gram`` one Gram matrix
    of the training rows serves all classes, which run in threads sharing it.
    """
    xtr, ytr = _split_arrays(train_x, train_y, "train")
    xte, yte = _split_arrays(test_x, test_y, "test")
    if xtr.shape[1] != xte.shape[1]:
        raise ValueError(f"train features have {xtr.shape[1]} dims but test have {xte.shape[1]}")
    if ytr.shape[1] != yte.shape[1]:
        raise ValueError(f"train labels have {ytr.shape[1]} classes but test have {yte.shape[1]}")
    num_classes = ytr.shape[1]
    if num_classes == 0:
        raise ValueError("labels have no classes (0 columns)")
    for c in range(num_classes):
        problem = _cv_problem(train_labels(ytr[:, c]), folds)
        if problem:
            raise ValueError(f"class {c}: the train split {problem}")
        if not (yte[:, c] == 1).any():
            raise ValueError(f"class {c}: the test split has no positive (label 1) rows")
    gram = augmented_gram(xtr) if solver == "gram" else None
    fits = list(ordered_jobs([delayed(fit_class)(xtr, ytr[:, c], costs, folds, solver, gram)
                              for c in range(num_classes)], n_jobs, solver))
    aps = tuple(voc_ap(fit.decision_function(xte), yte[:, c]) for c, fit in enumerate(fits))
    return SvmResult(
        ap=aps,
        best_cost=tuple(fit.best_cost for fit in fits),
        cv_ap=tuple(fit.cv_ap for fit in fits),
        costs=fits[0].costs,
        map=100.0 * float(np.mean(aps)),
        num_classes=num_classes,
        unconverged=sum(fit.unconverged for fit in fits),
    )
