"""The embedded classification sets' designs: their classes, per-class counts, file names, the scene
each image shows, and the index files of the real formats (synth_classify.py renders and writes them).

The default designs (issue 29; results/embedded/classify_search.md) carry the class in what
representation learning should capture, not in low-level statistics an untrained network reads:

- every set: each image's colours jittered as SSL views are (brightness, contrast, saturation +-60%,
  hue +-0.15), so a category's grey levels no longer name it.
- imagenet, iconic: one class per scene category; each image holds one large object of its class
  near the centre and, half the time, one small distractor of another category in front of it.
- places205, scene types by what they hold: type t's scenes draw their objects (scene sizes and
  places, the background per image) from the 3 categories from 2t on, so neighbouring types share
  one and no single object names a type (a kitchen is told from a bathroom by what co-occurs).
  `scene_types: layout` gives the first design: a layout rule, a background and a category group.
- inat18, fine-grained and long-tailed: a species is a category with a marking, a small object of
  the next or the one after on its upper left (a part's shape at a fixed place); iconic images like
  imagenet's; train counts decay as (rank + 1)^-0.8 over a seeded shuffle of the species, down to
  `min_train_per_class`. `species_axis` offers the other designs measured (size, period, hue or
  texture variants).

"""
from __future__ import annotations

import hashlib
import json
import zlib
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from orl_bench.data.synth import SynthSpec
from orl_bench.data.synth_scene import TEXTURES, ObjectPlan, ScenePlan, category_names, category_table

if TYPE_CHECKING:
    from orl_bench.data.synth_classify import EmbeddedClassSpec

CLASSIFY_VERSION = 2  # bump when the output changes for unchanged specs: new cache key (2: the designs of issue 29)
SUBSET_FRACTIONS = {"1percent": 0.01, "10percent": 0.1}  # SimCLR's ImageNet subsets
TAIL_EXPONENT = 0.8

# iconic images: the labelled object fills most of the frame, a distractor stays small
_DOMINANT_SIZE = (0.55, 0.8)
_CENTRE = ((0.42, 0.58), (0.42, 0.58))
_DISTRACTOR_SIZE = (0.15, 0.3)
_DISTRACTOR_RATE = 0.5


@dataclass(frozen=True)
class Item:
    """One image to render."""
    index: int  # position in its split: names its random stream
    label: int  # the generator's class index
    relpath: str  # where it is written, relative to the dataset root


def _hex_name(dataset: str, split: str, index: int) -> str:
    """A 32-hex-digit file stem, as the real Places205 and iNat18 names are."""
    return hashlib.sha256(f"{dataset}/{split}/{index}".encode()).hexdigest()[:32]


def _iconic(rng, category: int, n: int, dominant: ObjectPlan | None = None) -> ScenePlan:
    """One large centred object of `category` (or the given one), then 0-1 small distractors of
    other categories, drawn in front of it and away from its centre."""
    objects = [dominant or ObjectPlan(category, _DOMINANT_SIZE, _CENTRE)]
    if n > 1 and rng.uniform() < _DISTRACTOR_RATE:
        objects.append(ObjectPlan(int(category + 1 + rng.integers(n - 1)) % n, _DISTRACTOR_SIZE))
    return ScenePlan(tuple(objects))


class _Embedded:
    """One dataset's classes, per-class counts, file names, scene plans and index files."""
    name: str
    iconic = True  # a plan's first object is the labelled one (placement moves it)

    def keeps_hue(self) -> bool:
        """Whether the colour jitter must leave hue alone (it tells the classes apart)."""
        return False

    def __init__(self, spec: SynthSpec, embedded: EmbeddedClassSpec):
        self.spec, self.embedded = spec, embedded

    def class_names(self) -> list[str]:
        raise NotImplementedError

    def counts(self, split: str) -> list[int]:
        n = len(self.class_names())
        return [self.embedded.train_per_class if split == "train" else self.embedded.val_per_class] * n

    def relpath(self, split: str, index: int, label: int) -> str:
        raise NotImplementedError

    def plan(self, rng: np.random.Generator, label: int) -> ScenePlan:
        raise NotImplementedError

    def write_index(self, root: Path, items: dict[str, list[Item]]) -> None:
        raise NotImplementedError

    def items(self, split: str) -> list[Item]:
        """Class by class, in class index order."""
        labels = [k for k, count in enumerate(self.counts(split)) for _ in range(count)]
        return [Item(i, k, self.relpath(split, i, k)) for i, k in enumerate(labels)]


