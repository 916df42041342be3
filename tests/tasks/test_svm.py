"""VOC07 linear-SVM core: formulas checked against hand computations and an independent pipeline."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from sklearn.exceptions import ConvergenceWarning
from sklearn.model_selection import cross_val_score
from sklearn.svm import LinearSVC

from orl_bench.tasks.lowshot_svm import sample_low_shot
from orl_bench.tasks.svm import (
    OFFICIAL_COSTS,
    cv_ap,
    evaluate_voc07,
    fit_class,
    make_svm,
    normalize_rows,
    train_labels,
    voc_ap,
)

SMALL_COSTS = (0.01, 1.0, 100.0)

# Large costs stop at max_iter on these data; the protocol keeps the official max_iter anyway.
pytestmark = pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")


def reference_svm(cost: float) -> LinearSVC:
    # The official benchmark's LinearSVC call, plus the fixed seed the project records.
    return LinearSVC(
        C=cost,
        class_weight={1: 2, -1: 1},
        intercept_scaling=1.0,
        penalty="l2",
        loss="squared_hinge",
        tol=0.0001,
        dual=True,
        max_iter=2000,
        random_state=0,
    )


def devkit_ap(out: np.ndarray, gt: np.ndarray) -> float:
    """VOC2010 devkit VOCevalcls + VOCap as loops; gt 1 counts as TP, 0 as FP, -1 as neither."""
    order = sorted(range(len(out)), key=lambda i: -out[i])  # stable, like MATLAB's sort(-out)
    num_pos = int(sum(g == 1 for g in gt))
    tp = fp = 0
    rec, prec = [], []
    for i in order:
        tp += int(gt[i] == 1)
        fp += int(gt[i] == 0)
        rec.append(tp / num_pos)
        prec.append(tp / (tp + fp) if tp + fp else 0.0)
    mrec = [0.0] + rec + [1.0]
    mpre = [0.0] + prec + [0.0]
    for i in range(len(mpre) - 2, -1, -1):
        mpre[i] = max(mpre[i], mpre[i + 1])
    steps = [i for i in range(1, len(mrec)) if mrec[i] != mrec[i - 1]]
    return sum((mrec[i] - mrec[i - 1]) * mpre[i] for i in steps)


def make_data(n: int, classes: int, dims: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Features with a linear signal per class; ~20% positives, a fifth of them 'difficult' (-1)."""
    rng = np.random.default_rng(seed)
    w = np.random.default_rng(1234).normal(size=(dims, classes))  # shared by train and test
    x = rng.normal(size=(n, dims))
    logits = x @ w / np.sqrt(dims) + rng.normal(size=(n, classes))
    y = np.where(logits > 1.2, 1, 0)
    y[(y == 1) & (rng.random((n, classes)) < 0.2)] = -1
    return normalize_rows(x.astype(np.float32)), y


# ----------------------------------------------------------------------------- small helpers


def test_official_costs() -> None:
    assert len(OFFICIAL_COSTS) == 19
    assert OFFICIAL_COSTS[:3] == (1.0, 10.0, 100.0)
    assert OFFICIAL_COSTS[3] == 0.0625 and OFFICIAL_COSTS[-1] == 1.9073486328125e-06
    assert len(set(OFFICIAL_COSTS)) == 19


def test_train_labels_keep_ignore_rows_as_negatives() -> None:
    assert train_labels(np.array([1, 0, -1, 1])).tolist() == [1, -1, -1, 1]
    with pytest.raises(ValueError, match=r"only 1 \(present\), 0 \(absent\) or -1"):
        train_labels(np.array([1, 2]))


def test_make_svm_settings() -> None:
    params = make_svm(0.5).get_params()
    expected = reference_svm(0.5).get_params()
    assert params == expected
    assert params["random_state"] is not None
    with pytest.raises(ValueError, match="positive"):
        make_svm(0.0)


def test_normalize_rows() -> None:
    x = np.array([[3.0, 4.0], [0.0, 0.0], [1e-3, -2e-3]], dtype=np.float32)
    out = normalize_rows(x)
    assert out.dtype == np.float32
    expected = x.astype(np.float64) / (np.sqrt((x.astype(np.float64) ** 2).sum(1)) + 1e-5)[:, None]
    np.testing.assert_allclose(out, expected, rtol=1e-6)
    assert out[0].tolist() == pytest.approx([3 / 5.00001, 4 / 5.00001])
    assert normalize_rows(x.astype(np.float64)).dtype == np.float32


