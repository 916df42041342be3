"""The embedded classification sets, rendered by the scene generator and written in the real formats
of ImageNet, Places205 and iNaturalist 2018.

`ensure_embedded(dataset, spec, embedded, cache_root)` returns
`<cache_root>/synth-<spec digest>-<dataset>-<embedded digest>` holding

    imagenet:   train/<class>/<class>_<index>.JPEG, val/<class>/...      class folders
                imagenet_subsets/1percent.txt, 10percent.txt           SimCLR's subset lists
    places205:  images256/<l>/<type>/gsun_<hex>.jpg
                trainvalsplit_places205/train_places205.csv, val_places205.csv
    inat18:     train_val2018/<shape>/<species id>/<hex>.jpg, train2018.json, val2018.json
    spec.json

so that the loaders in classification.py read them exactly as they read the real datasets.

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

Everything else (style, image size, seed, categories) is the SynthSpec's. Image `index` of a split
draws from `image_rng(spec, "<dataset>/<split>", index)` alone, so the files are byte-identical
for any number of workers.
"""
from __future__ import annotations

import hashlib
import json
import multiprocessing
import zlib
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import cv2
import numpy as np

from orl_bench.config import to_dict
from orl_bench.data.synth import _JPEG_QUALITY, SynthSpec, build_once, image_rng
from orl_bench.data.synth_scene import (TEXTURES, ObjectPlan, ScenePlan, SceneStyle, category_names, category_table,
                                        render_scene)

CLASSIFY_VERSION = 2  # bump when the output changes for unchanged specs: new cache key (2: the designs of issue 29)
SPLITS = ("train", "val")
SUBSET_FRACTIONS = {"1percent": 0.01, "10percent": 0.1}  # SimCLR's ImageNet subsets
TAIL_EXPONENT = 0.8
_CHUNK = 64  # images per worker task

# iconic images: the labelled object fills most of the frame, a distractor stays small
_DOMINANT_SIZE = (0.55, 0.8)
_CENTRE = ((0.42, 0.58), (0.42, 0.58))
_DISTRACTOR_SIZE = (0.15, 0.3)
_DISTRACTOR_RATE = 0.5


