"""ORL stage 3: object-level BYOL on image, intra-RoI and inter-RoI pairs (docs/protocols.md 3).

One online network (backbone -> projector) and its EMA target are shared by three branches:
the two global views of an image (BYOL), a box and its jittered copy (intra-RoI), and a box and
its retrieved counterpart in a neighbouring image (inter-RoI). Each branch has its own predictor
and the symmetric BYOL loss; the total is l1 * L_image + l2 * L_intra + l3 * L_inter.
Training starts from random weights: stage 1 only serves to mine the pairs.

`orl` is the whole chain: `build_inputs` first builds (or reuses) stage 1, a `byol` run of the
recipe named by `method.stage1` under the same data, scale and seed (so it is the very artifact
`--method byol` would use), then stage 2's correspondence artifact from it (cached by stage-1
backbone, image list and `method.stage2`), and hands that file to stage 3.

A branch with weight 0 has no predictor and is not computed, which is how Table 5a's
"intra only" / "inter only" ablations are expressed; its loss is then absent from the step's
losses rather than logged as a misleading 0.
"""
from __future__ import annotations

import json
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from orl_bench.config import ConfigError, PretrainConfig, config_hash
from orl_bench.data.batched_views import DecodedViews, DeviceViews
from orl_bench.data.views import ViewParams
from orl_bench.engine import rehearsal
from orl_bench.engine.checkpoint import read_manifest
from orl_bench.methods.base import Progress, StageContext
from orl_bench.methods.byol import BYOL
from orl_bench.methods.orl.correspondence import Correspondences
from orl_bench.methods.orl.dataset import ORLDataset, decoded_specs
from orl_bench.methods.orl.stage2 import ARTIFACT, OFFICIAL_PREFIX, TIMINGS, Stage2Params, discover, folder_name
from orl_bench.models.heads import MLP
from orl_bench.registry import METHODS

BRANCHES = ("image", "intra", "inter")
STAGE1_METHOD = "byol"  # stage 1 is a run of this method, at the recipe `method.stage1` names


@dataclass(frozen=True)
class ORLParams:
    stage1: str = "paper"  # the `byol` recipe (scale name or YAML path) whose network mines the pairs
    stage2: Stage2Params = field(default_factory=Stage2Params)  # correspondence discovery
    views: ViewParams = field(default_factory=ViewParams)  # global views; patches reuse its chain
    patch_size: int = 96  # RoI patches are resized to this square
    hidden_dim: int = 4096  # projector and predictor hidden width
    proj_dim: int = 256
    base_momentum: float = 0.99  # tau rises from this to 1 on a cosine
    image_weight: float = 1.0  # l1
    intra_weight: float = 1.0  # l2
    inter_weight: float = 1.0  # l3

    def __post_init__(self) -> None:
        weights = (self.image_weight, self.intra_weight, self.inter_weight)
        if min(weights) < 0 or max(weights) == 0:
            raise ValueError(f"ORL loss weights must be >= 0 with at least one > 0, got "
                             f"image/intra/inter = {weights}")
        if self.patch_size < 1:
            raise ValueError(f"patch_size must be >= 1, got {self.patch_size}")

    def weight(self, branch: str) -> float:
        return getattr(self, f"{branch}_weight")


class PairedDeviceViews(DeviceViews):
    """DeviceViews of `decoded_specs`, grouped as the loader path's batch: ((global1, global2),
    (intra1, intra2), (inter1, inter2))."""

    def forward(self, batch: DecodedViews) -> tuple[tuple[torch.Tensor, torch.Tensor], ...]:
        views = super().forward(batch)
        return tuple(zip(views[::2], views[1::2], strict=True))