# ----------------------------------------------------------------------------- VOC AP by hand


def test_voc_ap_perfect_ranking() -> None:
    assert voc_ap(np.array([4.0, 3.0, 2.0, 1.0]), np.array([1, 1, 0, 0])) == 1.0


def test_voc_ap_mixed_ranking() -> None:
    # Ranked labels 1 0 1 0 1: precision at the three hits 1, 2/3, 3/5, each after a recall step
    # of 1/3; the monotone envelope keeps them (2/3 > 1/2, 3/5 > 1/2). AP = (1 + 2/3 + 3/5) / 3.
    scores = np.array([0.6, 0.9, 0.5, 0.8, 0.7])
    labels = np.array([0, 1, 1, 0, 1])
    assert voc_ap(scores, labels) == pytest.approx(34 / 45, abs=1e-12)


def test_voc_ap_interpolation_from_the_right() -> None:
    # Ranked labels 0 1 1: raw precision at the hits is 1/2 then 2/3; interpolated from the
    # right the first becomes 2/3, so AP = 1/2 * 2/3 + 1/2 * 2/3 = 2/3 (not 7/12 uninterpolated).
    assert voc_ap(np.array([3.0, 2.0, 1.0]), np.array([0, 1, 1])) == pytest.approx(2 / 3, abs=1e-12)


def test_voc_ap_ignore_rows_do_not_matter() -> None:
    scores = np.array([0.6, 0.9, 0.5, 0.8, 0.7])
    labels = np.array([0, 1, 1, 0, 1])
    for ignored_scores in ([10.0, -10.0], [0.75, 0.55], [0.9, 0.9]):
        with_ignored = voc_ap(np.r_[scores, ignored_scores], np.r_[labels, -1, -1])
        assert with_ignored == pytest.approx(34 / 45, abs=1e-12)


def test_voc_ap_ties_keep_input_order() -> None:
    # Tied top scores: stable ranking keeps input order.
    # labels 0 1 | 1 -> ranked 0 1 1 -> 2/3 (as above); labels 1 0 | 1 -> ranked 1 0 1 ->
    # 1/2 * 1 + 1/2 * 2/3 = 5/6.
    scores = np.array([0.5, 0.5, 0.1])
    assert voc_ap(scores, np.array([0, 1, 1])) == pytest.approx(2 / 3, abs=1e-12)
    assert voc_ap(scores, np.array([1, 0, 1])) == pytest.approx(5 / 6, abs=1e-12)


def test_voc_ap_matches_devkit_loop_on_random_data() -> None:
    rng = np.random.default_rng(0)
    for _ in range(20):
        scores = np.round(rng.normal(size=60), 1)  # rounding makes ties
        labels = rng.choice([1, 0, 0, -1], size=60)
        labels[0] = 1
        assert voc_ap(scores, labels) == pytest.approx(devkit_ap(scores, labels), abs=1e-12)


def test_voc_ap_errors() -> None:
    with pytest.raises(ValueError, match="no positive"):
        voc_ap(np.array([1.0, 2.0, 3.0]), np.array([0, -1, 0]))
    with pytest.raises(ValueError, match="equal length"):
        voc_ap(np.array([1.0, 2.0]), np.array([1, 0, 0]))
    with pytest.raises(ValueError, match="non-finite"):
        voc_ap(np.array([np.nan, 2.0]), np.array([1, 0]))


# ----------------------------------------------------------------------------- CV and cost choice


def test_cv_ap_matches_cross_val_score() -> None:
    x, y = make_data(150, 2, 16, seed=3)
    y_train = np.where(y[:, 0] == 1, 1, -1)
    for cost in SMALL_COSTS:
        expected = np.mean(
            cross_val_score(reference_svm(cost), x, y_train, cv=3, scoring="average_precision")
        )
        assert cv_ap(x, y[:, 0], cost) == pytest.approx(expected, abs=1e-12)


def test_cv_ap_needs_enough_rows_per_fold() -> None:
    x = np.eye(6)
    with pytest.raises(ValueError, match="at least 3 of each"):
        cv_ap(x, np.array([1, 1, 0, 0, 0, 0]), 1.0)


