"""RoI embeddings (docs/protocols.md 2.5): one backbone image per box, crops equal to a plain resize,
and the official per-box PIL crop as `roi_crop: pil`."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision.transforms.functional as TF
from PIL import Image

from orl_bench.data.views import IMAGENET_MEAN, IMAGENET_STD
from orl_bench.methods.orl.roi_embed import ForwardCounter, crop_rois, embed_crops, normalised, pil_crops
from orl_bench.models.backbones import build_backbone

SIZE = 64  # the embedded recipes' scale; the paper's 224 only costs time here


@pytest.fixture(scope="module")
def backbone():
    torch.manual_seed(0)
    net = build_backbone("resnet18", width=16)
    with torch.no_grad():  # non-trivial BN statistics, so eval mode matters
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    return net


def embed_rois(net, image: torch.Tensor, boxes: np.ndarray, size: int, batch: int = 64) -> np.ndarray:
    """Crop then embed, as stage 2 does for one image."""
    return embed_crops(net, crop_rois(image, boxes, size, torch.device("cpu")), batch)


def reference(net, image01: torch.Tensor) -> np.ndarray:
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    with torch.no_grad():
        feat = net.eval().taps((image01 - mean) / std, {"res5"})["res5"].mean(dim=(2, 3))
    return F.normalize(feat, dim=1).numpy()


def test_one_forward_image_per_box_and_unit_norm(backbone):
    image = torch.randint(0, 256, (3, 90, 130), dtype=torch.uint8)
    boxes = np.array([[0, 0, 130, 90], [10, 5, 40, 60], [50, 20, 70, 30], [0, 0, 20, 20],
                      [100, 60, 30, 30], [5.5, 7.25, 33, 41], [60, 0, 70, 90]], np.float32)
    backbone.train()
    with ForwardCounter(backbone) as counter:
        out = embed_rois(backbone, image, boxes, size=SIZE, batch=3)
    assert counter.images == len(boxes)
    assert backbone.training  # the caller's mode is restored
    assert out.shape == (7, backbone.num_features) and out.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-5)
    as_float = embed_rois(backbone, image.float() / 255, boxes, size=SIZE, batch=64)
    np.testing.assert_allclose(as_float, out, atol=1e-5)
    with ForwardCounter(backbone) as counter:
        empty = embed_rois(backbone, image, np.zeros((0, 4)), size=SIZE)
    assert empty.shape == (0, backbone.num_features) and counter.images == 0


def test_whole_image_box_equals_bilinear_resize_when_enlarging(backbone):
    image = torch.rand(3, 40, 56)
    out = embed_rois(backbone, image, np.array([[0, 0, 56, 40]]), size=SIZE)
    resized = F.interpolate(image[None], size=(SIZE, SIZE), mode="bilinear", align_corners=False)
    np.testing.assert_allclose(out, reference(backbone, resized), atol=1e-5)


def test_whole_image_box_equals_area_average_when_shrinking(backbone):
    image = torch.rand(3, 2 * SIZE, 3 * SIZE)
    out = embed_rois(backbone, image, np.array([[0, 0, 3 * SIZE, 2 * SIZE]]), size=SIZE)
    resized = F.interpolate(image[None], size=(SIZE, SIZE), mode="area")
    np.testing.assert_allclose(out, reference(backbone, resized), atol=1e-5)


def test_box_is_close_to_crop_then_resize(backbone):
    """Not equal: edge samples interpolate with the pixels just outside the box, where a crop
    clamps to its own border."""
    image = torch.rand(3, 80, 100)
    out = embed_rois(backbone, image, np.array([[20, 10, 32, 48]]), size=SIZE)
    crop = image[:, 10:58, 20:52]
    resized = F.interpolate(crop[None], size=(SIZE, SIZE), mode="bilinear", align_corners=False)
    cosine = float(out[0] @ reference(backbone, resized)[0])
    assert 0.999 < cosine < 1 - 1e-7


def test_pil_crop_is_the_official_resized_crop():
    """The official stage 2: torchvision's `resized_crop` of each box on the PIL image (PIL rounds
    the corners), then ToTensor and Normalize."""
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (90, 130, 3), dtype=np.uint8))
    boxes = np.array([[10, 5, 40, 60], [0, 0, 130, 90], [5.5, 7.25, 33, 41]])
    out = normalised(pil_crops(image, boxes, SIZE), torch.device("cpu"))
    assert out.shape == (3, 3, SIZE, SIZE)
    for (x, y, w, h), crop in zip(boxes.tolist(), out, strict=True):
        official = TF.resized_crop(image, y, x, h, w, [SIZE, SIZE])
        expected = TF.normalize(TF.to_tensor(official), IMAGENET_MEAN, IMAGENET_STD)
        torch.testing.assert_close(crop, expected, rtol=0, atol=1e-6)


def test_pil_and_roi_align_crops_are_close_on_a_smooth_image():
    """They differ only in how each resamples (rounded corners, filter support): within a grey
    level on a gradient, whether the box is enlarged or shrunk."""
    yy, xx = torch.meshgrid(torch.linspace(0, 1, 96), torch.linspace(0, 1, 128), indexing="ij")
    image = (255 * torch.stack([xx, yy, (xx + yy) / 2])).round().to(torch.uint8)
    boxes = np.array([[10, 5, 40, 60], [0, 0, 128, 96], [30, 20, 90, 70], [64, 40, 20, 30]])
    cpu = torch.device("cpu")
    pil = normalised(pil_crops(Image.fromarray(image.permute(1, 2, 0).numpy()), boxes, SIZE), cpu)
    diff = (crop_rois(image, boxes, SIZE, cpu) - pil).abs()
    assert diff.mean() < 0.01 and diff.max() < 0.05  # normalised units: 0.01 is ~0.6 grey levels


def test_bad_input(backbone):
    with pytest.raises(ValueError, match=r"\(3, H, W\)"):
        embed_rois(backbone, torch.rand(1, 3, 20, 20), np.array([[0, 0, 5, 5]]), size=SIZE)
    with pytest.raises(ValueError, match="xywh"):
        embed_rois(backbone, torch.rand(3, 20, 20), np.array([0, 0, 5, 5]), size=SIZE)
