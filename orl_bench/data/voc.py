"""PASCAL VOC2007 classification labels (docs/protocols.md 5.1) and boxes from its standard layout."""
from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from orl_bench.data.images import DatasetLayoutError

SPLITS = ("trainval", "train", "val", "test")

_LAYOUT = """expected VOC2007 layout:
  <root>/VOCdevkit/VOC2007/      (root may also be VOCdevkit/ or VOC2007/ itself)
    JPEGImages/<id>.jpg
    Annotations/<id>.xml
    ImageSets/Main/<split>.txt            one image id per line
    ImageSets/Main/<class>_<split>.txt    optional, `<id> <1|-1|0>`; defines the class list"""


@dataclass(frozen=True)
class VocObject:
    name: str
    difficult: bool
    box: tuple[int, int, int, int]  # xmin, ymin, xmax, ymax as in the XML (1-based, inclusive)


def _resolve(root: Path) -> Path:
    for candidate in (root / "VOCdevkit" / "VOC2007", root / "VOC2007", root):
        if (candidate / "ImageSets").is_dir() or (candidate / "Annotations").is_dir():
            return candidate
    raise DatasetLayoutError(f"VOC2007 dataset not found under {root}; {_LAYOUT}")


def check_layout(root: Path, split: str) -> Path:
    """The VOC2007 folder under `root` once what reading `split` needs is there (its id list,
    Annotations/, JPEGImages/), without reading any of it; DatasetLayoutError names what is missing."""
    if split not in SPLITS:
        raise ValueError(f"VOC2007 split must be one of {SPLITS}, got {split!r}")
    voc = _resolve(Path(root))
    for path in (voc / "ImageSets" / "Main" / f"{split}.txt", voc / "Annotations", voc / "JPEGImages"):
        if not path.exists():
            raise DatasetLayoutError(f"VOC2007 dataset: {path} does not exist; {_LAYOUT}")
    return voc


def _parse(xml: Path) -> list[VocObject]:
    try:
        objects = []
        for obj in ET.parse(xml).getroot().iter("object"):
            bb = obj.find("bndbox")
            box = tuple(int(float(bb.find(k).text)) for k in ("xmin", "ymin", "xmax", "ymax"))
            difficult = obj.find("difficult")
            objects.append(VocObject(obj.find("name").text.strip(),
                                     difficult is not None and int(difficult.text) == 1, box))
        return objects
    except (ET.ParseError, AttributeError, TypeError, ValueError) as e:
        raise DatasetLayoutError(f"VOC annotation {xml} is malformed ({type(e).__name__}: {e}); "
                                 "expected <annotation> with <object> entries, each with <name>, "
                                 "<difficult> and <bndbox> xmin/ymin/xmax/ymax") from e


class VOC2007:
    """One VOC2007 split with image-level labels, images sorted by id.

    `root` is the folder holding `VOCdevkit`, the `VOCdevkit` folder, or `VOCdevkit/VOC2007`
    itself. The class list is read from the per-class files `ImageSets/Main/<class>_<split>.txt`
    (the 20 standard names on real VOC2007), sorted alphabetically; without them it falls back
    to the sorted names found in the split's XMLs. `labels[i, c]` is 1 if image i has a
    non-difficult instance of class c, -1 if it has only difficult ones (ignored by the SVM
    benchmark), 0 if none.
    """

    def __init__(self, root: Path, split: str):
        self.root = check_layout(root, split)
        self.split = split
        main = self.root / "ImageSets" / "Main"
        self.ids = sorted(line.strip() for line in (main / f"{split}.txt").read_text().splitlines()
                          if line.strip())
        self.paths = [self.root / "JPEGImages" / f"{i}.jpg" for i in self.ids]
        self.objects: list[list[VocObject]] = []
        for i in self.ids:
            xml = self.root / "Annotations" / f"{i}.xml"
            if not xml.is_file():
                raise DatasetLayoutError(f"VOC2007 {split}: annotation {xml} is missing; {_LAYOUT}")
            self.objects.append(_parse(xml))
        suffix = f"_{split}.txt"
        self.classes = sorted(p.name[:-len(suffix)] for p in main.glob(f"*{suffix}")) or \
            sorted({o.name for objs in self.objects for o in objs})
        column = {c: k for k, c in enumerate(self.classes)}
        self.labels = np.zeros((len(self.ids), len(self.classes)), np.int8)
        for row, objs in zip(self.labels, self.objects):
            for o in objs:
                if o.name not in column:
                    raise DatasetLayoutError(f"VOC2007 {split}: class {o.name!r} in an annotation "
                                             f"is not in the class list {self.classes} ({main})")
                k = column[o.name]
                row[k] = 1 if not o.difficult else (row[k] or -1)

    def __len__(self) -> int:
        return len(self.ids)