@pytest.mark.parametrize("solver", ["gram", "liblinear"])
def test_fit_class_ties_go_to_the_first_cost(solver: str) -> None:
    # Separable data: every cost reaches CV AP 1.0, so grid order decides.
    rng = np.random.default_rng(0)
    labels = np.array([1, 0] * 15)
    x = np.c_[np.where(labels == 1, 1.0, -1.0) * rng.uniform(1, 2, 30), rng.normal(size=30)]
    forward = fit_class(x, labels, (10.0, 1.0, 0.1), solver=solver)
    assert forward.cv_ap == (1.0, 1.0, 1.0)
    assert forward.best_cost == 10.0
    assert fit_class(x, labels, (0.1, 1.0, 10.0), solver=solver).best_cost == 0.1


def test_fit_class_rejects_an_unknown_solver_and_a_wrong_gram() -> None:
    x, y = make_data(60, 1, 8, seed=3)
    with pytest.raises(ValueError, match="unknown SVM solver 'newton'; expected one of"):
        fit_class(x, y[:, 0], SMALL_COSTS, solver="newton")
    with pytest.raises(ValueError, match=r"gram must be 60 x 60 \(rows x rows\), got \(59, 59\)"):
        fit_class(x, y[:, 0], SMALL_COSTS, gram=np.eye(59))


# ----------------------------------------------------------------------------- full protocol


def reference_voc07(train_x, train_y, test_x, test_y, costs) -> tuple[list[float], list[float]]:
    """docs/protocols.md 5.1 written out independently: official CV call, argmax, refit, devkit AP."""
    aps, chosen = [], []
    for c in range(train_y.shape[1]):
        y = train_y[:, c].copy()
        y[y == 0] = -1  # the ignore rows (-1) stay as negatives
        cv = [
            np.mean(
                cross_val_score(reference_svm(cost), train_x, y, cv=3, scoring="average_precision")
            )
            for cost in costs
        ]
        best = costs[int(np.argmax(cv))]
        clf = reference_svm(best).fit(train_x, y)
        aps.append(devkit_ap(clf.decision_function(test_x), test_y[:, c]))
        chosen.append(best)
    return aps, chosen


def test_evaluate_voc07_matches_independent_pipeline_full_grid() -> None:
    train_x, train_y = make_data(300, 20, 64, seed=10)
    test_x, test_y = make_data(200, 20, 64, seed=11)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ConvergenceWarning)
        ref_aps, ref_costs = reference_voc07(train_x, train_y, test_x, test_y, OFFICIAL_COSTS)
    result = evaluate_voc07(train_x, train_y, test_x, test_y, OFFICIAL_COSTS, n_jobs=1, solver="liblinear")
    assert result.num_classes == 20 and result.costs == OFFICIAL_COSTS
    assert list(result.best_cost) == ref_costs
    np.testing.assert_allclose(result.ap, ref_aps, rtol=0, atol=1e-12)
    assert result.map == pytest.approx(100 * np.mean(ref_aps), abs=1e-9)
    # The reference makes the same fits (CV folds + one refit per class), one warning each.
    assert result.unconverged == sum(issubclass(w.category, ConvergenceWarning) for w in caught)
    assert len(set(ref_costs)) > 1  # the data make the cost choice non-trivial
    assert 30 < result.map < 100  # and the features carry signal


def test_gram_solver_matches_liblinear() -> None:
    """Same problem, same tolerance: equal cost choices, CV APs and SVMs up to that tolerance. The
    grid stops at 10: on these data fits at cost 100 stop at max_iter, and unconverged fits of the
    two solvers stop at different points (both are counted in `unconverged`)."""
    train_x, train_y = make_data(300, 20, 64, seed=10)
    test_x, test_y = make_data(200, 20, 64, seed=11)
    costs = tuple(cost for cost in OFFICIAL_COSTS if cost <= 10)
    for c in range(20):
        lib = fit_class(train_x, train_y[:, c], costs, solver="liblinear")
        gram = fit_class(train_x, train_y[:, c], costs, solver="gram")
        assert lib.unconverged == gram.unconverged == 0
        assert gram.best_cost == lib.best_cost, c
        np.testing.assert_allclose(gram.cv_ap, lib.cv_ap, rtol=0, atol=2e-3)
        np.testing.assert_allclose(gram.coef, lib.coef, rtol=0, atol=2e-3 * np.abs(lib.coef).max())
        assert voc_ap(gram.decision_function(test_x), test_y[:, c]) == pytest.approx(
            voc_ap(lib.decision_function(test_x), test_y[:, c]), abs=2e-3)


