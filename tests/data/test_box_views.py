"""Box-carrying views: the geometry a view reports is where its pixels come from, boxes map into
it (mirrored when flipped), and the draws are those of the per-sample seeded RNG."""
import numpy as np
import pytest
import torch
from PIL import Image

from orl_bench.data.box_views import BoxView, BoxViewParams, ViewGeometry, inside, overlap, to_view
from orl_bench.data.views import IMAGENET_MEAN, IMAGENET_STD, seeded_call

# no colour, grayscale, blur or solarize: a view's pixels are its crop's, resized and flipped
GEOMETRY_ONLY = dict(color_jitter_p=0.0, grayscale_p=0.0, blur_p=(0.0, 0.0), solarize_p=(0.0, 0.0))


def coordinate_image(side: int = 256) -> Image.Image:
    """Red is a pixel's x, green its y (exact in 8 bits for a 256 px image)."""
    y, x = np.mgrid[:side, :side]
    return Image.fromarray(np.stack([x, y, np.zeros_like(x)], axis=-1).astype(np.uint8))


def decode(view: torch.Tensor) -> torch.Tensor:
    """(2, H, W) image coordinates (x, y) of a normalised view of `coordinate_image`, at pixel
    centres (pixel i is [i, i + 1))."""
    mean, std = torch.tensor(IMAGENET_MEAN).view(3, 1, 1), torch.tensor(IMAGENET_STD).view(3, 1, 1)
    return ((view * std + mean) * 255)[:2] + 0.5


def test_to_view_scales_shifts_and_mirrors_boxes():
    g = ViewGeometry((10, 20, 50, 100), False, 20)  # 0.5 view px per image px along x, 0.25 along y
    boxes = torch.tensor([[10.0, 20.0, 50.0, 100.0], [10.0, 20.0, 30.0, 60.0]])
    assert torch.equal(to_view(boxes, g), torch.tensor([[0.0, 0.0, 20.0, 20.0], [0.0, 0.0, 10.0, 10.0]]))
    flipped = ViewGeometry((10, 20, 50, 100), True, 20)
    assert torch.equal(to_view(boxes, flipped), torch.tensor([[0.0, 0.0, 20.0, 20.0], [10.0, 0.0, 20.0, 10.0]]))
    with pytest.raises(ValueError, match=r"expected \(n, 4\) xyxy boxes"):
        to_view(torch.zeros(4), g)


def test_overlap_and_inside():
    a, b = ViewGeometry((0, 0, 60, 50), False, 32), ViewGeometry((40, 10, 100, 90), True, 32)
    assert overlap(a, b) == (40, 10, 60, 50)
    assert overlap(a, ViewGeometry((60, 0, 90, 50), False, 32)) is None  # touching edges share nothing
    boxes = torch.tensor([[40.0, 10.0, 60.0, 50.0], [39.0, 20.0, 50.0, 30.0], [45.0, 20.0, 55.0, 51.0]])
    assert inside(boxes, (40, 10, 60, 50)).tolist() == [True, False, False]


@pytest.mark.parametrize("interpolation", ["bilinear", "bicubic"])
def test_a_views_pixels_come_from_where_its_geometry_says(interpolation):
    image = coordinate_image()
    p = BoxViewParams(size=48, scale=(0.1, 1.0), interpolation=interpolation, **GEOMETRY_ONLY)
    views = BoxView(p, 1)
    u = torch.arange(p.size) + 0.5  # view pixel centres
    flips = set()
    for key in range(12):
        view, g = seeded_call(0, key, lambda: views(image))
        flips.add(g.flipped)
        (sx, sy), (x0, y0) = g.scale, g.crop[:2]
        expected_x = x0 + ((p.size - u) if g.flipped else u) / sx
        expected_y = y0 + u / sy
        coords = decode(view)
        # away from the view's border, where resizing clamps at the crop's edge, interpolation
        # reproduces a linear ramp; 8-bit rounding is the only error
        inner = slice(3, -3)
        assert torch.allclose(coords[0, inner, inner], expected_x[None, inner].expand(p.size - 6, -1), atol=0.6)
        assert torch.allclose(coords[1, inner, inner], expected_y[inner, None].expand(-1, p.size - 6), atol=0.6)
    assert flips == {True, False}


def test_views_are_a_function_of_seed_and_key():
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (70, 90, 3), dtype=np.uint8))
    views = BoxView(BoxViewParams(size=32, resize_blur=(1.1, 1.2, 1.5)), 2)
    a, b = seeded_call(3, 5, lambda: views(image)), seeded_call(3, 5, lambda: views(image))
    assert torch.equal(a[0], b[0]) and a[1] == b[1]
    assert seeded_call(3, 6, lambda: views(image))[1] != a[1]


def test_bad_view_settings_are_clear_errors():
    with pytest.raises(ValueError, match="views.interpolation must be one of"):
        BoxViewParams(interpolation="nearest")
    with pytest.raises(ValueError, match="resize_blur factors must be > 1"):
        BoxViewParams(resize_blur=(0.5,))
    with pytest.raises(ValueError, match="view 1 or view 2"):
        BoxView(BoxViewParams(), 3)
