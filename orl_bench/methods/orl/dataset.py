"""ORL stage-3 samples (docs/protocols.md 3): two global views, an intra-RoI pair, an inter-RoI pair.

Every random choice (views, box, jitter, neighbour, pair, patch augmentation) runs under
`seeded_call(seed, key)`, so a sample depends only on (seed, epoch, index): resumable and
independent of the number of loader workers, like the BYOL views.

Fallbacks (counted at construction, reported in `fallbacks` and by a warning; the loss weights
never change, every sample contributes to all three branches):
- an image without boxes uses the whole image as its one box (its intra pair is then the whole
  image and, usually, an identical copy, because jittering a full-image box rarely fits inside);
- an image whose neighbours hold no pairs (no boxes, or empty pair lists) uses its intra boxes as
  the inter pair. Neighbours with an empty pair list are skipped when drawing the neighbour;
- a neighbour image that cannot be read falls back the same way for that sample; the file itself
  is counted as unreadable when it is drawn as a query in the same epoch.

With `decoded` (train.augment: device) a sample is a DecodedViews instead: the uint8 query image
(and neighbour image, when the inter pair uses one) and a parameter row per view and patch, in the
order of `decoded_specs`, from the very draws of the PIL path; `DeviceViews` makes the tensors.
"""
from __future__ import annotations

import math
import warnings
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from PIL import Image
from torchvision.ops import box_convert, box_iou
from torchvision.transforms import v2

from orl_bench.data.batched_views import DecodedViews, draw_patch_params, draw_view_params, pixel_box
from orl_bench.data.images import UnreadableImageError, read_rgb
from orl_bench.data.pretrain_dataset import ViewsDataset
from orl_bench.data.views import ViewSpec, normalize, photometric, two_view_specs, view_transform
from orl_bench.methods.orl.correspondence import CorrespondenceError, Correspondences

if TYPE_CHECKING:
    from orl_bench.methods.orl.method import ORLParams

Box = tuple[float, float, float, float]  # x, y, w, h in pixels
Pair = tuple[torch.Tensor, torch.Tensor]

JITTER_AREA = (0.5, 2.0)
JITTER_ASPECT = (0.5, 2.0)  # of the new box itself (w / h), as the official code draws it
JITTER_SHIFT = 0.5  # centre moves by U(-0.5, 0.5) x w and x h
JITTER_MIN_IOU = 0.5
JITTER_TRIES = 200


def jitter_box(box: Box, image_wh: tuple[int, int], generator: torch.Generator | None = None) -> Box:
    """A random variant of `box` inside the image with IoU > 0.5 (docs/protocols.md 3), or `box` itself.

    All 200 tries are drawn at once and the first valid one is kept: the same distribution as
    trying one at a time, and a fixed number of draws, so the RNG stream after the call does not
    depend on the box. `generator=None` uses torch's global RNG (as under `seeded_call`).
    Boxes stay in float pixels; cropping rounds them.
    """
    x, y, w, h = (float(v) for v in box)
    u = torch.rand(JITTER_TRIES, 4, generator=generator, dtype=torch.float64)
    area = w * h * (JITTER_AREA[0] + (JITTER_AREA[1] - JITTER_AREA[0]) * u[:, 0])
    lo, hi = math.log(JITTER_ASPECT[0]), math.log(JITTER_ASPECT[1])
    aspect = torch.exp(lo + (hi - lo) * u[:, 1])
    size = torch.stack([torch.sqrt(area * aspect), torch.sqrt(area / aspect)], dim=1)
    centre = torch.tensor([x + w / 2, y + h / 2], dtype=torch.float64) \
        + (2 * u[:, 2:] - 1) * JITTER_SHIFT * torch.tensor([w, h], dtype=torch.float64)
    candidates = torch.cat([centre - size / 2, centre + size / 2], dim=1)  # xyxy
    inside = (candidates[:, :2] >= 0).all(dim=1) \
        & (candidates[:, 2:] <= torch.tensor(image_wh, dtype=torch.float64)).all(dim=1)
    original = box_convert(torch.tensor([[x, y, w, h]], dtype=torch.float64), "xywh", "xyxy")
    valid = inside & (box_iou(candidates, original)[:, 0] > JITTER_MIN_IOU)
    if not valid.any():
        return (x, y, w, h)
    first = int(valid.nonzero()[0, 0])
    return tuple(box_convert(candidates[first:first + 1], "xyxy", "xywh")[0].tolist())


def crop_resize(image: Image.Image, box: Box, size: int) -> Image.Image:
    """Crop `box` (rounded to whole pixels, clipped to the image, >= 1 px) and resize it to
    size x size with PIL's (antialiased) bilinear resize, as the official code does."""
    return image.crop(pixel_box(box, *image.size)).resize((size, size), Image.Resampling.BILINEAR)


def _randint(n: int) -> int:
    return int(torch.randint(n, ()))


