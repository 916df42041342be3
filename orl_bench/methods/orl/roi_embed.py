"""RoI embeddings (docs/protocols.md 2.5), computed once per image.

The official code crops and embeds every neighbour's boxes again for every query that lists it
(~11 x 100 crops per image); an image's RoI embeddings do not depend on the query, so stage 2
embeds each image's kept boxes exactly once and pair retrieval reuses them.

Crop-and-resize is one `torchvision.ops.roi_align` call per batch of boxes on the normalised
full-resolution image: aligned=True puts pixel centres at +0.5, so the box [x, x + w) maps onto
the output grid as a crop followed by a bilinear resize (align_corners=False); only samples within
half a pixel of the box edge differ, interpolating with the pixels just outside the box where a
crop clamps to its own border.
sampling_ratio=0 is adaptive: ceil(box side / size) bilinear samples per output pixel and axis,
i.e. plain bilinear when enlarging and an area average when shrinking. That stands in for the
antialiased PIL resize of the official `resized_crop`; both low-pass when shrinking.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torchvision.ops import roi_align

from orl_bench.data.views import IMAGENET_MEAN, IMAGENET_STD
from orl_bench.methods.orl.boxes import xywh_to_xyxy
from orl_bench.models.backbones import ResNet


class ForwardCounter:
    """Counts images passed through a backbone while active (a hook on its stem convolution).

    Lets tests and the perf harness check that stage 2 embeds each kept box exactly once.
    """

    def __init__(self, backbone: ResNet):
        self.backbone, self.images = backbone, 0

    def _hook(self, module: torch.nn.Module, inputs: tuple[torch.Tensor, ...],
              output: torch.Tensor) -> None:
        self.images += inputs[0].shape[0]

    def __enter__(self) -> ForwardCounter:
        self._handle = self.backbone.conv1.register_forward_hook(self._hook)
        return self

    def __exit__(self, *exc: object) -> None:
        self._handle.remove()


def _normalised(image: torch.Tensor, device: torch.device) -> torch.Tensor:
    """(1, 3, H, W) ImageNet-normalised float; uint8 is scaled by 1/255, float taken as [0, 1]."""
    if image.ndim != 3 or image.shape[0] != 3:
        raise ValueError(f"expected a (3, H, W) image tensor, got shape {tuple(image.shape)}")
    x = image.to(device)
    x = x.float() / 255 if x.dtype == torch.uint8 else x.float()
    mean = torch.tensor(IMAGENET_MEAN, device=device).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=device).view(3, 1, 1)
    return ((x - mean) / std).unsqueeze(0)


def crop_rois(image: torch.Tensor, boxes_xywh: np.ndarray, size: int, device: torch.device) -> torch.Tensor:
    """(B, 3, size, size) normalised crops of the boxes (xywh, original pixels) of one image."""
    boxes = np.asarray(boxes_xywh, np.float64)
    if boxes.ndim != 2 or boxes.shape[1] != 4:
        raise ValueError(f"expected (B, 4) xywh boxes, got shape {boxes.shape}")
    x = _normalised(image, device)
    xyxy = torch.from_numpy(xywh_to_xyxy(boxes)).float()
    rois = torch.cat([torch.zeros(len(xyxy), 1), xyxy], dim=1).to(device)  # column 0: batch index
    return roi_align(x, rois, output_size=size, spatial_scale=1.0, sampling_ratio=0, aligned=True)


@torch.no_grad()
def embed_crops(backbone: ResNet, crops: torch.Tensor, batch: int = 64) -> np.ndarray:
    """(B, C) float32 L2-normalised res5 global-average features of `crops`, `batch` at a time.

    The backbone runs in eval mode (its previous mode is restored); the projector is not used.
    """
    if len(crops) == 0:
        return np.zeros((0, backbone.num_features), np.float32)
    was_training = backbone.training
    backbone.eval()
    try:
        out = [F.normalize(backbone.taps(crops[start:start + batch], {"res5"})["res5"].mean(dim=(2, 3)).float(),
                           dim=1).cpu() for start in range(0, len(crops), batch)]
    finally:
        backbone.train(was_training)
    return torch.cat(out).numpy()