@dataclass(frozen=True)
class EmbeddedClassSpec:
    """Sizes of an embedded classification set; the look (style, seed, image size, categories)
    comes from data.synth (SynthSpec)."""
    train_per_class: int = 100  # inat18: the head class; the tail decays toward min_train_per_class
    val_per_class: int = 25
    min_train_per_class: int = 5  # inat18 only
    # How the planned objects look. The scenes give every instance of a category its category's grey
    # levels and texture period, which an untrained network reads off its first layer; here they can
    # be drawn per instance. SceneStyle's meanings; None keeps the scenes' value.
    grey_spread: float | None = None
    period_spread: float | None = None
    saturation: tuple[float, float] | None = None
    rotation: float | None = None
    object_texture: str = "category"  # "any": each planned object's texture drawn from all textures
    # Per-image colour jitter as SSL views apply it: brightness, contrast and saturation factors in
    # [1 - photometric, 1 + photometric], hue shifted up to photometric / 4 of a turn. 0.6 by default:
    # without it an untrained network reads the class off the objects' grey levels at conv1
    # (results/embedded/classify_search.md).
    photometric: float = 0.6
    placement: str = "centre"  # imagenet / inat18: "centre" (iconic) or "anywhere" (the labelled object anywhere, any size 0.4-0.8)
    scene_backdrop: str = "any"  # places205: "type" follows the scene type's rule; "any": drawn per image
    # places205: "objects": a type is the set of categories its scenes' objects come from (type t: the
    # type_categories categories from 2t on, so neighbouring types share type_categories - 2), in
    # scene sizes and places; "layout": a type is a layout, a category group and a background
    # (_SCENE_TYPES), every one of which an untrained network reads
    scene_types: str = "objects"
    type_categories: int = 3
    # inat18: "marking": a category's shape with a small object of the next (1st, 2nd, 3rd) category
    # on it; "variant": size / period / hue variants of a category; "texture": a category's shape in
    # three textures (its own and two others); "hue": three hue bands of a category (the colour
    # jitter then leaves hue alone: it is what tells the species apart)
    species_axis: str = "marking"
    species_per_category: int = 2  # inat18: 1-3

    def __post_init__(self) -> None:
        if not (self.val_per_class >= 1 and 1 <= self.min_train_per_class <= self.train_per_class):
            raise ValueError(f"need val_per_class >= 1 and 1 <= min_train_per_class <= train_per_class, got "
                             f"val_per_class={self.val_per_class}, min_train_per_class={self.min_train_per_class}, "
                             f"train_per_class={self.train_per_class}")
        if not 0 <= self.photometric < 1:
            raise ValueError(f"photometric must be in [0, 1), got {self.photometric}")
        if not 1 <= self.species_per_category <= _VARIANTS:
            raise ValueError(f"species_per_category must be in 1..{_VARIANTS}, got {self.species_per_category}")
        if self.type_categories < 2:
            raise ValueError(f"type_categories must be >= 2 (10 types, two categories apart), got {self.type_categories}")
        for name, allowed in (("object_texture", ("category", "any")), ("scene_backdrop", ("type", "any")),
                              ("placement", ("centre", "anywhere")), ("scene_types", ("layout", "objects")),
                              ("species_axis", ("variant", "texture", "hue", "marking"))):
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, got {getattr(self, name)!r}")

    def style(self, spec: SynthSpec) -> SceneStyle:
        """The scenes' style with this set's look."""
        looks = {"grey_spread": self.grey_spread, "period_spread": self.period_spread,
                 "saturation": self.saturation, "rotation": self.rotation}
        return replace(spec.style(), **{k: v for k, v in looks.items() if v is not None})

    def jitter_colours(self, rng, image: np.ndarray, keep_hue: bool = False) -> np.ndarray:
        """The whole image's brightness, contrast, saturation, then hue (unless `keep_hue`), by factors
        drawn per image."""
        if not self.photometric:
            return image
        brightness, contrast, saturation = rng.uniform(1 - self.photometric, 1 + self.photometric, 3)
        hue = 0.0 if keep_hue else rng.uniform(-self.photometric / 4, self.photometric / 4)
        luma = np.array([0.299, 0.587, 0.114], np.float32)
        x = image.astype(np.float32) * np.float32(brightness)
        mean = float((x @ luma).mean())
        x = (x - mean) * np.float32(contrast) + mean
        grey = (x @ luma)[..., None]
        x = np.clip(grey + (x - grey) * np.float32(saturation), 0, 255).astype(np.uint8)
        hsv = cv2.cvtColor(x, cv2.COLOR_RGB2HSV)
        hsv[..., 0] = ((hsv[..., 0].astype(np.int32) + round(hue * 180)) % 180).astype(np.uint8)
        return cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)

    def placed(self, plan: ScenePlan) -> ScenePlan:
        """For placement 'anywhere': the first (labelled) object anywhere in the frame, at any size in 0.4-0.8."""
        if self.placement == "centre":
            return plan
        first = replace(plan.objects[0], size=(0.4, 0.8), region=((0.0, 1.0), (0.0, 1.0)))
        return replace(plan, objects=(first, *plan.objects[1:]))

    def textured(self, rng, plan: ScenePlan) -> ScenePlan:
        """`plan` with each object whose texture it leaves open textured at random, for object_texture 'any'."""
        if self.object_texture == "category":
            return plan
        return replace(plan, objects=tuple(o if o.texture else replace(o, texture=TEXTURES[int(rng.integers(len(TEXTURES)))])
                                           for o in plan.objects))

    def digest(self, dataset: str) -> str:
        """The key of `dataset` rendered with these options: only the options that shape it, so that
        an iNat-only change leaves the ImageNet-style set (and its records) alone."""
        shaping = {k: v for k, v in to_dict(self).items() if k in _SHAPES[dataset]}
        payload = json.dumps({"generator": CLASSIFY_VERSION, **shaping}, sort_keys=True)
        return hashlib.sha256(payload.encode()).hexdigest()[:12]


@dataclass(frozen=True)
class _Item:
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

    def write_index(self, root: Path, items: dict[str, list[_Item]]) -> None:
        raise NotImplementedError

    def items(self, split: str) -> list[_Item]:
        """Class by class, in class index order."""
        labels = [k for k, count in enumerate(self.counts(split)) for _ in range(count)]
        return [_Item(i, k, self.relpath(split, i, k)) for i, k in enumerate(labels)]


class _ImageNet(_Embedded):
    name = "imagenet"

    def class_names(self) -> list[str]:
        return category_names(self.spec.num_categories)

    def relpath(self, split: str, index: int, label: int) -> str:
        cls = self.class_names()[label]
        return f"{split}/{cls}/{cls}_{index:06d}.JPEG"

    def plan(self, rng, label: int) -> ScenePlan:
        return _iconic(rng, label, self.spec.num_categories)

    def write_index(self, root: Path, items: dict[str, list[_Item]]) -> None:
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

    def write_index(self, root: Path, items: dict[str, list[_Item]]) -> None:
        folder = root / "trainvalsplit_places205"
        folder.mkdir()
        for split, listed in items.items():
            lines = (f"{it.relpath.removeprefix(_PLACES_IMAGES + '/')} {it.label}\n" for it in listed)
            (folder / f"{split}_places205.csv").write_text("".join(lines))