@METHODS.register("orl")
class ORL(BYOL):
    """Stage 3: BYOL's online/target networks and global predictor, plus the two RoI predictors."""

    Params = ORLParams

    def __init__(self, cfg: PretrainConfig, inputs: Mapping[str, Path] | None = None):
        super().__init__(cfg, inputs)
        p: ORLParams = self.params
        # Unused predictors would hold parameters without gradients, which DDP rejects.
        if not p.image_weight:
            self.predictor = None
        self.intra_predictor = MLP(p.proj_dim, p.hidden_dim, p.proj_dim) if p.intra_weight else None
        self.inter_predictor = MLP(p.proj_dim, p.hidden_dim, p.proj_dim) if p.inter_weight else None

    @classmethod
    def build_inputs(cls, cfg: PretrainConfig, ctx: StageContext) -> tuple[dict[str, Path], dict[str, Any]]:
        """Stage 1 (BYOL) and stage 2 (correspondences), each built or reused."""
        p: ORLParams = cls.params_of(cfg)
        stage1_cfg = ctx.config(STAGE1_METHOD, p.stage1)
        if config_hash(stage1_cfg.data) != config_hash(cfg.data):
            raise ConfigError(f"ORL stage 1 (byol recipe '{p.stage1}') must pretrain on the same images as "
                              f"stage 3: its data section is {stage1_cfg.data}, stage 3's is {cfg.data}")
        stage1_dir, stage1_timings = ctx.pretrained(stage1_cfg, p.stage1)
        folder = ctx.workdir / "artifacts" / folder_name(read_manifest(stage1_dir)["backbone_sha256"],
                                                         ctx.images.key, p.stage2)
        t0 = time.perf_counter()
        done = (folder / ARTIFACT).exists()
        proposals = ctx.workdir / "artifacts" / f"proposals-{ctx.images.key}"  # shared by every stage 1, K, ratio
        with rehearsal.section("correspondences", images=len(ctx.images.paths)):
            path = discover(stage1_dir, ctx.images.paths, ctx.images.coco or None, p.stage2, folder, ctx.info,
                            proposals)
        steps = folder / TIMINGS
        stage2 = {"stage2_s": round(time.perf_counter() - t0, 2), "stage2_reused": done,
                  "stage2_steps_s": json.loads(steps.read_text())["timings"] if steps.exists() else {}}
        return {"correspondences": path}, {"stage1": stage1_timings, **stage2}

    @classmethod
    def earlier_stages(cls, cfg: PretrainConfig) -> list[tuple[str, str]]:
        return [(STAGE1_METHOD, cls.params_of(cfg).stage1)]

    @classmethod
    def variant(cls, cfg: PretrainConfig) -> dict[str, Any]:
        p: ORLParams = cls.params_of(cfg)
        # The authors' proposals file is their selective-search output.
        boxes = "selective_search" if p.stage2.box_source.startswith(OFFICIAL_PREFIX) else p.stage2.box_source
        out = {"losses": [b for b in ("intra", "inter") if p.weight(b)], "knn_k": p.stage2.knn_k,
               "pair_ratio": p.stage2.pair_ratio, "boxes": boxes}
        if not p.image_weight:
            out["image_loss"] = False  # not a paper setting: such runs get no paper number
        return out

    def make_dataset(self, paths: list[Path]) -> ORLDataset:
        """The stage-3 samples over `paths`, paired with the stage-2 correspondences, which are
        validated against the image list before any training starts. With `train.augment: device`
        the loader draws the views' and patches' parameters and the device makes them."""
        if "correspondences" not in self.inputs:
            raise ValueError("ORL stage 3 needs the stage-2 correspondence artifact as the input "
                             "'correspondences' (orl-bench run / pretrain build it)")
        c = Correspondences.load(Path(self.inputs["correspondences"]), n_images=len(paths))
        decoded = self.cfg.train.augment == "device"
        if decoded:
            self.device_views = PairedDeviceViews(decoded_specs(self.params), self.cfg.train.channels_last)
        return ORLDataset(paths, c, self.params, self.cfg.train.seed, decoded)

    def training_step(self, batch: tuple[tuple[torch.Tensor, torch.Tensor], ...],
                      progress: Progress) -> dict[str, torch.Tensor]:
        """`batch` is ((global1, global2), (intra1, intra2), (inter1, inter2)), each batched."""
        predictors = {"image": self.predictor, "intra": self.intra_predictor,
                      "inter": self.inter_predictor}
        losses = {f"loss_{branch}": self.symmetric_loss(predictors[branch], *pair)
                  for branch, pair in zip(BRANCHES, batch, strict=True) if self.params.weight(branch)}
        losses["loss"] = sum(self.params.weight(branch) * losses[f"loss_{branch}"]
                             for branch in BRANCHES if self.params.weight(branch))
        return losses
