"""Image kNN (docs/protocols.md 2.2) and global top-ratio RoI pairs (docs/protocols.md 2.6) against brute force."""
from __future__ import annotations

import numpy as np
import pytest

from orl_bench.methods.orl.retrieval import knn, pair_count, retrieve_pairs


def unit_rows(rng: np.random.Generator, n: int, d: int) -> np.ndarray:
    x = rng.standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def brute_knn(x: np.ndarray, k: int) -> np.ndarray:
    sim = x.astype(np.float64) @ x.T.astype(np.float64)
    return np.array([sorted((j for j in range(len(x)) if j != i), key=lambda j: (-sim[i, j], j))[:k]
                     for i in range(len(x))])


def test_knn_matches_brute_force():
    x = unit_rows(np.random.default_rng(0), 60, 16)
    for k in (1, 5, 59):
        out = knn(x, k)
        assert out.dtype == np.int64 and out.shape == (60, k)
        assert np.array_equal(out, brute_knn(x, k))


def test_knn_excludes_self_by_index_with_exact_duplicates():
    x = unit_rows(np.random.default_rng(1), 30, 8)
    x[7] = x[3]
    x[11] = x[12] = x[10]
    x[20:26] = x[20]  # six identical images, more than k + 1
    out = knn(x, 3)
    assert (out != np.arange(30)[:, None]).all()
    assert out[3, 0] == 7 and out[7, 0] == 3
    assert out[10, :2].tolist() == [11, 12] and out[12, :2].tolist() == [10, 11]  # ties by position
    for i in range(20, 26):
        assert set(out[i]) <= set(range(20, 26)) - {i}
        assert out[i].tolist() == sorted(out[i].tolist())


def test_knn_bad_input():
    x = unit_rows(np.random.default_rng(2), 5, 4)
    with pytest.raises(ValueError, match="k < N"):
        knn(x, 5)
    with pytest.raises(ValueError, match=r"\(N, D\)"):
        knn(x[0], 1)


def brute_pairs(q: np.ndarray, v: np.ndarray, ratio: float) -> list[list[int]]:
    """docs/protocols.md 2.6 in plain loops: every (query box, neighbour box) similarity, flattened
    row-major, sorted descending (ties by flat index), top max(1, int(ratio * B))."""
    entries = []
    for a in range(len(q)):
        for b in range(len(v)):
            sim = sum(float(s) * float(t) for s, t in zip(q[a], v[b]))
            entries.append((-sim, a * len(v) + b, a, b))
    entries.sort()
    count = max(1, int(ratio * len(q)))
    return [[a, b] for _, _, a, b in entries[:count]]


@pytest.mark.parametrize("b, bk, ratio", [(100, 100, 0.1), (100, 37, 0.05), (63, 100, 0.2),
                                         (7, 12, 0.1), (1, 1, 0.1), (1, 9, 0.2), (12, 1, 1.0)])
def test_pairs_match_brute_force(b, bk, ratio):
    rng = np.random.default_rng(b * 1000 + bk)
    q, v = unit_rows(rng, b, 24), unit_rows(rng, bk, 24)
    out = retrieve_pairs(q, v, ratio)
    assert out.dtype == np.int64 and out.shape == (pair_count(ratio, b), 2)
    assert out.tolist() == brute_pairs(q, v, ratio)


def test_pairs_are_global_not_per_row():
    q = np.array([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]])
    v = np.array([[1.0, 0.0], [0.99, 0.141]])
    # both best entries lie in query row 0: a per-row argmax would give one pair per row
    assert retrieve_pairs(q, v, 0.7).tolist() == [[0, 0], [0, 1]]


def test_pair_ties_are_broken_by_flat_index():
    q = np.array([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.5, 0.5]])  # exact in binary arithmetic
    v = np.array([[0.0, 1.0], [1.0, 0.0], [1.0, 0.0]])
    assert retrieve_pairs(q, v, 1.0).tolist() == [[0, 1], [0, 2], [1, 1], [1, 2]]
    assert retrieve_pairs(q, v, 1.0).tolist() == brute_pairs(q, v, 1.0)


def test_pair_count_rule():
    assert pair_count(0.1, 100) == 10 and pair_count(0.05, 100) == 5 and pair_count(0.2, 100) == 20
    assert pair_count(0.1, 5) == 1 and pair_count(0.1, 19) == 1 and pair_count(0.1, 20) == 2
    assert pair_count(0.29, 100) == 28  # truncation of 28.999..., as the official int()
    for bad in (0.0, -0.1, 1.5):
        with pytest.raises(ValueError, match="ratio"):
            pair_count(bad, 10)
    assert retrieve_pairs(np.zeros((0, 4)), np.ones((3, 4)), 0.1).shape == (0, 2)
    assert retrieve_pairs(np.ones((3, 4)), np.zeros((0, 4)), 0.1).shape == (0, 2)
