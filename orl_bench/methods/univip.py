"""UniVIP (Li et al., CVPR 2022): scene-scene, scene-instance and instance-instance learning,
the three losses equally weighted (docs/methods.md).

Two scene views are drawn until their overlap holds K whole proposals; K of those boxes, each
cropped from the image and resized to `instance_size`, are the instances, augmented twice like
ORL's patch pairs (view-1 and view-2 probabilities).
- scene-scene: BYOL between the two views.
- scene-instance: one augmentation's K online instance predictions, concatenated and mapped by a
  Linear(K * d -> d), regress the target projections of both views (both augmentations do).
- instance-instance: optimal transport between augmentation a's online instance predictions
  and augmentation b's target instance projections, cost 1 - cos. The masses: the online
  instances' cosine similarity to view b's target projection, the target instances' to view a's
  (ReLU, normalised), so each side is weighed against the other side's scene. The log-domain
  Sinkhorn plan is detached and the loss is -sum(plan * cos), summed over (a, b) = (1, 2), (2, 1).

No official code exists. This project's choices, all in the config: Sinkhorn's eps and
iterations, instances cropped from the image rather than from the views, and the bounded redraw:
after `view_tries` pairs without K proposals in their overlap, the pair holding the most is used
and its missing instances are the overlap itself (the whole image when the views do not meet).
The share of instances filled that way is logged as `instance_fill`; images with fewer than K
boxes always need it and are counted in the manifest's `dataset_fallbacks`.

The proposals are ORL's selective-search artifact (`artifacts/proposals-<images>`, computed once
per image list and shared with ORL's stage 2), filtered with UniVIP's thresholds into a boxes
file that keys the artifact.
"""
from __future__ import annotations

import hashlib
import time
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import nn
from torchvision.transforms import v2

from orl_bench.config import PretrainConfig, config_hash
from orl_bench.data.box_views import BoxView, BoxViewParams, Region, ViewGeometry, inside, overlap
from orl_bench.data.pretrain_dataset import ViewsDataset
from orl_bench.data.views import normalize, photometric
from orl_bench.engine.distributed import barrier
from orl_bench.methods.base import Progress, StageContext, byol_loss
from orl_bench.methods.byol import BYOL
from orl_bench.methods.orl.boxes import BoxFilter, filter_boxes, load_boxes, save_boxes, scaled, xywh_to_xyxy
from orl_bench.methods.orl.dataset import crop_resize
from orl_bench.methods.orl.proposals import load_all, shared_proposals
from orl_bench.methods.sinkhorn import similarity_masses as scene_marginal, transported_cosine
from orl_bench.registry import METHODS

BOXES = "boxes.npz"


@dataclass(frozen=True)
class UniVIPParams:
    views: BoxViewParams = field(default_factory=BoxViewParams)  # the scene views (BYOL's recipe)
    instances: int = 4  # K
    instance_size: int = 96
    view_tries: int = 50  # view pairs drawn per sample before falling back
    # proposal filter at COCO scale: min side 64, aspect ratio 1/3 to 3, NMS 0.5
    boxes: BoxFilter = field(default_factory=lambda: BoxFilter(min_size=64))
    reference_short_side: int = 0  # > 0: min_size scales by image short side / this (as ORL's stage 2)
    sinkhorn_eps: float = 0.1  # not from the paper
    sinkhorn_iters: int = 50  # not from the paper
    hidden_dim: int = 4096  # projector and predictor hidden width
    proj_dim: int = 256
    base_momentum: float = 0.99  # tau rises from this to 1 on a cosine
    workers: int = 2  # selective-search processes

    def __post_init__(self) -> None:
        if min(self.instances, self.instance_size, self.view_tries, self.sinkhorn_iters) < 1:
            raise ValueError(f"need instances, instance_size, view_tries and sinkhorn_iters >= 1, got "
                             f"{self.instances}, {self.instance_size}, {self.view_tries}, {self.sinkhorn_iters}")
        if self.sinkhorn_eps <= 0 or self.reference_short_side < 0 or self.workers < 1:
            raise ValueError(f"need sinkhorn_eps > 0, reference_short_side >= 0 and workers >= 1, got "
                             f"{self.sinkhorn_eps}, {self.reference_short_side}, {self.workers}")

    def filter_for(self, width: int, height: int) -> BoxFilter:
        if not self.reference_short_side or not min(width, height):
            return self.boxes
        return scaled(self.boxes, min(width, height), self.reference_short_side)


