"""Entropic optimal transport by Sinkhorn iterations in the log domain (UniVIP's instance matching,
Self-EMD's matching of feature-map positions), with the masses and the plan-weighted cosine both
methods' losses are made of.

The plan minimises <plan, cost> - eps * entropy(plan) with row sums `a` and column sums `b`; it
is diag(exp(f / eps)) exp(-cost / eps) diag(exp(g / eps)) for potentials f, g. Updating f and g
with logsumexp instead of scaling exp(-cost / eps) keeps small eps from underflowing. A zero
entry of a marginal is log 0 = -inf: its row (column) of the plan is 0, which is well defined as
long as each marginal has some mass.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def sinkhorn(cost: torch.Tensor, a: torch.Tensor, b: torch.Tensor, eps: float, iters: int) -> torch.Tensor:
    """(..., n, m) transport plans for (..., n, m) costs, (..., n) row and (..., m) column
    marginals (non-negative, equal total mass). Each iteration matches the rows then the columns,
    so the columns are exact and the rows converge."""
    if cost.ndim < 2 or a.shape != cost.shape[:-1] or b.shape != cost.shape[:-2] + cost.shape[-1:]:
        raise ValueError(f"sinkhorn needs cost (..., n, m), a (..., n), b (..., m); got cost "
                         f"{tuple(cost.shape)}, a {tuple(a.shape)}, b {tuple(b.shape)}")
    if eps <= 0 or iters < 1:
        raise ValueError(f"sinkhorn needs eps > 0 and iters >= 1, got eps {eps}, iters {iters}")
    log_a, log_b = a.log(), b.log()
    f, g = torch.zeros_like(a), torch.zeros_like(b)
    for _ in range(iters):
        f = eps * (log_a - torch.logsumexp((g.unsqueeze(-2) - cost) / eps, dim=-1))
        g = eps * (log_b - torch.logsumexp((f.unsqueeze(-1) - cost) / eps, dim=-2))
    return torch.exp((f.unsqueeze(-1) + g.unsqueeze(-2) - cost) / eps)


def similarity_masses(nodes: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """(B, n) transport masses of (B, n, d) nodes: each node's cosine similarity to its (B, d)
    reference, ReLU'd and normalised to sum 1; uniform where no node is positively similar. In
    float32, as transported_cosine."""
    with torch.autocast(nodes.device.type, enabled=False):
        sim = F.relu(torch.einsum("bnd,bd->bn", F.normalize(nodes.float(), dim=-1),
                                  F.normalize(reference.float(), dim=-1)))
    total = sim.sum(dim=-1, keepdim=True)
    return torch.where(total > 0, sim / total.clamp_min(torch.finfo(sim.dtype).tiny), 1 / sim.shape[-1])


def transported_cosine(online: torch.Tensor, target: torch.Tensor, online_mass: torch.Tensor,
                       target_mass: torch.Tensor, eps: float, iters: int) -> torch.Tensor:
    """(B,) sum(plan * cos) between (B, n, d) online and (B, m, d) target node sets with (B, n)
    and (B, m) masses; the plan is Sinkhorn's on the cost 1 - cos, computed without gradient,
    so the gradient flows through the cosines only. In float32 with autocast off: bf16 rounds a
    cosine by up to ~0.004, which a small eps magnifies in the plan's exponent (0.08 at eps 0.05)."""
    with torch.autocast(online.device.type, enabled=False):
        cos = F.normalize(online.float(), dim=-1) @ F.normalize(target.float(), dim=-1).transpose(1, 2)
        with torch.no_grad():
            plan = sinkhorn(1 - cos, online_mass, target_mass, eps, iters)
        return (plan * cos).sum(dim=(1, 2))
