"""Batched view augmentation: the views of `views.view_transform`, applied on the device.

The loader worker only decodes each image to a uint8 CHW tensor and draws every view's random
parameters (`draw_view_params`, cheap); `BatchedViews` then crops, resizes, flips, colour-jitters,
grays, blurs, solarizes and normalises the whole batch at once with per-sample parameters.
`draw_patch_params` describes a patch cut from a given box (ORL's RoI patches) in the same columns.

`draw_view_params` consumes torch's global RNG exactly as the PIL path does (same draws in the
same order, skipped where the PIL path skips them), so under `seeded_call` it yields the very
parameters `view_transform` would use: a resumed run, or one switched between the two paths, sees
the same views. The pixels agree within a tolerance only: this path works in float32 on [0, 1]
where the PIL path rounds to uint8 after every step, and it uses the approximations noted below.
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torchvision.ops import roi_align
from PIL import Image
from torchvision.transforms import ColorJitter, RandomResizedCrop, v2

from orl_bench.data.views import IMAGENET_MEAN, IMAGENET_STD, ViewParams, ViewSpec

PARAM_FIELDS: tuple[str, ...] = (
    "top", "left", "height", "width",  # the crop, in pixels of the image
    "flip",
    "jitter", "brightness", "contrast", "saturation", "hue",
    "order0", "order1", "order2", "order3",  # ColorJitter's fn_idx: which factor goes at each step
    "gray",
    "blur", "sigma",
    "solarize",
)
_COLUMN = {name: i for i, name in enumerate(PARAM_FIELDS)}
_JITTER_FACTORS = slice(_COLUMN["brightness"], _COLUMN["hue"] + 1)
_JITTER_ORDER = slice(_COLUMN["order0"], _COLUMN["order3"] + 1)
# Rows that skip a step keep neutral values there, so a row always describes a valid view.
_NEUTRAL_JITTER = (1.0, 1.0, 1.0, 0.0)
_IDENTITY_ORDER = (0.0, 1.0, 2.0, 3.0)
_HUE_STEP = 3  # ColorJitter's index of adjust_hue; 0-2 are brightness, contrast, saturation
_LUMA = (0.2989, 0.587, 0.114)  # ITU-R 601-2, torchvision's rgb_to_grayscale
_SOLARIZE_THRESHOLD = 128 / 255  # RandomSolarize(threshold=128) of the uint8 PIL path


def _coin(p: float) -> bool:
    # torchvision's RandomApply test: one draw, the step runs if it falls below p.
    return torch.rand(1).item() < p


@functools.lru_cache
def _jitter_ranges(color_jitter: tuple[float, float, float, float]) -> tuple[tuple[float, float] | None, ...]:
    # v2.ColorJitter's reading of the recipe: (min, max) per factor, None where it is disabled.
    jitter = v2.ColorJitter(*color_jitter)
    return jitter.brightness, jitter.contrast, jitter.saturation, jitter.hue


def _draw_photometric(p: ViewParams, which: int) -> list[float]:
    """The columns after the crop, drawn as `views.photometric` draws them for view `which`."""
    if which not in (1, 2):
        raise ValueError(f"view `which` must be 1 or 2, got {which}")
    flip = _coin(p.hflip_p)
    jitter = _coin(p.color_jitter_p)
    factors, order = _NEUTRAL_JITTER, _IDENTITY_ORDER  # a skipped jitter draws nothing more
    if jitter:
        fn_idx, *drawn = ColorJitter.get_params(*_jitter_ranges(p.color_jitter))
        factors = tuple(neutral if f is None else f for f, neutral in zip(drawn, _NEUTRAL_JITTER))
        order = tuple(float(i) for i in fn_idx.tolist())
    gray = _coin(p.grayscale_p)
    blur = _coin(p.blur_p[which - 1])
    sigma = torch.empty(1).uniform_(*p.blur_sigma).item() if blur else 0.0  # as views.GaussianBlur
    solarize = _coin(p.solarize_p[which - 1])
    return [flip, jitter, *factors, *order, gray, blur, sigma, solarize]


def draw_view_params(p: ViewParams, which: int, height: int, width: int) -> torch.Tensor:
    """The random parameters of view `which` (1 or 2) of a `height` x `width` image: one float64
    row with the columns of PARAM_FIELDS, drawn from torch's global RNG in the PIL path's order."""
    # get_params reads only the image size; an empty stand-in avoids allocating the image.
    crop = RandomResizedCrop.get_params(torch.empty(0, height, width), list(p.scale), list(p.ratio))
    return torch.tensor([*crop, *_draw_photometric(p, which)], dtype=torch.float64)


def pixel_box(box: tuple[float, float, float, float], width: int, height: int) -> tuple[int, int, int, int]:
    """The whole pixels (left, top, right, bottom) that a float (x, y, w, h) box crops from a
    `width` x `height` image: rounded, clipped to the image, at least 1 px a side."""
    x, y, w, h = box
    left, top = min(max(round(x), 0), width - 1), min(max(round(y), 0), height - 1)
    right, bottom = min(max(round(x + w), left + 1), width), min(max(round(y + h), top + 1), height)
    return left, top, right, bottom


def draw_patch_params(p: ViewParams, which: int, box: tuple[float, float, float, float], width: int,
                      height: int) -> torch.Tensor:
    """The parameters of a patch of `box` (x, y, w, h) of a `width` x `height` image, resized and
    then augmented with view `which`'s photometric chain (ORL's RoI patches): the row of
    `draw_view_params` with the box's pixels (`pixel_box`) as its crop, which draws nothing."""
    left, top, right, bottom = pixel_box(box, width, height)
    return torch.tensor([top, left, bottom - top, right - left, *_draw_photometric(p, which)], dtype=torch.float64)