def draw_scene_pair(pixels: torch.Tensor, boxes: torch.Tensor, views: tuple[BoxView, BoxView], k: int,
                    tries: int) -> tuple[ViewGeometry, ViewGeometry, torch.Tensor, int]:
    """Two view geometries whose overlap holds `k` of the xyxy `boxes`, redrawn up to `tries`
    times; returns (g1, g2, (k, 4) instance boxes, how many of them are the fallback filler)."""
    best: tuple[ViewGeometry, ViewGeometry, Region | None, torch.Tensor] | None = None
    for _ in range(tries):
        g1, g2 = views[0].draw(pixels), views[1].draw(pixels)
        region = overlap(g1, g2)
        held = inside(boxes, region).nonzero()[:, 0] if region else torch.zeros(0, dtype=torch.long)
        if best is None or len(held) > len(best[3]):
            best = (g1, g2, region, held)
        if len(held) >= k:
            break
    g1, g2, region, held = best
    chosen = boxes[held[torch.randperm(len(held))[:k]]]
    height, width = pixels.shape[-2:]
    filler = torch.tensor([region or (0, 0, width, height)], dtype=boxes.dtype)
    missing = k - len(chosen)
    return g1, g2, torch.cat([chosen, filler.expand(missing, 4)]), missing


class UniVIPDataset(ViewsDataset):
    """Indexed by sampler keys (epoch * N + index). Returns (index, (view1, view2, instances1,
    instances2, fill)) with (K, 3, s, s) instance stacks and the share of filler instances, or
    (index, None) when the image cannot be read. Every draw runs under `seeded_call`."""

    def __init__(self, paths: list[Path], boxes: list[np.ndarray], p: UniVIPParams, seed: int):
        if len(boxes) != len(paths):
            raise ValueError(f"{len(boxes)} proposal lists for {len(paths)} images: the boxes file belongs "
                             "to another image list")
        super().__init__(paths, None, seed)
        self.p = p
        self.boxes = [torch.from_numpy(xywh_to_xyxy(b)) for b in boxes]
        self.views = (BoxView(p.views, 1), BoxView(p.views, 2))
        self.instance_views = {which: v2.Compose([*photometric(p.views, which, p.instance_size), normalize()])
                               for which in (1, 2)}
        short = sum(len(b) < p.instances for b in boxes)
        self.fallbacks = {"images": len(paths), "fewer_boxes_than_instances": short}
        if short:
            warnings.warn(f"UniVIP: {short} of {len(paths)} images have fewer than {p.instances} proposals; "
                          "their missing instances are the views' overlap", stacklevel=2)

    def sample(self, index: int, image: Image.Image) -> tuple[torch.Tensor, ...]:
        p = self.p
        pixels = v2.functional.pil_to_tensor(image)
        g1, g2, instances, missing = draw_scene_pair(pixels, self.boxes[index], self.views, p.instances,
                                                     p.view_tries)
        scenes = (self.views[0].render(pixels, g1), self.views[1].render(pixels, g2))
        xywh = [(x0, y0, x1 - x0, y1 - y0) for x0, y0, x1, y1 in instances.tolist()]
        crops = [torch.stack([self.instance_views[which](crop_resize(image, box, p.instance_size)) for box in xywh])
                 for which in (1, 2)]
        return (*scenes, *crops, torch.tensor(missing / p.instances))


def instance_ot_loss(online: torch.Tensor, target: torch.Tensor, online_scene: torch.Tensor,
                     target_scene: torch.Tensor, eps: float, iters: int) -> torch.Tensor:
    """-sum(plan * cos) averaged over the batch, between (B, K, d) online instance predictions and
    (B, K', d) target instance projections; their masses come from their similarity to
    `online_scene` and `target_scene` (B, d) (scene_marginal), the plan from Sinkhorn on 1 - cos
    (transported_cosine)."""
    with torch.no_grad():
        masses = scene_marginal(online, online_scene), scene_marginal(target, target_scene)
    return -transported_cosine(online, target, *masses, eps, iters).mean()