class _ImageNet(_Embedded):
    name = "imagenet"

    def class_names(self) -> list[str]:
        return category_names(self.spec.num_categories)

    def relpath(self, split: str, index: int, label: int) -> str:
        cls = self.class_names()[label]
        return f"{split}/{cls}/{cls}_{index:06d}.JPEG"

    def plan(self, rng, label: int) -> ScenePlan:
        return _iconic(rng, label, self.spec.num_categories)

    def write_index(self, root: Path, items: dict[str, list[Item]]) -> None:
        """The subset lists: per class max(1, round(fraction x its count)) train images, drawn
        without replacement by a generator seeded with (seed, subset name)."""
        folder = root / "imagenet_subsets"
        folder.mkdir()
        for subset, fraction in SUBSET_FRACTIONS.items():
            rng = np.random.default_rng([self.spec.seed, zlib.crc32(f"imagenet/{subset}".encode())])
            lines = []
            for k in range(len(self.class_names())):
                names = [Path(it.relpath).name for it in items["train"] if it.label == k]
                pick = rng.choice(len(names), max(1, round(fraction * len(names))), replace=False)
                lines += [f"{names[i]}\n" for i in sorted(pick)]
            (folder / f"{subset}.txt").write_text("".join(lines))


@dataclass(frozen=True)
class _SceneType:
    name: str  # Places205-style "<first letter>/<name>"
    layout: str
    background: str
    group: int  # which of the four overlapping category groups


# Invented names in sorted order, so the labels follow the class names' order as the real list's do.
# No two types share all three rules; each category group serves 2-3 types and each background 2-3.
_SCENE_TYPES = (
    _SceneType("a/avlo", "row", "bright", 0),
    _SceneType("b/bruna", "row", "dark", 1),
    _SceneType("c/corvel", "column", "plain", 2),
    _SceneType("d/dunmar", "cluster", "bright", 1),
    _SceneType("f/fessik", "cluster", "dark", 3),
    _SceneType("g/gorrin", "spread", "lit_above", 0),
    _SceneType("k/kelva", "spread", "plain", 2),
    _SceneType("m/miradel", "diagonal", "dark", 0),
    _SceneType("p/pontiq", "centre", "lit_above", 3),
    _SceneType("t/tovan", "centre", "bright", 2),
)
_PLACES_IMAGES = "images256"  # the CSV files' relpaths are relative to it
_LINE_SIZE = (0.2, 0.28)  # three in a line fit without overlapping (spacing 1/3)
_JITTER = 0.03  # how far a lined-up centre strays (share of the side)


def _box(x: float, y: float, jitter: float = _JITTER) -> tuple[tuple[float, float], tuple[float, float]]:
    return (x - jitter, x + jitter), (y - jitter, y + jitter)


def _layout(rng, layout: str) -> list[tuple[tuple[float, float], tuple | None]]:
    """(size, region) of each object of a layout, back to front."""
    if layout in ("row", "column"):
        across, steps = rng.uniform(0.3, 0.7), [(j + 0.5) / 3 for j in range(3)]
        return [(_LINE_SIZE, _box(s, across) if layout == "row" else _box(across, s)) for s in steps]
    if layout == "diagonal":
        rising = rng.uniform() < 0.5  # either diagonal: the rule is "along a diagonal"
        return [(_LINE_SIZE, _box(t, 1 - t if rising else t)) for t in (0.2, 0.5, 0.8)]
    if layout == "cluster":
        xs, ys = (((0.08, 0.4), (0.6, 0.92))[int(b)] for b in rng.integers(2, size=2))
        return [((0.16, 0.24), (xs, ys))] * 3
    if layout == "spread":
        return [((0.14, 0.24), None)] * 4
    if layout == "centre":
        return [((0.45, 0.6), _CENTRE)] + [((0.12, 0.18), None)] * 2
    raise ValueError(f"unknown layout {layout!r}")


