"""SCRL: its boxes show the same content in both views, they follow the sampling rules, and the
loss is BYOL's on RoI features of the valid boxes only."""
import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.ops import box_iou, roi_align

from orl_bench import pipeline
from orl_bench.data.box_views import ViewGeometry, inside, overlap, to_view
from orl_bench.data.views import IMAGENET_MEAN, IMAGENET_STD, seeded_call
from orl_bench.methods import scrl as scrl_module
from orl_bench.methods.base import Progress
from orl_bench.methods.scrl import SCRL, SCRLParams, SCRLSample, SCRLViews, sample_boxes

# no colour, grayscale, blur or solarize: a view's pixels are its crop's, resized and flipped
GEOMETRY_ONLY = dict(color_jitter_p=0.0, grayscale_p=0.0, blur_p=(0.0, 0.0), solarize_p=(0.0, 0.0))


def coordinate_image(side: int = 256) -> Image.Image:
    """Red is a pixel's x, green its y (exact in 8 bits for a 256 px image)."""
    y, x = np.mgrid[:side, :side]
    return Image.fromarray(np.stack([x, y, np.zeros_like(x)], axis=-1).astype(np.uint8))


def decode(views: torch.Tensor) -> torch.Tensor:
    """Normalised views of `coordinate_image` -> (B, 2, H, W) image coordinates at pixel centres."""
    mean, std = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return ((views * std + mean) * 255)[:, :2] + 0.5


def grid(boxes: torch.Tensor, n: int) -> torch.Tensor:
    """(m, 2, n, n) centres of an n x n grid over each xyxy box."""
    t = (torch.arange(n, dtype=boxes.dtype) + 0.5) / n
    xs = boxes[:, 0, None] + t * (boxes[:, 2] - boxes[:, 0])[:, None]
    ys = boxes[:, 1, None] + t * (boxes[:, 3] - boxes[:, 1])[:, None]
    return torch.stack([xs[:, None, :].expand(-1, n, -1), ys[:, :, None].expand(-1, -1, n)], dim=1)


def test_matched_boxes_show_the_same_image_region_in_both_views(monkeypatch):
    """Sample through the real transform on an image whose pixels encode their coordinates: the
    content under a box in view 1 and under its match in view 2 decodes to the box's image region."""
    drawn = {}

    def recording_sampler(g1, g2, *args):
        drawn["geometries"], drawn["boxes"] = (g1, g2), sample_boxes(g1, g2, *args)
        return drawn["boxes"]

    monkeypatch.setattr(scrl_module, "sample_boxes", recording_sampler)
    transform = SCRLSample(SCRLParams(views=SCRLViews(size=64, **GEOMETRY_ONLY), min_box=9.14))
    image, n = coordinate_image(), 3
    flips, checked = set(), 0
    for key in range(16):
        view1, view2, boxes1, boxes2, valid = seeded_call(0, key, lambda: transform(image))
        assert int(valid.sum()) == len(drawn["boxes"])
        expected = grid(drawn["boxes"], n)
        for view, boxes, g in zip((view1, view2), (boxes1, boxes2), drawn["geometries"]):
            flips.add(g.flipped)
            rois = torch.cat([torch.zeros(int(valid.sum()), 1), boxes[valid]], dim=1)
            seen = roi_align(decode(view[None]), rois, output_size=n, sampling_ratio=1, aligned=True).double()
            if g.flipped:  # the grid runs right to left in a mirrored view
                seen = seen.flip(-1)
            # 8-bit rounding, and resizing clamped at the crop's edge (measured: <= 0.23 view px)
            assert torch.allclose(seen, expected, atol=0.4 / min(g.scale) + 0.5), (key, g)
        checked += int(valid.sum())
    assert checked > 50 and flips == {True, False}


def test_boxes_follow_the_sampling_rules():
    g1 = ViewGeometry((0, 0, 200, 150), False, 64)
    g2 = ViewGeometry((50, 30, 250, 250), True, 64)
    torch.manual_seed(0)
    boxes = sample_boxes(g1, g2, 10, 9.0, 0.5, 50)
    assert 1 <= len(boxes) <= 10
    assert inside(boxes, overlap(g1, g2)).all()
    for g in (g1, g2):
        in_view = to_view(boxes, g)
        assert (in_view[:, 2:] - in_view[:, :2] >= 9.0 - 1e-9).all()
    iou = box_iou(boxes, boxes) - torch.eye(len(boxes), dtype=boxes.dtype)
    assert iou.max() <= 0.5


def test_no_boxes_when_the_overlap_is_not_larger_than_the_minimum():
    g1 = ViewGeometry((0, 0, 100, 100), False, 64)  # 0.64 view px per image px
    g2 = ViewGeometry((80, 0, 180, 100), False, 64)  # overlap 20 image px wide = 12.8 view px
    assert len(sample_boxes(g1, g2, 10, 12.8, 0.5, 50)) == 0
    assert len(sample_boxes(g1, g2, 10, 12.7, 0.5, 50)) > 0
    assert len(sample_boxes(g1, ViewGeometry((100, 0, 200, 100), False, 64), 10, 1.0, 0.5, 50)) == 0


