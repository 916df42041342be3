"""Optimisers (SGD, AdamW, LARS) and the warmup + cosine learning-rate schedule."""
from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn

from orl_bench.config import ConfigError, OptimConfig


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


def _is_flag(value: object) -> bool:
    return isinstance(value, bool)


def _is_non_negative(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value >= 0


# What a parameter group may set besides its `params`, with what each must be: the optimiser's decay
# and LARS flag, and how the learning-rate schedule treats the group (`set_lr`).
GROUP_OPTIONS: dict[str, tuple[Callable[[object], bool], str]] = {
    "weight_decay": (_is_non_negative, "a number >= 0"), "lars_exclude": (_is_flag, "True or False"),
    "lr_scale": (_is_non_negative, "a number >= 0"), "fixed_lr": (_is_flag, "True or False")}


def default_param_groups(model: nn.Module, cfg: OptimConfig) -> list[dict]:
    """The recipe's groups: one, or with `optim.exclude_bias_and_norm` biases and norm weights
    (ndim <= 1) apart, without decay and without LARS's trust ratio."""
    params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    if not cfg.exclude_bias_and_norm:
        return [{"params": [p for _, p in params]}]
    decay = [p for _, p in params if p.ndim > 1]
    no_decay = [p for _, p in params if p.ndim <= 1]
    return [{"params": decay}, {"params": no_decay, "weight_decay": 0.0, "lars_exclude": True}]


def checked_param_groups(model: nn.Module, groups: list[dict]) -> list[dict]:
    """`groups` with their params as lists, once each is known to hold only GROUP_OPTIONS besides
    its params, and the groups together every trainable parameter of `model` exactly once; else a
    one-line ConfigError naming the group and the parameter (before training starts)."""
    where = f"{type(model).__name__}.param_groups()"
    names = {id(p): n for n, p in model.named_parameters() if p.requires_grad}
    group_of: dict[int, int] = {}
    checked = []
    for i, group in enumerate(groups):
        params = group.get("params") if isinstance(group, dict) else None
        if params is None or isinstance(params, (torch.Tensor, set, frozenset)):
            got = (f"a {type(group).__name__}" if not isinstance(group, dict) else
                   "no 'params'" if params is None else f"a {type(params).__name__} as 'params'")
            raise ConfigError(f"{where}: group {i} must be a dict with a 'params' list (ordered: a resumed optimizer "
                              f"matches its saved state to the parameters by position), got {got}")
        unknown = sorted(set(group) - {"params", *GROUP_OPTIONS})
        if unknown:
            raise ConfigError(f"{where}: group {i} has unknown key(s) {', '.join(unknown)}; a group holds 'params' "
                              f"and optionally {', '.join(GROUP_OPTIONS)}")
        for key, (valid, expected) in GROUP_OPTIONS.items():
            if key in group and not valid(group[key]):
                raise ConfigError(f"{where}: group {i}'s {key} must be {expected}, got {group[key]!r}")
        params = list(params)
        for p in params:
            if id(p) not in names:
                raise ConfigError(f"{where}: group {i} holds a {type(p).__name__} that is not one of the method's "
                                  "trainable parameters (frozen ones, requires_grad=False, belong to no group)")
            if id(p) in group_of:
                raise ConfigError(f"{where}: parameter '{names[id(p)]}' is in groups {group_of[id(p)]} and {i}; "
                                  "each trainable parameter belongs to exactly one group")
            group_of[id(p)] = i
        checked.append({**group, "params": params})
    missing = [name for pid, name in names.items() if pid not in group_of]
    if missing:
        raise ConfigError(f"{where}: {len(missing)} trainable parameter(s) are in no group, e.g. "
                          f"{', '.join(missing[:3])}; put each in one group (or set requires_grad=False)")
    return checked


def build_optimizer(model: nn.Module, cfg: OptimConfig, peak_lr: float) -> torch.optim.Optimizer:
    """The recipe's optimiser over `model`'s groups: those it declares (Method.param_groups) or,
    for any other module, the recipe's. A `fixed_lr` group starts at the lr it keeps (`set_lr`)."""
    declared = getattr(model, "param_groups", None)  # a Method's hook; plain modules (benchmarks) have none
    groups = checked_param_groups(model, declared() if declared else default_param_groups(model, cfg))
    for group in groups:
        if group.get("fixed_lr"):
            group["lr"] = peak_lr * group.get("lr_scale", 1.0)
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
    """The schedule's `lr` for this step, times each group's lr_scale; a fixed_lr group keeps the
    peak lr it was built with (SimSiam's fixed predictor lr). Every group's lr is in the optimizer's
    state dict, so a resumed run goes on with the same ones."""
    for group in optimizer.param_groups:
        if not group.get("fixed_lr"):
            group["lr"] = lr * group.get("lr_scale", 1.0)
