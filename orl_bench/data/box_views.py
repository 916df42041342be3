"""Views that know where they come from: each view reports its crop and flip, so boxes can be
mapped from the image into it (SCRL's matched boxes, UniVIP's instances in the views' overlap).

A view is a RandomResizedCrop and a horizontal flip, drawn first and kept as a `ViewGeometry`,
then views.py's photometric chain (colour, grayscale, blur, solarize) and normalisation. Every
draw comes from torch's global RNG, so under `seeded_call(seed, key)` a sample is a function of
(seed, epoch, index) like every other view in the project, and a resumed run stays exact.

Coordinates are continuous pixels: pixel i covers [i, i + 1) and boxes are (x0, y0, x1, y1). A
crop [x0, x1) resized to `size` maps x to (x - x0) * size / (x1 - x0); a flip maps x to size - x.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import torch
from PIL import Image
from torchvision.transforms import RandomResizedCrop, v2

from orl_bench.data.views import ViewParams, normalize, photometric

INTERPOLATIONS = {"bilinear": v2.InterpolationMode.BILINEAR, "bicubic": v2.InterpolationMode.BICUBIC}
Region = tuple[int, int, int, int]  # x0, y0, x1, y1 in whole image pixels


@dataclass(frozen=True)
class BoxViewParams(ViewParams):
    """ViewParams plus the resize interpolation and, when `resize_blur` lists factors, SCRL's
    blur (downscale by a factor drawn from the list, then upscale) in place of the Gaussian one,
    with the same per-view probabilities."""
    interpolation: str = "bilinear"
    resize_blur: tuple[float, ...] = ()

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.interpolation not in INTERPOLATIONS:
            raise ValueError(f"views.interpolation must be one of {tuple(INTERPOLATIONS)}, "
                             f"got '{self.interpolation}'")
        if any(f <= 1 for f in self.resize_blur):
            raise ValueError(f"views.resize_blur factors must be > 1 (a downscale), got {self.resize_blur}")


@dataclass(frozen=True)
class ViewGeometry:
    """Where a view comes from: its crop of the image, whether it was flipped, its side."""
    crop: Region
    flipped: bool
    size: int

    @property
    def scale(self) -> tuple[float, float]:
        """View pixels per image pixel along x and y."""
        x0, y0, x1, y1 = self.crop
        return self.size / (x1 - x0), self.size / (y1 - y0)


def to_view(boxes: torch.Tensor, g: ViewGeometry) -> torch.Tensor:
    """(n, 4) xyxy boxes in image pixels -> the same boxes in the view's pixels, mirrored if the
    view is flipped. Boxes reaching outside the crop reach outside the view."""
    if boxes.ndim != 2 or boxes.shape[1] != 4:
        raise ValueError(f"expected (n, 4) xyxy boxes, got shape {tuple(boxes.shape)}")
    (sx, sy), (x0, y0) = g.scale, g.crop[:2]
    left, top = (boxes[:, 0] - x0) * sx, (boxes[:, 1] - y0) * sy
    right, bottom = (boxes[:, 2] - x0) * sx, (boxes[:, 3] - y0) * sy
    if g.flipped:
        left, right = g.size - right, g.size - left
    return torch.stack([left, top, right, bottom], dim=1)


def overlap(g1: ViewGeometry, g2: ViewGeometry) -> Region | None:
    """The part of the image both views show, or None when their crops do not meet."""
    x0, y0 = max(g1.crop[0], g2.crop[0]), max(g1.crop[1], g2.crop[1])
    x1, y1 = min(g1.crop[2], g2.crop[2]), min(g1.crop[3], g2.crop[3])
    return (x0, y0, x1, y1) if x0 < x1 and y0 < y1 else None


def inside(boxes: torch.Tensor, region: Region) -> torch.Tensor:
    """(n,) bool: which xyxy boxes lie wholly within `region`."""
    x0, y0, x1, y1 = region
    return (boxes[:, 0] >= x0) & (boxes[:, 1] >= y0) & (boxes[:, 2] <= x1) & (boxes[:, 3] <= y1)


def crop_to_view(pixels: torch.Tensor, g: ViewGeometry,
                 interpolation: v2.InterpolationMode = v2.InterpolationMode.BILINEAR) -> torch.Tensor:
    """The geometric part of a view: crop, resize to size x size (antialiased), flip."""
    x0, y0, x1, y1 = g.crop
    out = v2.functional.resized_crop(pixels, y0, x0, y1 - y0, x1 - x0, [g.size, g.size],
                                     interpolation=interpolation, antialias=True)
    return v2.functional.horizontal_flip(out) if g.flipped else out


class ResizeBlur:
    """SCRL's cheap blur of a CHW tensor: downscale by a factor drawn uniformly from `factors`
    (torch's RNG), then back to the original size."""

    def __init__(self, factors: tuple[float, ...], interpolation: v2.InterpolationMode):
        self.factors, self.interpolation = factors, interpolation

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        factor = self.factors[int(torch.randint(len(self.factors), ()))]
        h, w = x.shape[-2:]
        small = v2.functional.resize(x, [max(1, int(h // factor)), max(1, int(w // factor))],
                                     interpolation=self.interpolation, antialias=True)
        return v2.functional.resize(small, [h, w], interpolation=self.interpolation, antialias=True)


class BoxView:
    """One view recipe, with view `which` (1 or 2) probabilities, that reports its geometry.

    `draw` picks a geometry (crop, then flip) without touching pixels, so a method can redraw
    until a condition holds; `render` makes the view; calling the object does both.
    """

    def __init__(self, p: BoxViewParams, which: int):
        if which not in (1, 2):
            raise ValueError(f"a view is view 1 or view 2 (its augmentation probabilities), got {which}")
        self.p = p
        self.interpolation = INTERPOLATIONS[p.interpolation]
        # views.py's chain without its flip: the flip is drawn with the crop, where it is recorded
        blur = ResizeBlur(p.resize_blur, self.interpolation) if p.resize_blur else None
        chain = photometric(replace(p, hflip_p=0.0), which, p.size, blur)
        self.photometric = v2.Compose([*chain, normalize()])

    def draw(self, pixels: torch.Tensor) -> ViewGeometry:
        top, left, h, w = RandomResizedCrop.get_params(pixels, list(self.p.scale), list(self.p.ratio))
        flipped = bool(torch.rand(()) < self.p.hflip_p)
        return ViewGeometry((left, top, left + w, top + h), flipped, self.p.size)

    def render(self, pixels: torch.Tensor, g: ViewGeometry) -> torch.Tensor:
        """uint8 CHW image -> the normalised float view of geometry `g`."""
        return self.photometric(crop_to_view(pixels, g, self.interpolation))

    def __call__(self, image: Image.Image) -> tuple[torch.Tensor, ViewGeometry]:
        pixels = v2.functional.pil_to_tensor(image)
        g = self.draw(pixels)
        return self.render(pixels, g), g
