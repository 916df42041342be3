"""SimSiam (Chen & He, CVPR 2021) as a third-party orl-bench plugin.

One encoder (backbone -> projector) sees two views of an image; a predictor on each view's
projection regresses the other view's projection, which is held fixed by a stop-gradient. The
loss is the symmetrised negative cosine similarity. There is no momentum encoder and there are no
negative pairs: the stop-gradient alone prevents collapse. As in the official code, the predictor
keeps the peak learning rate while the encoder's decays (`fix_lr`, a `param_groups` group).

The package registers it through its entry point (`simsiam = simsiam_plugin.method:SimSiam` in
the group `orl_bench.methods`) and ships its recipes beside this file (`recipes_dir`).
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from orl_bench.config import PretrainConfig
from orl_bench.data.views import ViewParams, ViewSpec, two_view_specs
from orl_bench.methods.base import Method, Progress
from orl_bench.models.heads import MLP, MLPOptions


@dataclass(frozen=True)
class SimSiamViews(ViewParams):
    """SimSiam's augmentation: crops of at least 20% of the image, blur with p 0.5 on both views,
    no solarize."""
    scale: tuple[float, float] = (0.2, 1.0)
    blur_p: tuple[float, float] = (0.5, 0.5)
    solarize_p: tuple[float, float] = (0.0, 0.0)


@dataclass(frozen=True)
class SimSiamParams:
    views: SimSiamViews = field(default_factory=SimSiamViews)
    proj_dim: int = 2048  # projector width, hidden and output
    pred_hidden_dim: int = 512  # the predictor's bottleneck
    fix_pred_lr: bool = True  # the official default: the predictor's learning rate does not decay


def negative_cosine(prediction: torch.Tensor, projection: torch.Tensor) -> torch.Tensor:
    """D(p, z) = -cos(p, stopgrad(z)), averaged over the batch."""
    return -F.cosine_similarity(prediction.float(), projection.detach().float(), dim=1).mean()


class SimSiam(Method):
    Params = SimSiamParams
    recipes_dir = Path(__file__).resolve().parent / "recipes"
    paper_reference = Path(__file__).resolve().parent / "paper_reference.yaml"

    def __init__(self, cfg: PretrainConfig, inputs: Mapping[str, Path] | None = None):
        super().__init__(cfg, inputs)
        p: SimSiamParams = self.params
        self.backbone = self.build_backbone()
        # Three layers, BN after each, no biases (each is followed by BN); the output BN has no affine
        # parameters. The predictor's bottleneck has BN, its output a bias.
        self.projector = MLP(self.backbone.num_features, (p.proj_dim, p.proj_dim), p.proj_dim,
                             MLPOptions(hidden_bias=False, last_bn="no_affine"))
        self.predictor = MLP(p.proj_dim, p.pred_hidden_dim, p.proj_dim, MLPOptions(hidden_bias=False, last_bias=True))

    def param_groups(self) -> list[dict]:
        predictor = list(self.predictor.parameters())
        encoder = [q for name, q in self.named_parameters() if not name.startswith("predictor.")]
        return [{"params": encoder}, {"params": predictor, "fixed_lr": self.params.fix_pred_lr}]

    def view_specs(self) -> list[ViewSpec]:
        """Two augmented crops of the image: made by the loader or, with `train.augment: device`,
        batched on the training device."""
        return two_view_specs(self.params.views)

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], progress: Progress) -> dict[str, torch.Tensor]:
        z1, z2 = (self.projector(self.backbone(view)) for view in batch)
        p1, p2 = self.predictor(z1), self.predictor(z2)
        return {"loss": (negative_cosine(p1, z2) + negative_cosine(p2, z1)) / 2}
