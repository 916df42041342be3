"""RoI embeddings (docs/protocols.md 2.5), computed once per image.

The official code crops and embeds every neighbour's boxes again for every query that lists it
(~11 x 100 crops per image); an image's RoI embeddings do not depend on the query, so stage 2
embeds each image's kept boxes exactly once and pair retrieval reuses them.

Crop-and-resize (`method.stage2.roi_crop`) is by default ("roi_align") one
`torchvision.ops.roi_align` call per batch of boxes on the normalised full-resolution image:
aligned=True puts pixel centres at +0.5, so the box [x, x + w) maps onto the output grid as a
crop followed by a bilinear resize (align_corners=False); only samples within half a pixel of the
box edge differ, interpolating with the pixels just outside the box where a crop clamps to its
own border.
sampling_ratio=0 is adaptive: ceil(box side / size) bilinear samples per output pixel and axis,
i.e. plain bilinear when enlarging and an area average when shrinking. That stands in for the
antialiased PIL resize of the official `resized_crop`; both low-pass when shrinking.
"pil" is the official code itself: per box, PIL's crop (corners rounded to whole pixels) and
bilinear resize, then ToTensor and Normalize (docs/protocols.md 2.5 has the cost and the effect);
stage 2 runs it in its loader workers, as the official loader does.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torchvision.ops import roi_align

from orl_bench.data.views import IMAGENET_MEAN, IMAGENET_STD
from orl_bench.methods.orl.boxes import xywh_to_xyxy
from orl_bench.models.backbones import ResNet

ROI_CROPS = ("roi_align", "pil")


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


def normalised(pixels: torch.Tensor, device: torch.device) -> torch.Tensor:
    """ImageNet-normalised float of (..., 3, H, W) pixels; uint8 is scaled by 1/255, float taken as [0, 1]."""
    x = pixels.to(device)
    x = x.float() / 255 if x.dtype == torch.uint8 else x.float()
    mean = torch.tensor(IMAGENET_MEAN, device=device).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=device).view(3, 1, 1)
    return (x - mean) / std


def pil_crops(image: Image.Image, boxes_xywh: np.ndarray, size: int) -> torch.Tensor:
    """(B, 3, size, size) uint8: the official `TF.resized_crop` of each box (xywh) of a PIL image;
    `normalised` then does the official ToTensor and Normalize."""
    crops = [np.asarray(image.crop((x, y, x + w, y + h)).resize((size, size), Image.BILINEAR))
             for x, y, w, h in np.asarray(boxes_xywh, np.float64).tolist()]
    return torch.from_numpy(np.stack(crops)).permute(0, 3, 1, 2)


def crop_rois(image: torch.Tensor, boxes_xywh: np.ndarray, size: int, device: torch.device) -> torch.Tensor:
    """(B, 3, size, size) normalised roi_align crops of the boxes (xywh, original pixels) of one image."""
    if image.ndim != 3 or image.shape[0] != 3:
        raise ValueError(f"expected a (3, H, W) image tensor, got shape {tuple(image.shape)}")
    boxes = np.asarray(boxes_xywh, np.float64)
    if boxes.ndim != 2 or boxes.shape[1] != 4:
        raise ValueError(f"expected (B, 4) xywh boxes, got shape {boxes.shape}")
    x = normalised(image, device).unsqueeze(0)
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
