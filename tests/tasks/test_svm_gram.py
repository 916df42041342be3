"""The Gram-space SVM solver against an independent minimisation of the primal objective."""
from __future__ import annotations

import numpy as np
import pytest
from scipy.optimize import minimize

from orl_bench.tasks.svm_gram import augmented_gram, primal, solve_path


def primal_optimum(x: np.ndarray, y: np.ndarray, cost: float) -> np.ndarray:
    """argmin over (w, b) of 1/2 (|w|^2 + b^2) + sum_i C_i max(0, 1 - y_i (w.x_i + b))^2, C_i = 2 C
    for y_i = 1 and C otherwise (LinearSVC's squared hinge, class_weight {1: 2}, regularised bias),
    by L-BFGS on the smooth objective."""
    weights = np.where(y > 0, 2 * cost, cost)
    xa = np.c_[x, np.ones(len(x))]

    def objective(wa: np.ndarray) -> tuple[float, np.ndarray]:
        slack = np.maximum(0.0, 1 - y * (xa @ wa))
        value = 0.5 * wa @ wa + np.sum(weights * slack**2)
        grad = wa - 2 * xa.T @ (weights * slack * y)
        return value, grad

    result = minimize(objective, np.zeros(xa.shape[1]), jac=True, method="L-BFGS-B",
                      options={"gtol": 1e-12, "ftol": 1e-15, "maxiter": 10000})
    return result.x


@pytest.fixture(scope="module")
def problem() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(80, 6))
    y = np.where(x @ rng.normal(size=6) + 0.8 * rng.normal(size=80) > 0.3, 1.0, -1.0)
    return x, y


@pytest.mark.parametrize("cost", [0.001, 0.1, 1.0, 10.0])
def test_solution_is_the_primal_optimum(problem, cost: float) -> None:
    x, y = problem
    betas, converged = solve_path(augmented_gram(x), y, (cost,), tol=1e-8, max_iter=100_000)
    assert converged.all()
    coef, intercept = primal(x, betas[0])
    expected = primal_optimum(x, y, cost)
    np.testing.assert_allclose(np.r_[coef, intercept], expected, rtol=0, atol=1e-5 * max(1, np.abs(expected).max()))


def test_warm_started_path_equals_cold_solves_in_any_order(problem) -> None:
    x, y = problem
    gram = augmented_gram(x)
    costs = (10.0, 0.01, 1.0, 0.1)
    path, _ = solve_path(gram, y, costs, tol=1e-9, max_iter=100_000)
    for i, cost in enumerate(costs):
        cold, _ = solve_path(gram, y, (cost,), tol=1e-9, max_iter=100_000)
        np.testing.assert_allclose(path[i], cold[0], rtol=0, atol=1e-6 * max(1, np.abs(cold).max()))


def test_max_iter_is_reported_as_not_converged(problem) -> None:
    x, y = problem
    _, converged = solve_path(augmented_gram(x), y, (0.001, 100.0), tol=1e-12, max_iter=2)
    assert not converged.any()


def test_same_seed_same_answer(problem) -> None:
    x, y = problem
    gram = augmented_gram(x)
    a, _ = solve_path(gram, y, (1.0,), tol=1e-2, max_iter=50, seed=3)
    b, _ = solve_path(gram, y, (1.0,), tol=1e-2, max_iter=50, seed=3)
    np.testing.assert_array_equal(a, b)


def test_cross_gram_is_the_bias_augmented_kernel() -> None:
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=(4, 3)), rng.normal(size=(5, 3))
    np.testing.assert_allclose(augmented_gram(a, b), np.c_[a, np.ones(4)] @ np.c_[b, np.ones(5)].T, atol=1e-12)
