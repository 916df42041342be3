"""ORL stage 3: object-level BYOL on image, intra-RoI and inter-RoI pairs (PROTOCOLS 3).

One online network (backbone -> projector) and its EMA target are shared by three branches:
the two global views of an image (BYOL), a box and its jittered copy (intra-RoI), and a box and
its retrieved counterpart in a neighbouring image (inter-RoI). Each branch has its own predictor
and the symmetric BYOL loss; the total is l1 * L_image + l2 * L_intra + l3 * L_inter.
Training starts from random weights: stage 1 only serves to mine the pairs.

A branch with weight 0 has no predictor and is not computed, which is how Table 5a's
"intra only" / "inter only" ablations are expressed; its loss is then absent from the step's
losses rather than logged as a misleading 0.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from orl_bench.config import PretrainConfig
from orl_bench.data.views import ViewParams
from orl_bench.methods.base import Progress
from orl_bench.methods.byol import BYOL
from orl_bench.methods.orl.correspondence import Correspondences
from orl_bench.methods.orl.dataset import ORLDataset
from orl_bench.models.heads import MLP

BRANCHES = ("image", "intra", "inter")


@dataclass(frozen=True)
class ORLParams:
    views: ViewParams = field(default_factory=ViewParams)  # global views; patches reuse its chain
    patch_size: int = 96  # RoI patches are resized to this square
    hidden_dim: int = 4096  # projector and predictor hidden width
    proj_dim: int = 256
    base_momentum: float = 0.99  # tau rises from this to 1 on a cosine
    image_weight: float = 1.0  # l1
    intra_weight: float = 1.0  # l2
    inter_weight: float = 1.0  # l3
    correspondences: str = ""  # path to the stage-2 artifact (Correspondences .npz)

    def __post_init__(self) -> None:
        weights = (self.image_weight, self.intra_weight, self.inter_weight)
        if min(weights) < 0 or max(weights) == 0:
            raise ValueError(f"ORL loss weights must be >= 0 with at least one > 0, got "
                             f"image/intra/inter = {weights}")
        if self.patch_size < 1:
            raise ValueError(f"patch_size must be >= 1, got {self.patch_size}")

    def weight(self, branch: str) -> float:
        return getattr(self, f"{branch}_weight")


class ORLStage3(BYOL):
    """BYOL's online/target networks and global predictor, plus the two RoI predictors."""

    Params = ORLParams

    def __init__(self, cfg: PretrainConfig):
        super().__init__(cfg)
        p: ORLParams = self.params
        # Unused predictors would hold parameters without gradients, which DDP rejects.
        if not p.image_weight:
            self.predictor = None
        self.intra_predictor = MLP(p.proj_dim, p.hidden_dim, p.proj_dim) if p.intra_weight else None
        self.inter_predictor = MLP(p.proj_dim, p.hidden_dim, p.proj_dim) if p.inter_weight else None

    def make_dataset(self, paths: list[Path]) -> ORLDataset:
        """The stage-3 samples over `paths`, paired with the stage-2 correspondences, which are
        validated against the image list before any training starts."""
        if not self.params.correspondences:
            raise ValueError("method.correspondences is not set: ORL stage 3 needs the path of "
                             "the stage-2 correspondence artifact")
        c = Correspondences.load(Path(self.params.correspondences), n_images=len(paths))
        return ORLDataset(paths, c, self.params, self.cfg.train.seed)

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
