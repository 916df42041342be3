"""View augmentation recipes (docs/protocols.md 1) and the deterministic per-sample RNG they run under.

Every sample's randomness is derived from (seed, sample key), where the key encodes the epoch
and the image index. So a run resumed mid-epoch, or run with a different number of loader
workers, draws exactly the same views as an uninterrupted one.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Callable

import numpy as np
import torch
from PIL import Image, ImageFilter
from torchvision.transforms import v2

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class ViewParams:
    """One augmentation recipe; the two-element fields are (view 1, view 2) probabilities."""
    size: int = 224
    scale: tuple[float, float] = (0.08, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    hflip_p: float = 0.5
    color_jitter: tuple[float, float, float, float] = (0.4, 0.4, 0.2, 0.1)
    color_jitter_p: float = 0.8
    grayscale_p: float = 0.2
    blur_p: tuple[float, float] = (1.0, 0.1)
    blur_sigma: tuple[float, float] = (0.1, 2.0)
    # "pil": PIL's GaussianBlur with radius = sigma, as the official (OpenSelfSup) pipeline does;
    # "kernel": a true Gaussian kernel of 10% of the view side (torchvision), ~6x slower at 224 px.
    blur: str = "pil"
    solarize_p: tuple[float, float] = (0.0, 0.2)

    def __post_init__(self) -> None:
        if self.blur not in BLURS:
            raise ValueError(f"views.blur must be one of {BLURS}, got '{self.blur}'")


BLURS = ("pil", "kernel")


class GaussianBlur:
    """Blur a PIL image or a uint8 CHW tensor with sigma ~ U(sigma_min, sigma_max), drawn from
    torch's RNG; returns the same type."""

    def __init__(self, sigma: tuple[float, float], impl: str, size: int):
        self.sigma = sigma
        self.impl = impl
        self.kernel = 2 * round(0.05 * size) + 1  # 23 px at 224, BYOL's 10% of the view side

    def __call__(self, x: Image.Image | torch.Tensor) -> Image.Image | torch.Tensor:
        sigma = torch.empty(1).uniform_(*self.sigma).item()
        if self.impl == "kernel":
            return v2.functional.gaussian_blur(x, [self.kernel, self.kernel], [sigma, sigma])
        if isinstance(x, Image.Image):
            return x.filter(ImageFilter.GaussianBlur(radius=sigma))
        blurred = Image.fromarray(x.permute(1, 2, 0).numpy()).filter(ImageFilter.GaussianBlur(radius=sigma))
        return torch.from_numpy(np.array(blurred)).permute(2, 0, 1)


def normalize() -> v2.Transform:
    """PIL image or uint8 tensor -> float tensor normalised with ImageNet's statistics."""
    return v2.Compose([v2.PILToTensor(), v2.ToDtype(torch.float32, scale=True),
                       v2.Normalize(IMAGENET_MEAN, IMAGENET_STD)])


def photometric(p: ViewParams, which: int, size: int,
                blur: Callable[[Any], Any] | None = None) -> list[v2.Transform]:
    """Flip, colour, grayscale, blur, solarize with view `which` (1 or 2) probabilities; `blur`
    replaces the Gaussian blur at the same probability (SCRL's resize blur). Works on PIL images
    (as the official pipeline does, and 1.4-1.9x faster than on tensors at 32-224 px, one thread:
    results/perf/view_ops.json) and on uint8 tensors."""
    i = which - 1
    return [
        v2.RandomHorizontalFlip(p.hflip_p),
        v2.RandomApply([v2.ColorJitter(*p.color_jitter)], p=p.color_jitter_p),
        v2.RandomGrayscale(p.grayscale_p),
        v2.RandomApply([blur or GaussianBlur(p.blur_sigma, p.blur, size)], p=p.blur_p[i]),
        v2.RandomSolarize(threshold=128, p=p.solarize_p[i]),
    ]


def view_transform(p: ViewParams, which: int) -> v2.Compose:
    """PIL image -> normalised float tensor: RandomResizedCrop then the photometric chain, on PIL."""
    return v2.Compose([
        v2.RandomResizedCrop(p.size, scale=p.scale, ratio=p.ratio,
                             interpolation=v2.InterpolationMode.BILINEAR, antialias=True),
        *photometric(p, which, p.size),
        normalize(),
    ])


class MultiView:
    """Apply several transforms to one image: what one sample turns into."""

    def __init__(self, *transforms: Callable[[Any], torch.Tensor]):
        self.transforms = transforms

    def __call__(self, image: Any) -> tuple[torch.Tensor, ...]:
        return tuple(t(image) for t in self.transforms)


ViewSpec = tuple[ViewParams, int]  # a view's recipe and which of its two probability sets (1 or 2)


def two_view_specs(p: ViewParams) -> list[ViewSpec]:
    """The two views of BYOL-style methods: view 1 and view 2 of one recipe."""
    return [(p, 1), (p, 2)]


def views_of(specs: list[ViewSpec]) -> MultiView:
    """PIL image -> one view per spec, in order."""
    return MultiView(*(view_transform(p, which) for p, which in specs))


def two_views(p: ViewParams) -> MultiView:
    return views_of(two_view_specs(p))


def sample_seed(seed: int, key: int) -> int:
    """A well-mixed 63-bit seed for one sample (SplitMix64 finaliser over seed and key)."""
    z = (seed * 0x9E3779B97F4A7C15 + key + 1) & 0xFFFFFFFFFFFFFFFF
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & 0xFFFFFFFFFFFFFFFF
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & 0xFFFFFFFFFFFFFFFF
    return (z ^ (z >> 31)) >> 1


def seeded_call(seed: int, key: int, fn: Callable[[], Any]) -> Any:
    """Run `fn` under torch's global CPU RNG seeded for this sample, restoring the RNG afterwards.
    The CPU generator is seeded directly: the same stream as torch.manual_seed, but 4 us per
    sample where fork_rng + manual_seed (which visits every device backend) took 315 us, about a
    tenth of a 64 px two-view sample's cost on the loader (benchmarks/perf/peer_lightly.py)."""
    state = torch.get_rng_state()
    torch.default_generator.manual_seed(sample_seed(seed, key))
    try:
        return fn()
    finally:
        torch.set_rng_state(state)


@dataclass(frozen=True)
class MultiCropViews(ViewParams):
    """Multi-crop (SwAV): `global_crops` views of `size` px at `scale`, then `local_crops` views of
    `local_size` px at `local_scale`, each with the photometric chain. Crop k uses the view-(k % 2 + 1)
    probabilities: the global crops are BYOL's view 1 and view 2, and the local crops alternate the
    two as ORL's patch pairs do. The scales are SwAV's: local crops cover 5-14% of the image and
    global crops the rest of the range."""
    scale: tuple[float, float] = (0.14, 1.0)
    global_crops: int = 2
    local_crops: int = 4
    local_size: int = 96
    local_scale: tuple[float, float] = (0.05, 0.14)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.global_crops < 1 or self.local_crops < 0:
            raise ValueError(f"views need global_crops >= 1 and local_crops >= 0, got {self.global_crops} "
                             f"and {self.local_crops}")
        if self.local_size < 1:
            raise ValueError(f"views.local_size must be >= 1, got {self.local_size}")


def multi_crop_specs(p: MultiCropViews) -> list[ViewSpec]:
    """The global crops, then the local crops (MultiCropViews)."""
    local = replace(p, size=p.local_size, scale=p.local_scale)
    return [(p, k % 2 + 1) for k in range(p.global_crops)] + [(local, k % 2 + 1) for k in range(p.local_crops)]


def multi_crop_transform(p: MultiCropViews) -> MultiView:
    return views_of(multi_crop_specs(p))