_BACKGROUNDS = ("plain", "bright", "dark", "lit_above")


def _backdrop_shift(rng, background: str):
    a = rng.uniform(45, 75)
    return {"plain": None, "bright": ((a, a), (a, a)), "dark": ((-a, -a), (-a, -a)),
            "lit_above": ((a, a), (-a, -a))}[background]


def _category_group(g: int, n: int) -> list[int]:
    """Half the categories, starting a quarter further round for each group: neighbours share half."""
    return sorted({(g * n // 4 + t) % n for t in range(max(1, n // 2))})


class _Places205(_Embedded):
    name = "places205"
    iconic = False

    def class_names(self) -> list[str]:
        return [t.name for t in _SCENE_TYPES]

    def relpath(self, split: str, index: int, label: int) -> str:
        return f"{_PLACES_IMAGES}/{_SCENE_TYPES[label].name}/gsun_{_hex_name(self.name, split, index)}.jpg"

    def plan(self, rng, label: int) -> ScenePlan:
        kind, n = _SCENE_TYPES[label], self.spec.num_categories
        if self.embedded.scene_types == "objects":
            count = int(rng.integers(self.spec.min_objects, self.spec.max_objects + 1))
            k = self.embedded.type_categories
            objects = tuple(ObjectPlan(int((2 * label + rng.integers(k)) % n), tuple(self.spec.object_size))
                            for _ in range(count))
        else:
            group = _category_group(kind.group, n)
            objects = tuple(ObjectPlan(int(rng.choice(group)), size, region)
                            for size, region in _layout(rng, kind.layout))
        background = kind.background if self.embedded.scene_backdrop == "type" else \
            _BACKGROUNDS[int(rng.integers(len(_BACKGROUNDS)))]
        return ScenePlan(objects, _backdrop_shift(rng, background))

    def write_index(self, root: Path, items: dict[str, list[Item]]) -> None:
        folder = root / "trainvalsplit_places205"
        folder.mkdir()
        for split, listed in items.items():
            lines = (f"{it.relpath.removeprefix(_PLACES_IMAGES + '/')} {it.label}\n" for it in listed)
            (folder / f"{split}_places205.csv").write_text("".join(lines))


VARIANTS = 3  # at most: a category's species are its first species_per_category variants
_AXES = ("size", "period", "hue")  # category k's species differ along _AXES[k % 3] ...
_PERIODLESS = ("solid", "rays", "halves")  # ... or in hue, where the texture has no period
_SIZE_BANDS = ((0.42, 0.52), (0.57, 0.67), (0.72, 0.82))
_PERIOD_SCALES = (0.6, 1.0, 1.6)
_HUE_STEP, _HUE_HALF_WIDTH = 0.15, 0.04  # variants' hue bands: 0.15 turns apart, 0.08 wide
_HUE_SATURATION = (0.3, 0.45)  # enough colour to see the hue, still far from a colour-coded class
# marking species: a part's shape and place on the body tell them apart (as a bird's markings do)
_MARKING_SIZE = (0.18, 0.24)
_MARKING_PLACE = ((0.3, 0.36), (0.3, 0.36))  # on the dominant's upper left wherever its centre falls


@dataclass(frozen=True)
class _Species:
    category: int
    variant: int
    axis: str


class _INat18(_Embedded):
    name = "inat18"

    def keeps_hue(self) -> bool:
        return self.embedded.species_axis == "hue"

    def species(self) -> list[_Species]:
        """Category-major: species id = species_per_category x category + variant."""
        out = []
        for k, (texture, _) in enumerate(category_table(self.spec.num_categories)):
            axis = _AXES[k % len(_AXES)]
            axis = "hue" if axis == "period" and texture in _PERIODLESS else axis
            axis = axis if self.embedded.species_axis == "variant" else self.embedded.species_axis
            out += [_Species(k, v, axis) for v in range(self.embedded.species_per_category)]
        return out

    def class_names(self) -> list[str]:
        cats = category_names(self.spec.num_categories)
        return [f"{cats[s.category]}_{s.axis}{s.variant}" for s in self.species()]

    def counts(self, split: str) -> list[int]:
        if split == "val":
            return super().counts(split)
        e = self.embedded
        order = np.random.default_rng([self.spec.seed, zlib.crc32(b"inat18/tail")]).permutation(len(self.species()))
        counts = [0] * len(order)
        for rank, species in enumerate(order.tolist()):
            counts[species] = max(e.min_train_per_class, round(e.train_per_class * (rank + 1) ** -TAIL_EXPONENT))
        return counts

    def relpath(self, split: str, index: int, label: int) -> str:
        shape = category_table(self.spec.num_categories)[self.species()[label].category][1]
        return f"train_val2018/{shape}/{label}/{_hex_name(self.name, split, index)}.jpg"

    def plan(self, rng, label: int) -> ScenePlan:
        s = self.species()[label]
        if s.axis == "marking":  # a small object of the next categories on the dominant's upper left
            marking = ObjectPlan((s.category + 1 + s.variant) % self.spec.num_categories, _MARKING_SIZE, _MARKING_PLACE)
            plan = _iconic(rng, s.category, self.spec.num_categories)
            return replace(plan, objects=(plan.objects[0], marking, *plan.objects[1:]))
        if s.axis == "texture":  # its category's own texture, then 3 and 6 further along TEXTURES
            own = TEXTURES.index(category_table(self.spec.num_categories)[s.category][0])
            dominant = ObjectPlan(s.category, _DOMINANT_SIZE, _CENTRE, texture=TEXTURES[(own + 3 * s.variant) % len(TEXTURES)])
        elif s.axis == "size":
            dominant = ObjectPlan(s.category, _SIZE_BANDS[s.variant], _CENTRE)
        elif s.axis == "period":
            dominant = ObjectPlan(s.category, _DOMINANT_SIZE, _CENTRE, period_scale=_PERIOD_SCALES[s.variant])
        else:  # a per-category base hue (golden-ratio steps), so a hue band alone names no variant
            hue = (s.category * 0.618034 + s.variant * _HUE_STEP) % 1.0
            dominant = ObjectPlan(s.category, _DOMINANT_SIZE, _CENTRE, (hue - _HUE_HALF_WIDTH, hue + _HUE_HALF_WIDTH),
                                  _HUE_SATURATION)
        return _iconic(rng, s.category, self.spec.num_categories, dominant)

    def write_index(self, root: Path, items: dict[str, list[Item]]) -> None:
        table = category_table(self.spec.num_categories)
        categories = [{"id": k, "name": name, "supercategory": table[s.category][1]}
                      for k, (name, s) in enumerate(zip(self.class_names(), self.species()))]
        first_id = 0  # image ids run on from train into val, as in the real files
        for split, listed in items.items():
            images = [{"id": first_id + it.index, "file_name": it.relpath, "width": self.spec.width,
                       "height": self.spec.height} for it in listed]
            annotations = [{"id": first_id + it.index, "image_id": first_id + it.index, "category_id": it.label}
                           for it in listed]
            data = {"info": {"description": "orl-bench embedded iNat18-style species",
                             "version": str(CLASSIFY_VERSION)},
                    "images": images, "annotations": annotations, "categories": categories}
            (root / f"{split}2018.json").write_text(json.dumps(data, separators=(",", ":")))
            first_id += len(listed)


SETS: dict[str, type[_Embedded]] = {c.name: c for c in (_ImageNet, _Places205, _INat18)}
