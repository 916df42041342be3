"""Class-folder datasets (ImageNet's layout): `<root>/<split>/<class>/<image>`.

Classes are the sub-folder names in sorted order (torchvision's ImageFolder convention, so class
indices agree with it); images are found recursively and sorted, so the image list is the same
on every machine. Files are not opened here; `images.read_rgb` reports unreadable ones.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from orl_bench.data.images import DatasetLayoutError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")


def _layout(root: Path, split: str) -> str:
    return (f"expected class folders:\n  {root}/\n    {split}/\n      n01440764/    <- one folder per class\n"
            f"        n01440764_10026.JPEG ...")


def class_names(root: Path, split: str) -> list[str]:
    """The class folders of a split, sorted, without listing their images; DatasetLayoutError when
    the split folder is missing or holds none."""
    split_dir = Path(root) / split
    if not split_dir.is_dir():
        raise DatasetLayoutError(f"class-folder dataset: {split_dir} does not exist; {_layout(Path(root), split)}")
    classes = sorted(d.name for d in split_dir.iterdir() if d.is_dir())
    if not classes:
        raise DatasetLayoutError(f"class-folder dataset: {split_dir} holds no class folders; "
                                 f"{_layout(Path(root), split)}")
    return classes


class ClassFolders:
    """One split: `paths` (sorted within each class), `targets` (class index per image), `classes`."""

    def __init__(self, root: Path, split: str = "train"):
        self.root, self.split = Path(root), split
        split_dir = self.root / split
        self.classes = class_names(self.root, split)
        self.paths: list[Path] = []
        targets = []
        for k, name in enumerate(self.classes):
            files = sorted(p for p in (split_dir / name).rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
            self.paths += files
            targets += [k] * len(files)
        if not self.paths:
            raise DatasetLayoutError(f"class-folder dataset: no images ({', '.join(IMAGE_SUFFIXES)}) under "
                                     f"{split_dir}; {_layout(self.root, split)}")
        self.targets = np.array(targets, np.int64)

    def __len__(self) -> int:
        return len(self.paths)
