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

What carries each set's classes is classify_sets.py's (the designs); how the objects look and the
colour jitter are EmbeddedClassSpec's options here; everything else (style, image size, seed,
categories) is the SynthSpec's. Image `index` of a split
draws from `image_rng(spec, "<dataset>/<split>", index)` alone, so the files are byte-identical
for any number of workers.
"""
from __future__ import annotations

import hashlib
import json
import multiprocessing
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import cv2
import numpy as np

from orl_bench.config import to_dict
from orl_bench.data.synth import _JPEG_QUALITY, SynthSpec, build_once, image_rng
from orl_bench.data.classify_sets import CLASSIFY_VERSION, SETS, VARIANTS, Item
from orl_bench.data.synth_scene import TEXTURES, ScenePlan, SceneStyle, render_scene

SPLITS = ("train", "val")
_CHUNK = 64  # images per worker task

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
    # (classify_sets._SCENE_TYPES), every one of which an untrained network reads
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
        if not 1 <= self.species_per_category <= VARIANTS:
            raise ValueError(f"species_per_category must be in 1..{VARIANTS}, got {self.species_per_category}")
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


_LOOK = {"train_per_class", "val_per_class", "grey_spread", "period_spread", "saturation", "rotation", "object_texture",
         "photometric"}
_SHAPES = {"imagenet": _LOOK | {"placement"},
           "places205": _LOOK | {"scene_backdrop", "scene_types", "type_categories"},
           "inat18": _LOOK | {"placement", "min_train_per_class", "species_axis", "species_per_category"}}


def _render_items(job: tuple[str, SynthSpec, EmbeddedClassSpec, str, list[Item], Path]) -> None:
    """Render and write a chunk of one split (runs in worker processes)."""
    dataset, spec, embedded, split, items, root = job
    made = SETS[dataset](spec, embedded)
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
    made = SETS[dataset](spec, embedded)
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
    if dataset not in SETS:
        raise ValueError(f"unknown embedded classification set {dataset!r}; expected one of {tuple(SETS)}")
    final = Path(cache_root) / f"synth-{spec.digest()}-{dataset}-{embedded.digest(dataset)}"
    return build_once(final, lambda tmp: _generate(dataset, spec, embedded, tmp, workers))
