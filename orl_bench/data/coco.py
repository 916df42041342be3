"""COCO-format scene datasets (train2017, val2017, unlabeled2017; COCO+ = train + unlabeled).

The position of an image in `CocoDataset.images` (the order of the JSON's `images` list) is the
"image list position" used downstream: kNN neighbour ids, stage-2 artifacts, feature caches.
Image files are not opened here; `images.read_rgb` reports unreadable ones when they are read.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from orl_bench.data.images import DatasetLayoutError


@dataclass(frozen=True)
class CocoImage:
    id: int
    file_name: str
    path: Path
    width: int
    height: int


def _annotation_name(split: str) -> str:
    if split == "unlabeled2017":
        return "image_info_unlabeled2017.json"
    return f"instances_{split}.json"


def _layout(root: Path, split: str) -> str:
    return (f"expected COCO layout:\n  {root}/\n    {split}/    <- images, e.g. 000000000009.jpg\n"
            f"    annotations/\n      {_annotation_name(split)}")


def check_layout(root: Path, split: str, ann_file: Path | None = None) -> Path:
    """The annotation file of a split (`ann_file`, else its standard path) once it and the split's
    image folder are there, without reading either; DatasetLayoutError names what is missing."""
    ann_file = Path(ann_file) if ann_file else Path(root) / "annotations" / _annotation_name(split)
    for path in (Path(root), Path(root) / split, ann_file):
        if not path.exists():
            raise DatasetLayoutError(f"COCO dataset: {path} does not exist; {_layout(Path(root), split)}")
    return ann_file


class CocoDataset:
    """One COCO split: `<root>/<split>/*.jpg` and `<root>/annotations/instances_<split>.json`
    (`image_info_unlabeled2017.json` for unlabeled2017, which has no annotations).
    `ann_file` overrides the annotation path; the images are still read from `<root>/<split>`."""

    def __init__(self, root: Path, split: str = "train2017", ann_file: Path | None = None):
        self.root, self.split = Path(root), split
        image_dir = self.root / split
        self.ann_file = check_layout(self.root, split, ann_file)
        try:
            data = json.loads(self.ann_file.read_text())
            self.images = [CocoImage(int(im["id"]), im["file_name"], image_dir / im["file_name"],
                                     int(im["width"]), int(im["height"])) for im in data["images"]]
            self.categories = sorted(({"id": int(c["id"]), "name": c["name"]}
                                      for c in data.get("categories", [])), key=lambda c: c["id"])
            position = {im.id: i for i, im in enumerate(self.images)}
            self._anns: list[list[dict]] = [[] for _ in self.images]
            for ann in data.get("annotations", []):
                self._anns[position[ann["image_id"]]].append(ann)
        except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError, ValueError) as e:
            raise DatasetLayoutError(
                f"COCO annotation file {self.ann_file} is malformed ({type(e).__name__}: {e}); "
                "expected a JSON object with `images` [{id, file_name, width, height}], optional "
                "`categories` [{id, name}] and `annotations` [{image_id, category_id, bbox, "
                "iscrowd}] whose image_id appears in `images`") from e

    def __len__(self) -> int:
        return len(self.images)

    def annotations(self, i: int) -> list[dict]:
        """Raw annotation dicts of the image at position i, crowd regions included."""
        return self._anns[i]

    def _objects(self, i: int) -> list[dict]:
        return [a for a in self._anns[i] if not a.get("iscrowd", 0)]

    def boxes(self, i: int) -> np.ndarray:
        """(n, 4) float32 xywh boxes in pixels of the non-crowd objects of image i."""
        return np.array([a["bbox"] for a in self._objects(i)], np.float32).reshape(-1, 4)

    def category_ids(self, i: int) -> np.ndarray:
        """(n,) int64 category ids, aligned with `boxes(i)`."""
        return np.array([a["category_id"] for a in self._objects(i)], np.int64)


def category_matrix(splits: list[CocoDataset]) -> np.ndarray:
    """(N, C) bool over the images of `splits` in order: image i holds a non-crowd object of
    category c, the columns being the declared and used category ids, ascending."""
    per_image = [s.category_ids(i) for s in splits for i in range(len(s))]
    declared = [c["id"] for s in splits for c in s.categories]
    ids = np.unique(np.concatenate(per_image + [np.array(declared, np.int64)]))
    labels = np.zeros((len(per_image), len(ids)), bool)
    for row, categories in zip(labels, per_image, strict=True):
        row[np.searchsorted(ids, categories)] = True
    return labels


def coco_plus(root: Path) -> list[CocoDataset]:
    """COCO+ (the paper's larger pretraining set): train2017 then unlabeled2017. Image list
    positions run over the concatenation in this order."""
    return [CocoDataset(root, "train2017"), CocoDataset(root, "unlabeled2017")]