def collate_padded(images: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 CHW images of any sizes -> (uint8 [B, 3, Hmax, Wmax] zero-padded at the bottom and
    right, int64 [B, 2] of each image's (h, w))."""
    if not images:
        raise ValueError("collate_padded needs at least one image")
    for k, image in enumerate(images):
        if image.dtype != torch.uint8 or image.ndim != 3 or image.shape[0] != 3:
            raise ValueError(f"collate_padded expects uint8 images of shape [3, h, w], got image {k} "
                             f"of dtype {image.dtype} and shape {list(image.shape)}")
    sizes = torch.tensor([image.shape[1:] for image in images], dtype=torch.int64)
    batch = images[0].new_zeros((len(images), 3, *sizes.max(dim=0).values.tolist()))
    for slot, image in zip(batch, images):
        slot[:, :image.shape[1], :image.shape[2]] = image
    return batch, sizes


def _per_sample(values: torch.Tensor) -> torch.Tensor:
    """[B] -> [B, 1, 1, 1], to broadcast one value per sample over CHW."""
    return values.view(-1, 1, 1, 1)


def _luma(x: torch.Tensor) -> torch.Tensor:
    """[B, 3, H, W] -> [B, 1, H, W] grayscale, with torchvision's weights."""
    r, g, b = x.unbind(dim=1)
    return (_LUMA[0] * r + _LUMA[1] * g + _LUMA[2] * b).unsqueeze(1)


def _blend(x: torch.Tensor, other: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    # torchvision's blend for float images, clamped after each step as it does.
    return (factor * x + (1 - factor) * other).clamp(0, 1)


def shift_hue(x: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """Rotate the HSV hue of RGB images [B, 3, H, W] in [0, 1] by `shift` [B] turns: torchvision's
    adjust_hue, with one factor per sample."""
    high, _ = x.max(dim=1, keepdim=True)
    low, _ = x.min(dim=1, keepdim=True)
    chroma = high - low
    r, g, b = x.split(1, dim=1)
    safe_chroma = torch.where(chroma > 0, chroma, torch.ones_like(chroma))  # grays get hue 0
    # Hue in sextants [0, 6); red wins ties, then green, as in torchvision (and PIL).
    sextant = torch.where(high == r, (g - b) / safe_chroma,
                          torch.where(high == g, (b - r) / safe_chroma + 2, (r - g) / safe_chroma + 4))
    sextant = torch.remainder(sextant + 6 * _per_sample(shift), 6)
    # HSV -> RGB: channel n (5 for red, 3 for green, 1 for blue) drops from the value by the chroma
    # in the part of the hue circle away from its own colour.
    n = torch.tensor([5.0, 3.0, 1.0], dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    k = torch.remainder(n + sextant, 6)
    return high - chroma * torch.minimum(k, 4 - k).clamp(0, 1)


def _gaussian_kernels(sigma: torch.Tensor, half: int) -> torch.Tensor:
    """[B] sigmas -> [B, 2 * half + 1] normalised 1-D Gaussian kernels."""
    offsets = torch.arange(-half, half + 1, dtype=sigma.dtype, device=sigma.device)
    weights = torch.exp(-0.5 * (offsets / sigma.unsqueeze(1)) ** 2)
    return weights / weights.sum(dim=1, keepdim=True)


def _blur(x: torch.Tensor, sigma: torch.Tensor, half: int) -> torch.Tensor:
    """Separable Gaussian blur of [B, C, H, W] with one sigma per sample, reflect-padded like
    torchvision's gaussian_blur: a grouped convolution over the B * C channels."""
    batch, channels, height, width = x.shape
    kernels = _gaussian_kernels(sigma, half).repeat_interleave(channels, dim=0)  # [B * C, k]
    planes = x.reshape(1, batch * channels, height, width)
    planes = F.conv2d(F.pad(planes, (half, half, 0, 0), mode="reflect"), kernels[:, None, None, :],
                      groups=batch * channels)
    planes = F.conv2d(F.pad(planes, (0, 0, half, half), mode="reflect"), kernels[:, None, :, None],
                      groups=batch * channels)
    return planes.view(batch, channels, height, width)


class BatchedViews(torch.nn.Module):
    """uint8 images [B, 3, H, W] (padded by `collate_padded`) and parameter rows [B, len(PARAM_FIELDS)]
    (from `draw_view_params` or `draw_patch_params`) -> normalised float32 views [B, 3, size, size],
    on the images' device; size is `p.size`. With `sources` [R], row r is a view of image sources[r]
    (views of several images of the batch, or several views of one, in one call).

    Where it differs from torchvision's per-image ops:
    - crop + resize is roi_align with adaptive sampling: ceil(crop / size) bilinear samples per
      output pixel are averaged, a box-like antialiasing filter where torchvision's (and PIL's)
      antialiased bilinear resize uses a triangle of the scale's width; the two agree exactly when
      the crop is not downscaled and closely otherwise.
    - the blur is a true Gaussian of the row's sigma with a kernel of 2 * ceil(3 * sigma_max) + 1
      taps (sigma_max: the recipe's largest sigma, so a view never depends on its batch; at most
      the view's size, which for ORL's patches is the patch size as on the PIL path); the
      default PIL path (blur="pil") uses PIL's GaussianBlur(radius=sigma), which approximates that
      same Gaussian by repeated box filters, and blur="kernel" truncates it to a tenth of the view.
    """

    def __init__(self, p: ViewParams):
        super().__init__()
        self.size = p.size
        # A kernel no wider than the view keeps the reflect padding valid.
        self.blur_half = min(math.ceil(3 * p.blur_sigma[1]), (p.size - 1) // 2)

    def forward(self, images: torch.Tensor, params: torch.Tensor, sources: torch.Tensor | None = None) -> torch.Tensor:
        if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"BatchedViews expects a uint8 image batch [B, 3, H, W], got dtype "
                             f"{images.dtype} and shape {list(images.shape)}")
        if params.ndim != 2 or params.shape[1] != len(PARAM_FIELDS):
            raise ValueError(f"BatchedViews expects params [B, {len(PARAM_FIELDS)}] with the columns "
                             f"{PARAM_FIELDS}, got shape {list(params.shape)}")
        if sources is not None:
            if sources.shape != params.shape[:1]:
                raise ValueError(f"BatchedViews expects one source image per params row: got sources of "
                                 f"shape {list(sources.shape)} for {params.shape[0]} rows")
            images = images[sources]
        if params.shape[0] != images.shape[0]:
            raise ValueError(f"BatchedViews expects one params row per image: got {params.shape[0]} rows "
                             f"for {images.shape[0]} images")
        # float32 before the copy: crop coordinates are exact in it, and some devices lack float64.
        params = params.float().to(images.device)
        column = {name: params[:, i] for name, i in _COLUMN.items()}

        x = self._crop_resize(images, params[:, :4]).div(255)
        x = torch.where(_per_sample(column["flip"] > 0), x.flip(-1), x)
        x = self._jitter(x, params, column["jitter"] > 0)
        x = torch.where(_per_sample(column["gray"] > 0), _luma(x).expand_as(x), x)
        # Rows that skip the blur have sigma 0: any positive value keeps their unused kernel finite.
        blurred = _blur(x, column["sigma"].clamp(min=1e-3), self.blur_half)
        x = torch.where(_per_sample(column["blur"] > 0), blurred, x)
        solarized = torch.where(x >= _SOLARIZE_THRESHOLD, 1 - x, x)
        x = torch.where(_per_sample(column["solarize"] > 0), solarized, x)
        # Built on the images' device, so the module works wherever the batch is without a .to().
        mean = torch.tensor(IMAGENET_MEAN, device=x.device).view(1, 3, 1, 1)
        std = torch.tensor(IMAGENET_STD, device=x.device).view(1, 3, 1, 1)
        return (x - mean) / std

    def _crop_resize(self, images: torch.Tensor, crops: torch.Tensor) -> torch.Tensor:
        """Crop each image to its (top, left, height, width) and resize to size x size, on [0, 255]."""
        batch, _, height, width = images.shape
        top, left, crop_h, crop_w = crops.round().long().unbind(dim=1)
        # Bilinear reads reach half a pixel past the crop; replicating the crop's edge there does
        # what resizing the cut-out crop does, and keeps the neighbours and the padding unread.
        rows = torch.arange(height, device=images.device).clamp(top[:, None], (top + crop_h - 1)[:, None])
        cols = torch.arange(width, device=images.device).clamp(left[:, None], (left + crop_w - 1)[:, None])
        x = images.gather(2, rows[:, None, :, None].expand(-1, 3, -1, width))
        x = x.gather(3, cols[:, None, None, :].expand(-1, 3, height, -1)).float()
        # Boxes on pixel edges, (x0, y0, x1, y1) = (left, top, left + width, top + height); with
        # aligned=True pixel k's centre is at k + 0.5, so an unscaled crop samples pixel centres.
        boxes = torch.stack([torch.arange(batch, device=images.device, dtype=x.dtype),
                             left.to(x.dtype), top.to(x.dtype), (left + crop_w).to(x.dtype),
                             (top + crop_h).to(x.dtype)], dim=1)
        return roi_align(x, boxes, output_size=self.size, spatial_scale=1.0, sampling_ratio=0, aligned=True)

    @staticmethod
    def _jitter(x: torch.Tensor, params: torch.Tensor, jittered: torch.Tensor) -> torch.Tensor:
        """ColorJitter where `jittered`, in each row's own order of brightness, contrast,
        saturation and hue."""
        factors = params[:, _JITTER_FACTORS]
        order = params[:, _JITTER_ORDER].long()
        for step in range(order.shape[1]):
            op = order[:, step]
            factor = factors.gather(1, op[:, None]).squeeze(1)
            # Brightness, contrast and saturation all blend with a target (black, the mean gray,
            # the gray image); a factor of 1 leaves the image exactly as it was.
            gray = _luma(x)
            target = torch.where(_per_sample(op == 0), torch.zeros_like(gray),
                                 torch.where(_per_sample(op == 1), gray.mean(dim=(1, 2, 3), keepdim=True),
                                             gray))
            blend_factor = torch.where(jittered & (op != _HUE_STEP), factor, torch.ones_like(factor))
            x = _blend(x, target, _per_sample(blend_factor))
            hue_rows = _per_sample(jittered & (op == _HUE_STEP))
            x = torch.where(hue_rows, shift_hue(x, torch.where(hue_rows.flatten(), factor, 0.0)), x)
        return x


@dataclass(frozen=True)
class DecodedViews:
    """What the loader hands over for `train.augment: device`: decoded image(s) and each view's
    parameter row. A sample holds uint8 [3, h, w] and [views, P]; a batch (`collate`) the padded
    uint8 [B, 3, H, W] and [B, views, P].

    A sample whose views read more than one image (ORL's inter patch, from a neighbour) holds a
    tuple of images and `sources` [views], which of them each view reads; its batch holds all the
    samples' images [N, 3, H, W] and `sources` [B, views] as indices into them."""
    images: torch.Tensor | tuple[torch.Tensor, ...]
    params: torch.Tensor
    sources: torch.Tensor | None = None  # None: every view reads the sample's one image

    @staticmethod
    def collate(samples: list[DecodedViews]) -> DecodedViews:
        params = torch.stack([s.params for s in samples])
        if samples[0].sources is None:
            images, _ = collate_padded([s.images for s in samples])
            return DecodedViews(images, params)
        # A sample's k-th image lands after the images of the samples before it.
        counts = torch.tensor([len(s.images) for s in samples])
        offsets = counts.cumsum(0) - counts
        images, _ = collate_padded([image for s in samples for image in s.images])
        return DecodedViews(images, params, torch.stack([s.sources for s in samples]) + offsets[:, None])

    def to(self, device: torch.device) -> DecodedViews:
        sources = None if self.sources is None else self.sources.to(device, non_blocking=True)
        return DecodedViews(self.images.to(device, non_blocking=True), self.params.to(device, non_blocking=True),
                            sources)


class DecodeAndDraw:
    """The loader's half: PIL image -> DecodedViews, drawing the views' parameters one view after
    the other as `views.views_of` does, so under the sample's seeded RNG they are the parameters
    the PIL path would use."""

    def __init__(self, specs: list[ViewSpec]):
        self.specs = specs

    def __call__(self, image: Image.Image) -> DecodedViews:
        pixels = v2.functional.pil_to_tensor(image)
        height, width = pixels.shape[1:]
        return DecodedViews(pixels, torch.stack([draw_view_params(p, which, height, width) for p, which in self.specs]))


class DeviceViews(torch.nn.Module):
    """The device's half: a DecodedViews batch -> one view batch per spec, as the PIL path's
    collated sample (NHWC when `channels_last`)."""

    def __init__(self, specs: list[ViewSpec], channels_last: bool):
        super().__init__()
        self.makers = torch.nn.ModuleList(BatchedViews(p) for p, _ in specs)
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format

    def forward(self, batch: DecodedViews) -> list[torch.Tensor]:
        if batch.params.shape[1] != len(self.makers):
            raise ValueError(f"expected {len(self.makers)} views' parameters per image, got {batch.params.shape[1]}")
        return [maker(batch.images, batch.params[:, k], None if batch.sources is None else batch.sources[:, k])
                .contiguous(memory_format=self.memory_format) for k, maker in enumerate(self.makers)]
