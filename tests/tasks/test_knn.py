"""Weighted kNN (tasks/knn.py) against a brute-force computation of DINO's vote on fixed features."""
from __future__ import annotations

import numpy as np
import pytest

from orl_bench.tasks.knn import knn_classify


def brute_force(train_x, train_y, test_x, test_y, classes, k, temperature):
    """Cosine similarity to every training row, the k largest, exp(sim / T) summed per class."""
    unit = lambda x: x / np.linalg.norm(x, axis=1, keepdims=True)  # noqa: E731
    sims = unit(test_x) @ unit(train_x).T
    top1 = top5 = 0
    for i in range(len(test_x)):
        nearest = np.argsort(-sims[i], kind="stable")[:k]
        votes = np.zeros(classes)
        for j in nearest:
            votes[train_y[j]] += np.exp(sims[i, j] / temperature)
        ranking = sorted(range(classes), key=lambda c: -votes[c])
        top1 += ranking[0] == test_y[i]
        top5 += test_y[i] in ranking[:5]
    return 100 * top1 / len(test_x), 100 * top5 / len(test_x)


@pytest.mark.parametrize("k,temperature", [(20, 0.07), (5, 0.5), (1, 0.07)])
def test_vote_equals_brute_force(k, temperature):
    rng = np.random.default_rng(0)
    classes = 8
    centres = rng.normal(size=(classes, 16))
    train_y, test_y = rng.integers(0, classes, 300), rng.integers(0, classes, 100)
    train_x = centres[train_y] + 1.5 * rng.normal(size=(300, 16))
    test_x = centres[test_y] + 1.5 * rng.normal(size=(100, 16))
    ours = knn_classify(train_x, train_y, test_x, test_y, classes, k, temperature)
    top1, top5 = brute_force(train_x, train_y, test_x, test_y, classes, k, temperature)
    assert ours["top1"] == pytest.approx(top1) and ours["top5"] == pytest.approx(top5)
    assert 100 / classes < ours["top1"] < 100  # the features carry signal, not all of it


def test_clear_errors():
    x, y = np.ones((4, 3)), np.zeros(4, int)
    with pytest.raises(ValueError, match="need k >= 1 and temperature > 0"):
        knn_classify(x, y, x, y, 2, k=0)
    with pytest.raises(ValueError, match="train features have 3 dims but test have 2"):
        knn_classify(x, y, x[:, :2], y, 2)