_VARIANTS = 3  # at most: a category's species are its first species_per_category variants
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

    def write_index(self, root: Path, items: dict[str, list[_Item]]) -> None:
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


_SETS: dict[str, type[_Embedded]] = {c.name: c for c in (_ImageNet, _Places205, _INat18)}
_LOOK = {"train_per_class", "val_per_class", "grey_spread", "period_spread", "saturation", "rotation", "object_texture",
         "photometric"}
_SHAPES = {"imagenet": _LOOK | {"placement"},
           "places205": _LOOK | {"scene_backdrop", "scene_types", "type_categories"},
           "inat18": _LOOK | {"placement", "min_train_per_class", "species_axis", "species_per_category"}}


def _render_items(job: tuple[str, SynthSpec, EmbeddedClassSpec, str, list[_Item], Path]) -> None:
    """Render and write a chunk of one split (runs in worker processes)."""
    dataset, spec, embedded, split, items, root = job
    made = _SETS[dataset](spec, embedded)
    style = embedded.style(spec)
    for it in items:
        rng = image_rng(spec, f"{dataset}/{split}", it.index)
        plan = made.plan(rng, it.label)  # the plan's draws come first in the image's stream
        plan = embedded.textured(rng, embedded.placed(plan) if made.iconic else plan)
        image, _ = render_scene(rng, spec.height, spec.width, spec.num_categories, spec.min_objects,
                                spec.max_objects, style, plan)
        image = embedded.jitter_colours(rng, image, keep_hue=made.keeps_hue())
        ok, jpeg = cv2.imencode(".jpg", cv2.cvtColor(image, cv2.COLOR_RGB2BGR),
                                [cv2.IMWRITE_JPEG_QUALITY, _JPEG_QUALITY])
        if not ok:
            raise RuntimeError(f"JPEG encoding failed for {dataset} {split} image {it.index}")
        (root / it.relpath).write_bytes(jpeg.tobytes())


def _generate(dataset: str, spec: SynthSpec, embedded: EmbeddedClassSpec, root: Path, workers: int) -> None:
    made = _SETS[dataset](spec, embedded)
    items = {split: made.items(split) for split in SPLITS}
    for folder in sorted({(root / it.relpath).parent for listed in items.values() for it in listed}):
        folder.mkdir(parents=True, exist_ok=True)
    jobs = [(dataset, spec, embedded, split, listed[start:start + _CHUNK], root)
            for split, listed in items.items() for start in range(0, len(listed), _CHUNK)]
    workers = min(workers, len(jobs))
    if workers > 1:
        # spawn: a fork of a process that already runs torch/OpenCV thread pools can deadlock
        with multiprocessing.get_context("spawn").Pool(workers, initializer=cv2.setNumThreads,
                                                       initargs=(1,)) as pool:
            pool.map(_render_items, jobs, chunksize=1)
    else:
        threads = cv2.getNumThreads()
        cv2.setNumThreads(1)  # small images: OpenCV's thread pool only adds overhead
        try:
            for job in jobs:
                _render_items(job)
        finally:
            cv2.setNumThreads(threads)
    made.write_index(root, items)
    info = {"generator": CLASSIFY_VERSION, "dataset": dataset, "digest": embedded.digest(dataset),
            "synth_digest": spec.digest(), "synth": asdict(spec), "embedded": asdict(embedded),
            "classes": made.class_names(), "train_counts": made.counts("train")}
    (root / "spec.json").write_text(json.dumps(info, indent=2) + "\n")


def ensure_embedded(dataset: str, spec: SynthSpec, embedded: EmbeddedClassSpec, cache_root: Path,
                    workers: int = 1) -> Path:
    """Return `<cache_root>/synth-<spec digest>-<dataset>-<embedded digest>`, generating it first if
    needed (synth.build_once); `workers > 1` spawns processes."""
    if dataset not in _SETS:
        raise ValueError(f"unknown embedded classification set {dataset!r}; expected one of {tuple(_SETS)}")
    final = Path(cache_root) / f"synth-{spec.digest()}-{dataset}-{embedded.digest(dataset)}"
    return build_once(final, lambda tmp: _generate(dataset, spec, embedded, tmp, workers))
