"""SCRL (Roh et al., CVPR 2021): BYOL on boxes that both views show (docs/methods.md).

Per image, up to `boxes_per_image` boxes are sampled in the overlap of the two views' crops and
mapped into each view (mirrored when a view is flipped). A box's feature is RoIAlign (1x1) on the
res5 map, then the projector (and, online, the predictor). The loss is BYOL's, symmetric, and
averaged over the batch's boxes; there is no image-level loss, so an image whose views barely
overlap gets no boxes and contributes nothing.

Box sampling follows the official code, in the pixels of the view where the overlap looks
smaller: skip the image if the overlap's side is <= `min_box`; draw a box of sides in
[min_box, overlap side) at a uniform position; reject it if its IoU with an earlier box exceeds
`max_iou`; `box_tries` draws per box. Two deliberate differences: a box whose tries all fail is
dropped (the official code keeps its last draw), and draws are continuous rather than whole
pixels. The official 1000-epoch recipe also draws on a grid (`grid_based_box_gen`), not offered.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from PIL import Image
from torch import nn
from torchvision.ops import box_iou, roi_align

from orl_bench.data.box_views import BoxView, BoxViewParams, ViewGeometry, overlap, to_view
from orl_bench.methods.base import Progress, byol_loss
from orl_bench.methods.byol import BYOL
from orl_bench.registry import METHODS

RES5_STRIDE = 32  # input pixels per res5 cell in every torchvision ResNet


@dataclass(frozen=True)
class SCRLViews(BoxViewParams):
    """SCRL's view recipe: BYOL's, with crops of at least 20% of the image, bicubic resizing and
    its blur by down- and upscaling (a factor of 1.1, 1.2 or 1.5) instead of a Gaussian."""
    scale: tuple[float, float] = (0.2, 1.0)
    interpolation: str = "bicubic"
    resize_blur: tuple[float, ...] = (1.1, 1.2, 1.5)


@dataclass(frozen=True)
class SCRLParams:
    views: SCRLViews = field(default_factory=SCRLViews)
    boxes_per_image: int = 10
    min_box: float = 32.0  # view pixels (32 at 224 px views): box and overlap sides must exceed it
    max_iou: float = 0.5  # with any earlier box of the image
    box_tries: int = 50  # draws per box
    aligned: bool = True  # RoIAlign's half-pixel offset (pixel i covers [i, i + 1)); official: false
    hidden_dim: int = 4096  # projector and predictor hidden width
    proj_dim: int = 256
    base_momentum: float = 0.996  # tau rises from this to 1 on a cosine

    def __post_init__(self) -> None:
        if self.boxes_per_image < 1 or self.box_tries < 1:
            raise ValueError(f"need boxes_per_image >= 1 and box_tries >= 1, got {self.boxes_per_image} "
                             f"and {self.box_tries}")
        if not 0 < self.min_box < self.views.size or not 0 <= self.max_iou <= 1:
            raise ValueError(f"need 0 < min_box < views.size ({self.views.size}) and 0 <= max_iou <= 1, "
                             f"got min_box {self.min_box}, max_iou {self.max_iou}")


def sample_boxes(g1: ViewGeometry, g2: ViewGeometry, n: int, min_box: float, max_iou: float,
                 tries: int) -> torch.Tensor:
    """Up to `n` float64 xyxy boxes in image pixels inside the overlap of two views, each at
    least `min_box` view pixels wide and high in both views (see the module notes).

    All n * tries draws are made whatever is accepted, so the RNG stream after the call does not
    depend on the image (torch's global RNG, as under `seeded_call`).
    """
    u = torch.rand(n, tries, 4, dtype=torch.float64)
    region = overlap(g1, g2)
    if region is None:
        return torch.zeros(0, 4, dtype=torch.float64)
    # view pixels per image pixel where the overlap looks smaller: a box that is min_box there
    # is at least min_box in the other view too
    sx, sy = min(g1.scale[0], g2.scale[0]), min(g1.scale[1], g2.scale[1])
    x0, y0, x1, y1 = region
    width, height = (x1 - x0) * sx, (y1 - y0) * sy
    if width <= min_box or height <= min_box:
        return torch.zeros(0, 4, dtype=torch.float64)
    w = min_box + (width - min_box) * u[..., 0]
    h = min_box + (height - min_box) * u[..., 1]
    left, top = (width - w) * u[..., 2], (height - h) * u[..., 3]
    candidates = torch.stack([x0 + left / sx, y0 + top / sy, x0 + (left + w) / sx, y0 + (top + h) / sy], dim=-1)
    kept: list[torch.Tensor] = []
    for tries_of_box in candidates:
        # IoU is the same in the image and in either view: each is a per-axis scaling of the other
        ok = box_iou(tries_of_box, torch.stack(kept)).max(dim=1).values <= max_iou if kept \
            else torch.ones(tries, dtype=torch.bool)
        if ok.any():
            kept.append(tries_of_box[int(ok.nonzero()[0, 0])])
    return torch.stack(kept)


class SCRLSample:
    """PIL image -> (view1, view2, boxes1, boxes2, valid): the boxes in each view's pixels (float32
    xyxy), padded with zero rows to `boxes_per_image`; `valid` marks the real ones."""

    def __init__(self, p: SCRLParams):
        self.p = p
        self.views = (BoxView(p.views, 1), BoxView(p.views, 2))

    def __call__(self, image: Image.Image) -> tuple[torch.Tensor, ...]:
        (view1, g1), (view2, g2) = self.views[0](image), self.views[1](image)
        p = self.p
        boxes = sample_boxes(g1, g2, p.boxes_per_image, p.min_box, p.max_iou, p.box_tries)
        padded = [torch.zeros(p.boxes_per_image, 4) for _ in range(2)]
        for out, g in zip(padded, (g1, g2)):
            out[:len(boxes)] = to_view(boxes, g).float()
        return view1, view2, *padded, torch.arange(p.boxes_per_image) < len(boxes)


@METHODS.register("scrl")
class SCRL(BYOL):
    """BYOL's networks (online backbone -> projector -> predictor, EMA target), fed box features."""

    Params = SCRLParams

    def view_specs(self) -> None:
        return None  # its views carry the boxes they share: made by the loader only

    def view_transform(self) -> SCRLSample:
        return SCRLSample(self.params)

    def box_embeddings(self, backbone: nn.Module, projector: nn.Module, views: torch.Tensor,
                       rois: torch.Tensor) -> torch.Tensor:
        """Projections of RoIAlign 1x1 on the res5 map; `rois` rows are (image, x0, y0, x1, y1)."""
        res5 = backbone.taps(views, {"res5"})["res5"]
        pooled = roi_align(res5, rois.to(res5.dtype), output_size=1, spatial_scale=1 / RES5_STRIDE,
                           sampling_ratio=-1, aligned=self.params.aligned)
        return projector(pooled.flatten(1))

    def training_step(self, batch: tuple[torch.Tensor, ...], progress: Progress) -> dict[str, torch.Tensor]:
        view1, view2, boxes1, boxes2, valid = batch
        image, slot = valid.nonzero(as_tuple=True)
        per_image = valid.float().sum(dim=1).mean()
        if len(image) < 2:
            # Nothing to learn from (the heads' BatchNorm needs two boxes). A zero that still
            # reaches every parameter, as DistributedDataParallel expects of each step.
            zero = sum(p.sum() for p in self.parameters() if p.requires_grad) * 0.0
            return {"loss": zero, "boxes_per_image": per_image}
        rois = [torch.cat([image[:, None].to(b.dtype), b[image, slot]], dim=1) for b in (boxes1, boxes2)]
        views = (view1, view2)
        preds = [self.predictor(self.box_embeddings(self.backbone, self.projector, v, r))
                 for v, r in zip(views, rois)]
        with torch.no_grad():
            backbone, projector = self.target
            targets = [self.box_embeddings(backbone, projector, v, r) for v, r in zip(views, rois)]
        loss = byol_loss(preds[0], targets[1]) + byol_loss(preds[1], targets[0])
        return {"loss": loss, "boxes_per_image": per_image}