def decoded_specs(p: ORLParams) -> list[ViewSpec]:
    """The recipe of each parameter row of a decoded sample: the two global views, then the intra
    and the inter patch pairs (view 1, view 2 each) at the patch size."""
    return [*two_view_specs(p.views), *two_view_specs(replace(p.views, size=p.patch_size)) * 2]


class ORLDataset(ViewsDataset):
    """Indexed by sampler keys (epoch * N + index). Returns
    (index, ((global1, global2), (intra1, intra2), (inter1, inter2))), or with `decoded` (index,
    DecodedViews), or (index, None) when the image cannot be read, for `collate_skipping_unreadable`."""

    def __init__(self, paths: list[Path], correspondences: Correspondences, params: ORLParams,
                 seed: int, decoded: bool = False):
        super().__init__(paths, None, seed)
        c = correspondences
        c.validate(n_images=len(self.paths))
        for i, (path, name) in enumerate(zip(self.paths, c.file_names, strict=True)):
            if path.name != Path(name).name:
                raise CorrespondenceError(f"image {i}: the dataset lists {path}, the "
                                          f"correspondences {name}; they must list the same "
                                          "images in the same order")
        self.boxes = c.boxes
        self.knn = c.knn
        self.pairs = c.pairs
        # Per image, the neighbours (columns of knn) that hold at least one pair.
        self.usable = [[k for k, p in enumerate(row) if len(p)] for row in c.pairs]
        self.fallbacks = {"images": len(self.paths),
                          "no_boxes": sum(len(b) == 0 for b in c.boxes),
                          "no_pairs": sum(not u for u in self.usable)}
        if self.fallbacks["no_boxes"] or self.fallbacks["no_pairs"]:
            warnings.warn(f"ORL stage 3: {self.fallbacks['no_boxes']} of {len(self.paths)} images "
                          "have no boxes (their intra pair uses the whole image) and "
                          f"{self.fallbacks['no_pairs']} have no inter pairs (they reuse their "
                          "intra boxes)", stacklevel=2)
        self.decoded = decoded
        self.views = params.views
        self.global_views = (view_transform(params.views, 1), view_transform(params.views, 2))
        self.patch_size = params.patch_size
        self.patch_views = {which: v2.Compose([*photometric(params.views, which, params.patch_size),
                                               normalize()]) for which in (1, 2)}

    def sample(self, index: int, image: Image.Image) -> tuple[Pair, Pair, Pair] | DecodedViews:
        # Both paths make the same draws in the same order; only what a view becomes differs.
        views = (self._view(image, 1), self._view(image, 2))
        boxes = self.boxes[index]
        box = tuple(boxes[_randint(len(boxes))].tolist()) if len(boxes) else (0, 0, *image.size)
        intra = (box, jitter_box(box, image.size))
        other_image, inter = self._inter_boxes(index, intra, image)
        patches = (self._patch(image, intra[0], 1), self._patch(image, intra[1], 2),
                   self._patch(image, inter[0], 1), self._patch(other_image, inter[1], 2))
        if not self.decoded:
            return views, patches[:2], patches[2:]
        images = (image,) if other_image is image else (image, other_image)
        # Every row reads the query image but the last patch, which reads the neighbour's when used.
        sources = torch.tensor([0] * (len(views) + len(patches) - 1) + [len(images) - 1])
        return DecodedViews(tuple(v2.functional.pil_to_tensor(i) for i in images),
                            torch.stack([*views, *patches]), sources)

    def _view(self, image: Image.Image, which: int) -> torch.Tensor:
        """Global view `which` (1 or 2), or (decoded) its parameter row."""
        if self.decoded:
            return draw_view_params(self.views, which, image.height, image.width)
        return self.global_views[which - 1](image)

    def _inter_boxes(self, index: int, intra: tuple[Box, Box],
                     image: Image.Image) -> tuple[Image.Image, tuple[Box, Box]]:
        """A uniform neighbour among those with pairs, then a uniform pair: the neighbour's
        image and the (query box, neighbour box); the intra pair when there is none."""
        usable = self.usable[index]
        if not usable:
            return image, intra
        k = usable[_randint(len(usable))]
        pairs = self.pairs[index][k]
        query, other = (int(v) for v in pairs[_randint(len(pairs))])
        neighbour = int(self.knn[index, k])
        try:
            other_image = read_rgb(self.paths[neighbour])
        except UnreadableImageError:
            return image, intra
        return (other_image,
                (tuple(self.boxes[index][query].tolist()), tuple(self.boxes[neighbour][other].tolist())))

    def _patch(self, image: Image.Image, box: Box, which: int) -> torch.Tensor:
        """Crop-and-resize, then the photometric chain with view `which` (1 or 2) probabilities;
        or (decoded) its parameter row."""
        if self.decoded:
            return draw_patch_params(self.views, which, box, *image.size)
        return self.patch_views[which](crop_resize(image, box, self.patch_size))
