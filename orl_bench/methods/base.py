"""The method-plugin contract and the pieces shared by momentum-teacher methods."""
from __future__ import annotations

import copy
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

from orl_bench.config import NoParams, PretrainConfig, from_dict
from orl_bench.data.batched_views import DecodeAndDraw, DecodedViews, DeviceViews
from orl_bench.data.pretrain_dataset import ViewsDataset
from orl_bench.data.sources import ImageList
from orl_bench.data.views import ViewSpec, views_of
from orl_bench.engine.distributed import DistInfo
from orl_bench.engine.optim import default_param_groups
from orl_bench.models.backbones import ResNet, build_backbone


@dataclass(frozen=True)
class Progress:
    """Where training is: `step` optimizer steps done out of `max_steps`."""
    step: int
    max_steps: int
    epoch: int


@dataclass(frozen=True)
class StageContext:
    """What a multi-stage method gets to build its earlier stages (`Method.build_inputs`)."""
    workdir: Path
    images: ImageList  # this run's pretraining images
    info: DistInfo
    # (method, recipe) -> that stage's config under the user's non-method overrides (so every
    # stage sees the same data, scale and seed)
    config: Callable[[str, str], PretrainConfig]
    # (config, recipe) -> (complete artifact folder, timings): reused when it already exists
    pretrained: Callable[[PretrainConfig, str], tuple[Path, dict]]


class Method(nn.Module):
    """A pretraining method. Subclasses declare `Params` (a dataclass of their options, filled
    from the recipe's `method:` section), build their networks in __init__, and implement
    `view_transform` and `training_step`. `backbone` is what gets exported.

    A method trained from earlier stages' outputs (ORL) overrides `build_inputs`; the files it
    returns reach the instance as `self.inputs`, and their sha256 is part of the artifact's key.
    """

    Params: ClassVar[type] = NoParams
    # A plugin from another package ships its recipes (<scale>.yaml) in this folder; in-tree
    # methods' recipes are pretrain/<name>/.
    recipes_dir: ClassVar[Path | None] = None
    # A plugin's own paper's numbers for its rows, in the layout of orl-bench's paper reference
    # (results/paper_reference.yaml): the report prints them beside its results.
    paper_reference: ClassVar[Path | None] = None
    backbone: ResNet

    def __init__(self, cfg: PretrainConfig, inputs: Mapping[str, Path] | None = None):
        super().__init__()
        self.cfg = cfg
        self.inputs = dict(inputs or {})
        self.params = self.params_of(cfg)

    @classmethod
    def params_of(cls, cfg: PretrainConfig) -> Any:
        """The recipe's `method:` options as this plugin's Params."""
        return from_dict(cls.Params, {k: v for k, v in cfg.method.items() if k != "name"}, "method")

    @classmethod
    def build_inputs(cls, cfg: PretrainConfig, ctx: StageContext) -> tuple[dict[str, Path], dict[str, Any]]:
        """Build or reuse the earlier stages; returns (named input files, timings per stage).
        Called on every rank, before this method's own artifact is looked up."""
        return {}, {}

    @classmethod
    def earlier_stages(cls, cfg: PretrainConfig) -> list[tuple[str, str]]:
        """(method, recipe) of each earlier pretraining stage `build_inputs` loads with
        `ctx.config`, so that a run checks their recipes and data before any work."""
        return []

    @classmethod
    def variant(cls, cfg: PretrainConfig) -> dict[str, Any]:
        """The run's settings among the paper's ablation keys (results.paper.VARIANT_KEYS),
        recorded with every result so Table 5 rows find their paper numbers."""
        return {}

    def build_backbone(self) -> ResNet:
        return build_backbone(self.cfg.model.arch, self.cfg.model.width, self.cfg.model.conv_init)

    def param_groups(self) -> list[dict]:
        """The optimiser's parameter groups: dicts whose `params` lists hold every trainable
        parameter exactly once, each group optionally with `weight_decay`, `lars_exclude` (LARS
        takes plain momentum steps), `lr_scale` (the group's lr is the schedule's times this) and
        `fixed_lr` (True: the group keeps the recipe's peak lr, times lr_scale, through warmup and
        decay: SimSiam's fix_pred_lr). By default the recipe's rule, `optim.exclude_bias_and_norm`."""
        return default_param_groups(self, self.cfg.optim)

    def view_specs(self) -> list[ViewSpec] | None:
        """The views as (recipe, which) pairs when each is a plain augmented crop of the image
        (two-view, multi-crop methods): those can be made on the device (`train.augment: device`).
        None where a sample needs more than the image (boxes, labels, ...)."""
        return None

    def view_transform(self) -> Any:
        """PIL image -> what one sample turns into (e.g. a tuple of view tensors); by default the
        views of `view_specs`."""
        specs = self.view_specs()
        if specs is None:
            raise NotImplementedError(f"{type(self).__name__} defines neither view_specs nor view_transform")
        return views_of(specs)

    def make_dataset(self, paths: list[Path]) -> Dataset:
        """The training dataset over the pretraining images; override for extra inputs. With
        `train.augment: device` the loader only decodes and draws the views' parameters."""
        if self.cfg.train.augment == "device":  # build_method checked that view_specs exist
            specs = self.view_specs()
            self.device_views = DeviceViews(specs, self.cfg.train.channels_last)
            return ViewsDataset(paths, DecodeAndDraw(specs), self.cfg.train.seed)
        return ViewsDataset(paths, self.view_transform(), self.cfg.train.seed)

    def training_step(self, batch: Any, progress: Progress) -> dict[str, torch.Tensor]:
        """Named losses for one batch; `loss` is the one that is optimised."""
        raise NotImplementedError

    def forward(self, batch: Any, progress: Progress) -> dict[str, torch.Tensor]:
        # Routing the step through forward() lets DistributedDataParallel see it.
        if isinstance(batch, DecodedViews):  # train.augment: device
            batch = self.device_views(batch)
        return self.training_step(batch, progress)

    def after_step(self, progress: Progress) -> None:
        """Called after every optimizer step (EMA updates live here) with the Progress of that
        step, the one its training_step got: `progress.step` is its 0-based index (the steps done
        before it), so the first update sees step 0."""


def momentum_at(base: float, progress: Progress) -> float:
    """BYOL's schedule: tau = 1 - (1 - base) * (cos(pi * step / max_steps) + 1) / 2, with `step`
    the 0-based index of the update (OpenSelfSup's BYOLHook: runner.iter before the step), so the
    first EMA update uses `base` exactly."""
    return 1 - (1 - base) * (math.cos(math.pi * progress.step / progress.max_steps) + 1) / 2


def make_target(online: nn.Module) -> nn.Module:
    """A frozen copy of the online network. It stays in train mode (BN uses batch statistics),
    its parameters follow the online ones by EMA, and its BN buffers evolve on their own."""
    target = copy.deepcopy(online)
    for p in target.parameters():
        p.requires_grad_(False)
    return target


@torch.no_grad()
def ema_update(target: nn.Module, online: nn.Module, momentum: float) -> None:
    """Parameters only: buffers (BN running statistics) are not averaged (docs/protocols.md 1)."""
    t_params = list(target.parameters())
    o_params = [p.detach() for p in online.parameters()]
    torch._foreach_mul_(t_params, momentum)
    torch._foreach_add_(t_params, o_params, alpha=1 - momentum)


def byol_loss(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """2 - 2 cos(prediction, target), averaged over the batch."""
    p = F.normalize(prediction.float(), dim=1)
    z = F.normalize(target.float(), dim=1)
    return (2 - 2 * (p * z).sum(dim=1)).mean()