@pytest.mark.parametrize("solver", ["gram", "liblinear"])
def test_evaluate_voc07_is_independent_of_n_jobs(solver: str) -> None:
    train_x, train_y = make_data(120, 4, 16, seed=20)
    test_x, test_y = make_data(80, 4, 16, seed=21)
    one = evaluate_voc07(train_x, train_y, test_x, test_y, SMALL_COSTS, n_jobs=1, solver=solver)
    two = evaluate_voc07(train_x, train_y, test_x, test_y, SMALL_COSTS, n_jobs=2, solver=solver)
    assert one == two


def test_evaluate_voc07_input_errors() -> None:
    x, y = make_data(60, 3, 8, seed=30)
    tx, ty = make_data(40, 3, 8, seed=31)
    y[:, 1] = np.where(y[:, 1] == 1, 0, y[:, 1])  # class 1 loses its train positives
    with pytest.raises(ValueError, match="class 1: the train split has 0 positive"):
        evaluate_voc07(x, y, tx, ty, SMALL_COSTS)
    x, y = make_data(60, 3, 8, seed=30)
    ty_no_pos = ty.copy()
    ty_no_pos[:, 2] = np.where(ty[:, 2] == 1, -1, ty[:, 2])
    with pytest.raises(ValueError, match="class 2: the test split has no positive"):
        evaluate_voc07(x, y, tx, ty_no_pos, SMALL_COSTS)
    with pytest.raises(ValueError, match="train features have 60 rows but train labels have 59"):
        evaluate_voc07(x, y[:59], tx, ty, SMALL_COSTS)
    with pytest.raises(ValueError, match="train features have 8 dims but test have 7"):
        evaluate_voc07(x, y, tx[:, :7], ty, SMALL_COSTS)
    with pytest.raises(ValueError, match="train labels have 3 classes but test have 2"):
        evaluate_voc07(x, y, tx, ty[:, :2], SMALL_COSTS)
    bad = y.copy()
    bad[0, 0] = 2
    with pytest.raises(ValueError, match=r"train labels must hold only 1 \(present\)"):
        evaluate_voc07(x, bad, tx, ty, SMALL_COSTS)
    nan_x = tx.copy()
    nan_x[3, 1] = np.nan
    with pytest.raises(ValueError, match=r"test features contain non-finite .* first rows \[3\]"):
        evaluate_voc07(x, y, nan_x, ty, SMALL_COSTS)


# ----------------------------------------------------------------------------- low-shot pieces


def test_sample_low_shot_counts_and_exclusions() -> None:
    labels = np.random.default_rng(0).choice([1, 0, 0, 0, -1], size=(500, 3))
    drawn = sample_low_shot(labels, 2, rng=7)
    assert sorted(drawn) == [0, 1, 2]
    for c, rows in drawn.items():
        assert rows.size == 40 and np.unique(rows).size == 40  # without replacement
        assert np.all(np.diff(rows) > 0)  # sorted: dataset order
        assert (labels[rows, c] == 1).sum() == 2
        assert (labels[rows, c] == 0).sum() == 38
        assert not (labels[rows, c] == -1).any()


def test_sample_low_shot_reproducible_from_seed() -> None:
    labels = np.random.default_rng(1).choice([1, 0, 0, 0, -1], size=(500, 4))
    a = sample_low_shot(labels, 4, rng=np.random.default_rng(3))
    b = sample_low_shot(labels, 4, rng=3)
    c = sample_low_shot(labels, 4, rng=4)
    assert all(np.array_equal(a[i], b[i]) for i in a)
    assert not all(np.array_equal(a[i], c[i]) for i in a)


def test_sample_low_shot_errors() -> None:
    labels = np.array([[1, 0], [0, 1], [-1, 0]] * 10)
    with pytest.raises(ValueError, match="class 0: low-shot k=1 needs 19 rows labelled 0, only 10"):
        sample_low_shot(labels, 1, rng=0)
    with pytest.raises(ValueError, match="positive integer"):
        sample_low_shot(labels, 0, rng=0)
