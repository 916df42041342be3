"""Optimisers (SGD, AdamW, LARS) and the warmup + cosine learning-rate schedule."""
from __future__ import annotations

import math

import torch
from torch import nn

from orl_bench.config import OptimConfig


class LARS(torch.optim.Optimizer):
    """SGD with layer-wise trust ratio (You et al., 2017); parameter groups flagged
    `lars_exclude` (biases, norms) take plain momentum SGD steps, as SimCLR/BYOL's LARS does."""

    def __init__(self, params, lr: float, momentum: float = 0.9, weight_decay: float = 0.0,
                 eta: float = 0.001):
        super().__init__(params, dict(lr=lr, momentum=momentum, weight_decay=weight_decay,
                                      eta=eta, lars_exclude=False))

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                grad = p.grad
                if not group["lars_exclude"]:
                    grad = grad.add(p, alpha=group["weight_decay"])
                    w_norm, g_norm = torch.norm(p), torch.norm(grad)
                    trust = torch.where((w_norm > 0) & (g_norm > 0),
                                        group["eta"] * w_norm / g_norm, torch.ones_like(w_norm))
                    grad = grad.mul(trust)
                buf = self.state[p].setdefault("momentum_buffer", torch.zeros_like(p))
                buf.mul_(group["momentum"]).add_(grad)
                p.add_(buf, alpha=-group["lr"])


def param_groups(model: nn.Module, cfg: OptimConfig) -> list[dict]:
    params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    if not cfg.exclude_bias_and_norm:
        return [{"params": [p for _, p in params]}]
    decay = [p for _, p in params if p.ndim > 1]
    no_decay = [p for _, p in params if p.ndim <= 1]
    return [{"params": decay}, {"params": no_decay, "weight_decay": 0.0, "lars_exclude": True}]


def build_optimizer(model: nn.Module, cfg: OptimConfig, peak_lr: float) -> torch.optim.Optimizer:
    groups = param_groups(model, cfg)
    if cfg.name == "sgd":
        return torch.optim.SGD(groups, lr=peak_lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    if cfg.name == "adamw":
        return torch.optim.AdamW(groups, lr=peak_lr, weight_decay=cfg.weight_decay)
    if cfg.name == "lars":
        return LARS(groups, lr=peak_lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    raise ValueError(f"unknown optim.name '{cfg.name}'; expected sgd, adamw or lars")


def scaled_lr(cfg: OptimConfig, global_batch: int) -> float:
    """The linear scaling rule: recipes give lr per 256 images."""
    return cfg.lr * global_batch / 256


def lr_at(step: int, max_steps: int, warmup_steps: int, peak: float, final_fraction: float) -> float:
    """Linear warmup from 0, then cosine from peak to peak * final_fraction."""
    if step < warmup_steps:
        return peak * (step + 1) / warmup_steps
    t = (step - warmup_steps) / max(1, max_steps - warmup_steps)
    final = peak * final_fraction
    return final + (peak - final) * (math.cos(math.pi * t) + 1) / 2


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr
