"""Datasets and sampling for pretraining: image lists turned into views, resumable mid-epoch."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Iterator

import torch
from PIL import Image
from torch.utils.data import Dataset, Sampler, default_collate

from orl_bench.data.batched_views import DecodedViews
from orl_bench.data.images import UnreadableImageError, read_rgb
from orl_bench.data.views import seeded_call


class ViewsDataset(Dataset):
    """Indexed by sampler keys (epoch * N + index); returns (index, sample), the sample None if
    the image is unreadable. The sample is drawn under the RNG of (seed, key), so it depends on
    nothing else. Datasets whose samples need more than the image override `sample`."""

    def __init__(self, paths: list[Path], transform: Callable[[Any], Any] | None, seed: int):
        self.paths = [Path(p) for p in paths]
        self.transform = transform
        self.seed = seed

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, key: int) -> tuple[int, Any] | tuple[int, None]:
        index = key % len(self.paths)
        try:
            image = read_rgb(self.paths[index])
        except UnreadableImageError:
            return index, None
        return index, seeded_call(self.seed, key, lambda: self.sample(index, image))

    def sample(self, index: int, image: Image.Image) -> Any:
        return self.transform(image)


def collate_skipping_unreadable(samples: list[tuple[int, Any]]) -> tuple[Any, list[int]]:
    """Batch the readable samples; return the indices of unreadable ones so they get counted."""
    good = [s for _, s in samples if s is not None]
    bad = [i for i, s in samples if s is None]
    if not good:
        return None, bad
    return (DecodedViews.collate(good) if isinstance(good[0], DecodedViews) else default_collate(good)), bad


class EpochSampler(Sampler[int]):
    """Deterministic per-epoch permutation, sharded over ranks, restartable at any step.

    Each global step takes `batch_size * world_size` consecutive entries of the epoch's
    permutation; rank r takes its slice. The last incomplete global batch is dropped.
    """

    def __init__(self, num_images: int, batch_size: int, seed: int, rank: int = 0, world_size: int = 1):
        self.num_images = num_images
        self.batch_size = batch_size
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.steps_per_epoch = num_images // (batch_size * world_size)
        if self.steps_per_epoch == 0:
            raise ValueError(f"{num_images} images cannot fill one global batch of "
                             f"{batch_size * world_size}; lower train.batch_size")
        self.epoch = 0
        self.start_step = 0

    def set_epoch(self, epoch: int, start_step: int = 0) -> None:
        self.epoch, self.start_step = epoch, start_step

    def __iter__(self) -> Iterator[int]:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        perm = torch.randperm(self.num_images, generator=g)
        b, w = self.batch_size, self.world_size
        offset = self.epoch * self.num_images
        for step in range(self.start_step, self.steps_per_epoch):
            start = (step * w + self.rank) * b
            for index in perm[start:start + b].tolist():
                yield offset + index

    def __len__(self) -> int:
        return (self.steps_per_epoch - self.start_step) * self.batch_size

