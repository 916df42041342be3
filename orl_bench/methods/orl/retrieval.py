"""Image kNN (docs/protocols.md 2.2) and RoI pair retrieval (docs/protocols.md 2.6), deterministic.

Equal scores are ordered by index rather than left to the library (the official code's
`torch.topk` leaves tie order unspecified), so equal inputs give equal artifacts.
"""
from __future__ import annotations

import faiss
import numpy as np


def knn(embeddings: np.ndarray, k: int) -> np.ndarray:
    """(N, k) int64 positions of each row's k most cosine-similar other rows, most similar first.

    `embeddings` are L2-normalised rows, so inner product is cosine; search is exact
    (faiss IndexFlatIP). The query itself is excluded by index, not by rank: the official code
    drops the first of the top k+1, which with exact duplicate images may be the duplicate
    rather than the image itself. Here the top k+1 are searched and the entry equal to the query's
    own position is removed wherever it appears; if it is absent (more than k exact duplicates
    outranked it), the last entry is dropped. Equal similarities among the k+1 found are ordered
    by position; which of several entries tied at the k+1 boundary are found is faiss's choice.
    """
    x = np.ascontiguousarray(embeddings, dtype=np.float32)
    if x.ndim != 2:
        raise ValueError(f"expected (N, D) embeddings, got shape {x.shape}")
    n = len(x)
    if not 1 <= k < n:
        raise ValueError(f"need 1 <= k < N (N = {n} images), got k = {k}")
    index = faiss.IndexFlatIP(x.shape[1])
    index.add(x)
    scores, ids = index.search(x, k + 1)
    order = np.lexsort((ids, -scores), axis=1)  # descending similarity, then position
    ranked = np.take_along_axis(ids, order, axis=1)
    drop = ranked == np.arange(n)[:, None]
    drop[~drop.any(axis=1), k] = True
    return ranked[~drop].reshape(n, k).astype(np.int64)


def pair_count(ratio: float, num_query_boxes: int) -> int:
    """Pairs per (query, neighbour): `int(ratio * B)`, at least 1 (docs/protocols.md 2.6).

    Computed exactly as the official code does, in double precision and truncated, so the counts
    match its files bit for bit, including float quirks (0.29 * 100 = 28.999... -> 28).
    """
    if not 0 < ratio <= 1:
        raise ValueError(f"pair ratio must be in (0, 1], got {ratio}")
    return max(1, int(ratio * num_query_boxes))


def retrieve_pairs(query_emb: np.ndarray, neigh_emb: np.ndarray, ratio: float) -> np.ndarray:
    """(m, 2) int64 (query box, neighbour box) index pairs: the global top entries of the
    B x B_k cosine matrix, flattened row-major; not a per-row argmax.

    m = `pair_count(ratio, B)` (<= B <= B * B_k since ratio <= 1); 0 when either image has no
    boxes. Similarities are computed in float64, so float32 rounding of 2048-term sums does not
    reorder near-equal pairs, and sorted descending with a stable sort: equal values keep
    flat-index order.
    """
    q = np.asarray(query_emb, np.float64)
    v = np.asarray(neigh_emb, np.float64)
    if q.ndim != 2 or v.ndim != 2 or q.shape[1] != v.shape[1]:
        raise ValueError(f"expected (B, D) and (B_k, D) embeddings, got {q.shape} and {v.shape}")
    m = pair_count(ratio, len(q))
    if len(q) == 0 or len(v) == 0:
        return np.zeros((0, 2), np.int64)
    flat = (q @ v.T).ravel()
    top = np.argsort(-flat, kind="stable")[:m]
    return np.stack(np.divmod(top, len(v)), axis=1).astype(np.int64)