def boxes_folder(images_key: str, p: UniVIPParams) -> str:
    """The filtered boxes' folder name for (image list, filter, reference side)."""
    key = hashlib.sha256(f"{images_key}|{config_hash(p.boxes)}|{p.reference_short_side}".encode()).hexdigest()
    return f"univip-boxes-{key[:12]}"


def _image_size(path: Path) -> tuple[int, int]:
    """(width, height) from the file header; (0, 0) for an unreadable file (it has no proposals)."""
    try:
        with Image.open(path) as im:
            return im.size
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError):
        return 0, 0


@METHODS.register("univip")
class UniVIP(BYOL):
    """BYOL's networks and scene predictor, plus the Linear that fuses K instance predictions."""

    Params = UniVIPParams

    def __init__(self, cfg: PretrainConfig, inputs: Mapping[str, Path] | None = None):
        super().__init__(cfg, inputs)
        p: UniVIPParams = self.params
        self.instance_fusion = nn.Linear(p.instances * p.proj_dim, p.proj_dim)

    @classmethod
    def build_inputs(cls, cfg: PretrainConfig, ctx: StageContext) -> tuple[dict[str, Path], dict[str, Any]]:
        """The filtered proposals of every image, built (with ORL's shared selective search) or reused."""
        p: UniVIPParams = cls.params_of(cfg)
        path = ctx.workdir / "artifacts" / boxes_folder(ctx.images.key, p) / BOXES
        t0 = time.perf_counter()
        reused = path.exists()
        if not reused:
            proposals = ctx.workdir / "artifacts" / f"proposals-{ctx.images.key}"
            shared_proposals(proposals, ctx.images.paths, p.workers, ctx.info)
            barrier(ctx.info)
            if ctx.info.is_main:
                raw = load_all(proposals, len(ctx.images.paths))
                save_boxes(path, [filter_boxes(r, p.filter_for(*_image_size(x))).astype(np.float32)
                                   for r, x in zip(raw, ctx.images.paths, strict=True)])
            barrier(ctx.info)
        return {"boxes": path}, {"boxes_s": round(time.perf_counter() - t0, 2), "boxes_reused": reused}

    def view_specs(self) -> None:
        return None  # its samples hold box crops of the scene: made by the loader only

    def make_dataset(self, paths: list[Path]) -> UniVIPDataset:
        if "boxes" not in self.inputs:
            raise ValueError("UniVIP needs the filtered proposals as the input 'boxes' (orl-bench run / "
                             "pretrain build it)")
        return UniVIPDataset(paths, load_boxes(Path(self.inputs["boxes"])), self.params, self.cfg.train.seed)

    def training_step(self, batch: tuple[torch.Tensor, ...], progress: Progress) -> dict[str, torch.Tensor]:
        """`batch` is (view1, view2, instances1, instances2, fill), instances (B, K, 3, s, s)."""
        p: UniVIPParams = self.params
        *scenes, instances1, instances2, fill = batch
        b, k = instances1.shape[:2]
        scene_preds = [self.predictor(self.online(v)) for v in scenes]
        instance_preds = [self.predictor(self.online(x.flatten(0, 1))).view(b, k, -1) for x in (instances1, instances2)]
        with torch.no_grad():
            scene_targets = [self.target(v) for v in scenes]
            instance_targets = [self.target(x.flatten(0, 1)).view(b, k, -1) for x in (instances1, instances2)]
        scene = byol_loss(scene_preds[0], scene_targets[1]) + byol_loss(scene_preds[1], scene_targets[0])
        fused = [self.instance_fusion(x.flatten(1)) for x in instance_preds]
        # each augmentation regresses both views; halved so that every term is a two-way sum like `scene`
        scene_instance = sum(byol_loss(f, z) for f in fused for z in scene_targets) / 2
        instance = sum(instance_ot_loss(instance_preds[a], instance_targets[1 - a], scene_targets[1 - a],
                                        scene_targets[a], p.sinkhorn_eps, p.sinkhorn_iters) for a in (0, 1))
        return {"loss": scene + scene_instance + instance, "loss_scene": scene,
                "loss_scene_instance": scene_instance, "loss_instance": instance,
                "instance_fill": fill.float().mean()}
