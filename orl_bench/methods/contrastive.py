"""The InfoNCE losses of SimCLR (NT-Xent) and MoCo (a query against its key and a queue of keys).

Both are a cross-entropy over cosine similarities divided by a temperature. They are computed in
float32 with autocast off: bf16 rounds a cosine near 1 by up to ~0.004, which temperature 0.1
turns into ~0.04 on a logit.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from orl_bench.engine.distributed import all_gather_with_grad


def check_temperature(temperature: float) -> None:
    if not temperature > 0:
        raise ValueError(f"method.temperature must be > 0, got {temperature}")


def nt_xent(z1: torch.Tensor, z2: torch.Tensor, temperature: float) -> torch.Tensor:
    """SimCLR's NT-Xent over the global batch of N images, two views each (z1[i], z2[i]).

    Every one of the 2N embeddings is an anchor: its positive is the other view of its image, its
    negatives the other 2N - 2 embeddings (both views of every other image). This rank scores its
    own anchors against every rank's embeddings, gathered with their gradients; the mean of the
    ranks' losses is the loss of one process holding the whole batch.
    """
    with torch.autocast(z1.device.type, enabled=False):
        z1, z2 = F.normalize(z1.float(), dim=1), F.normalize(z2.float(), dim=1)
        pairs, rows = all_gather_with_grad(torch.stack((z1, z2), dim=1))  # (N, 2, dim), rank order
        n_global = len(pairs)
        anchors = torch.cat((z1, z2))
        candidates = torch.cat((pairs[:, 0], pairs[:, 1]))  # view 1 of all images, then view 2
        logits = anchors @ candidates.T / temperature
        own = torch.arange(rows.start, rows.stop, device=logits.device)
        itself = torch.cat((own, own + n_global))
        positive = torch.cat((own + n_global, own))
        is_itself = torch.zeros_like(logits, dtype=torch.bool)
        is_itself[torch.arange(len(anchors), device=logits.device), itself] = True
        return F.cross_entropy(logits.masked_fill(is_itself, float("-inf")), positive)


def info_nce(q: torch.Tensor, k: torch.Tensor, queue: torch.Tensor, temperature: float) -> torch.Tensor:
    """MoCo's InfoNCE: each query q[i] against its key k[i] (the positive) and every key in the
    queue (the negatives; unit rows, holding none of this batch's keys)."""
    with torch.autocast(q.device.type, enabled=False):
        q, k = F.normalize(q.float(), dim=1), F.normalize(k.float(), dim=1)
        logits = torch.cat(((q * k).sum(dim=1, keepdim=True), q @ queue.float().T), dim=1) / temperature
        return F.cross_entropy(logits, torch.zeros(len(q), dtype=torch.long, device=q.device))