def tiny_scrl() -> SCRL:
    torch.manual_seed(0)
    return SCRL(pipeline.load_pretrain_config("scrl", "tiny", []))


def res5(backbone, x):
    x = backbone.maxpool(backbone.relu(backbone.bn1(backbone.conv1(x))))
    return backbone.layer4(backbone.layer3(backbone.layer2(backbone.layer1(x))))


def test_box_loss_is_byol_on_the_res5_cells_under_the_valid_boxes():
    """At 64 px res5 is 2x2; a box covering exactly one 32 px cell pools exactly that cell."""
    scrl = tiny_scrl()
    g = torch.Generator().manual_seed(1)
    view1, view2 = torch.randn(3, 3, 64, 64, generator=g), torch.randn(3, 3, 64, 64, generator=g)
    cell = lambda i, j: [32.0 * j, 32.0 * i, 32.0 * (j + 1), 32.0 * (i + 1)]  # noqa: E731 (row i, column j)
    boxes1 = torch.tensor([[cell(0, 0), cell(1, 1), [5.0, 5.0, 9.0, 9.0]],
                           [cell(0, 1), [1.0, 2.0, 3.0, 4.0], [1.0, 2.0, 3.0, 4.0]],
                           [[0.0] * 4, [0.0] * 4, [0.0] * 4]])
    boxes2 = torch.tensor([[cell(1, 0), cell(0, 1), [5.0, 5.0, 9.0, 9.0]],
                           [cell(1, 1), [1.0, 2.0, 3.0, 4.0], [1.0, 2.0, 3.0, 4.0]],
                           [[0.0] * 4, [0.0] * 4, [0.0] * 4]])
    valid = torch.tensor([[True, True, False], [True, False, False], [False, False, False]])
    loss = scrl.training_step((view1, view2, boxes1, boxes2, valid), Progress(0, 10, 0))["loss"]

    # (image, row, column) of the cell under each valid box, view 1 then view 2
    cells1, cells2 = [(0, 0, 0), (0, 1, 1), (1, 0, 1)], [(0, 1, 0), (0, 0, 1), (1, 1, 1)]
    online_backbone, target_backbone = scrl.backbone, scrl.target[0]

    def features(backbone, view, cells):
        maps = res5(backbone, view)
        return torch.stack([maps[b, :, i, j] for b, i, j in cells])

    with torch.no_grad():
        p1 = scrl.predictor(scrl.projector(features(online_backbone, view1, cells1)))
        p2 = scrl.predictor(scrl.projector(features(online_backbone, view2, cells2)))
        z1 = scrl.target[1](features(target_backbone, view1, cells1))
        z2 = scrl.target[1](features(target_backbone, view2, cells2))

    def mean_byol(p, z):
        return sum(2 - 2 * float(p[k] @ z[k]) / float(p[k].norm() * z[k].norm()) for k in range(len(p))) / len(p)

    assert loss.item() == pytest.approx(mean_byol(p1, z2) + mean_byol(p2, z1), rel=1e-5)


def test_a_batch_without_boxes_gives_a_zero_loss_that_reaches_every_parameter():
    scrl = tiny_scrl()
    views = torch.randn(2, 3, 32, 32)
    boxes = torch.full((2, 10, 4), float("nan"))  # padding rows are never read
    out = scrl.training_step((views, views, boxes, boxes, torch.zeros(2, 10, dtype=torch.bool)), Progress(0, 10, 0))
    assert out["loss"].item() == 0.0 and out["boxes_per_image"].item() == 0.0
    out["loss"].backward()
    online = [p for p in scrl.parameters() if p.requires_grad]
    assert all(p.grad is not None and torch.equal(p.grad, torch.zeros_like(p)) for p in online)


def test_bad_box_settings_are_clear_errors():
    with pytest.raises(ValueError, match="min_box < views.size"):
        SCRLParams(views=SCRLViews(size=32), min_box=32)
    with pytest.raises(ValueError, match="boxes_per_image >= 1"):
        SCRLParams(boxes_per_image=0)


def test_a_sample_is_a_function_of_seed_and_key():
    """What exact resume relies on: a fresh transform under the same (seed, key) draws the same
    views and boxes."""
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (70, 90, 3), dtype=np.uint8))
    p = SCRLParams(views=SCRLViews(size=32), min_box=4.57)
    first, again = (seeded_call(1, 4, lambda: SCRLSample(p)(image)) for _ in range(2))
    assert all(torch.equal(a, b) for a, b in zip(first, again))
    assert not torch.equal(first[2], seeded_call(1, 5, lambda: SCRLSample(p)(image))[2])
