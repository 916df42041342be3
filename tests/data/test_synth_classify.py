"""The embedded classification sets (ImageNet-, Places- and iNat-style scenes written in the real
formats): their options and keys, the designs that carry each class, and generation (cached,
deterministic, all or nothing)."""
from __future__ import annotations

import json
import re
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from orl_bench.config import DataConfig
from orl_bench.data import classify_sets, synth_classify
from orl_bench.data.classification import (CLASSIFICATION_DATASETS, IMAGENET_SUBSETS, EmbeddedClassSpec,
                                           classification_split)
from orl_bench.data.synth import SynthSpec
from orl_bench.data.synth_classify import ensure_embedded
from orl_bench.data.synth_scene import (TEXTURES, ObjectPlan, ScenePlan, category_names, category_table,
                                        render_scene)


def _tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_embedded_spec_digest_and_validation():
    default = EmbeddedClassSpec()
    assert re.fullmatch(r"[0-9a-f]{12}", default.digest("imagenet"))
    assert EmbeddedClassSpec(val_per_class=3).digest("imagenet") != default.digest("imagenet")
    # an option changes the key of the sets it shapes and only theirs
    inat_only = EmbeddedClassSpec(species_axis="texture")
    assert inat_only.digest("inat18") != default.digest("inat18")
    assert inat_only.digest("imagenet") == default.digest("imagenet")
    assert inat_only.digest("places205") == default.digest("places205")
    places_only = EmbeddedClassSpec(type_categories=4)
    assert places_only.digest("places205") != default.digest("places205")
    assert places_only.digest("imagenet") == default.digest("imagenet")
    assert len({default.digest(d) for d in ("imagenet", "places205", "inat18")}) == 3
    with pytest.raises(ValueError, match="1 <= min_train_per_class <= train_per_class"):
        EmbeddedClassSpec(train_per_class=3)
    with pytest.raises(ValueError, match="val_per_class >= 1"):
        EmbeddedClassSpec(val_per_class=0)


def test_embedded_look_options_are_checked_and_applied():
    for key in ("object_texture", "scene_backdrop", "species_axis"):
        with pytest.raises(ValueError, match=f"{key} must be one of"):
            EmbeddedClassSpec(**{key: "plaid"})
    spec = SynthSpec()
    varied = EmbeddedClassSpec(grey_spread=1, period_spread=0.5, saturation=(0.1, 0.6), rotation=1)
    style = varied.style(spec)
    assert (style.grey_spread, style.period_spread, style.saturation, style.rotation) == (1, 0.5, (0.1, 0.6), 1)
    assert style.object_size == spec.style().object_size  # the rest is the scenes'
    assert EmbeddedClassSpec(grey_spread=None, period_spread=None, saturation=None, rotation=None).style(spec) \
        == spec.style()
    plan = ScenePlan((ObjectPlan(0, (0.5, 0.6), texture="dotted"), ObjectPlan(1, (0.1, 0.2))))
    assert EmbeddedClassSpec(object_texture="category").textured(np.random.default_rng(0), plan) == plan
    drawn = {EmbeddedClassSpec(object_texture="any").textured(np.random.default_rng(i), plan).objects[1].texture
             for i in range(100)}
    assert drawn == set(TEXTURES)  # an open texture is drawn from all ten; a dictated one stays
    _, objects = render_scene(np.random.default_rng(0), 64, 64, 6, 1, 1, plan=plan)
    assert [o.texture for o in objects] == ["dotted", category_table(6)[1][0]]
    with pytest.raises(ValueError, match="texture None or one of"):
        ObjectPlan(0, (0.5, 0.6), texture="plaid")
    assert EmbeddedClassSpec().placed(plan) == plan
    anywhere = EmbeddedClassSpec(placement="anywhere").placed(plan)
    assert anywhere.objects[0].size == (0.4, 0.8) and anywhere.objects[0].region == ((0.0, 1.0), (0.0, 1.0))
    assert anywhere.objects[1:] == plan.objects[1:]


def test_photometric_jitter_varies_each_image_as_colour_jitter_does():
    image = np.zeros((8, 8, 3), np.uint8)
    image[:4], image[4:] = (200, 60, 60), (60, 60, 200)  # a red and a blue half
    assert EmbeddedClassSpec(photometric=0.0).jitter_colours(np.random.default_rng(0), image) is image
    spec = EmbeddedClassSpec(photometric=0.6)
    out = [spec.jitter_colours(np.random.default_rng(i), image) for i in range(10)]
    assert len({o.astype(int).sum() for o in out}) == 10  # brightness and contrast differ per draw
    hues = [cv2.cvtColor(spec.jitter_colours(np.random.default_rng(i), image, keep_hue=True), cv2.COLOR_RGB2HSV)[..., 0]
            for i in range(10)]
    reference = cv2.cvtColor(image, cv2.COLOR_RGB2HSV)[..., 0].astype(int)
    assert all(np.abs(h.astype(int) - reference).max() <= 2 for h in hues)  # hue kept up to rounding
    shifted = cv2.cvtColor(spec.jitter_colours(np.random.default_rng(0), image), cv2.COLOR_RGB2HSV)[..., 0]
    assert np.abs(shifted.astype(int) - reference).max() > 2
    with pytest.raises(ValueError, match=r"photometric must be in \[0, 1\)"):
        EmbeddedClassSpec(photometric=1.0)


def test_places_types_by_objects_and_inat_species_by_texture_hue_or_marking(tmp_path):
    objects = EmbeddedClassSpec(train_per_class=2, val_per_class=1, min_train_per_class=1, scene_types="objects",
                                scene_backdrop="any", photometric=0.5)
    places = classify_sets._Places205(SPEC, objects)
    for label in range(10):
        plan = places.plan(np.random.default_rng(label), label)
        assert SPEC.min_objects <= len(plan.objects) <= SPEC.max_objects
        assert {o.category for o in plan.objects} <= {(2 * label + j) % SPEC.num_categories for j in range(4)}
    for axis in ("texture", "hue"):
        spec = EmbeddedClassSpec(train_per_class=2, val_per_class=1, min_train_per_class=1, species_axis=axis,
                                 species_per_category=3)
        inat = classify_sets._INat18(SPEC, spec)
        assert [s.axis for s in inat.species()] == [axis] * 18
        assert inat.class_names()[:3] == [f"{category_names(6)[0]}_{axis}{v}" for v in range(3)]
    textures = [classify_sets._INat18(SPEC, EmbeddedClassSpec(species_axis="texture", species_per_category=3))
                .plan(np.random.default_rng(0), v)
                .objects[0].texture for v in range(3)]
    own = TEXTURES.index(category_table(6)[0][0])
    assert textures == [TEXTURES[(own + 3 * v) % 10] for v in range(3)]
    marked = classify_sets._INat18(SPEC, EmbeddedClassSpec(species_axis="marking", species_per_category=2))
    for label in range(12):  # category label // 2 with a small object of category label // 2 + 1 + label % 2 on it
        body, marking = marked.plan(np.random.default_rng(label), label).objects[:2]
        assert (body.category, marking.category) == (label // 2, (label // 2 + 1 + label % 2) % 6)
        assert marking.size[1] < body.size[0] and marking.region[0][1] < body.region[0][0]
    root = ensure_embedded("places205", SPEC, objects, tmp_path)  # renders end to end in the real layout
    assert len(list((root / "images256").rglob("*.jpg"))) == 30


def test_scene_plan_dictates_objects_and_background():
    plan = ScenePlan((ObjectPlan(2, (0.5, 0.6), ((0.45, 0.55), (0.45, 0.55))), ObjectPlan(4, (0.1, 0.2))),
                     ((80.0, 80.0), (80.0, 80.0)))
    image, objects = render_scene(np.random.default_rng(0), 64, 64, 6, 1, 1, plan=plan)
    assert [o.category for o in objects] == [2, 4]
    assert 0.5 * 32 <= objects[0].radius <= 0.6 * 32 and 0.1 * 32 <= objects[1].radius <= 0.2 * 32
    assert all(0.45 * 64 <= c <= 0.55 * 64 for c in objects[0].centre)
    dark = render_scene(np.random.default_rng(0), 64, 64, 6, 1, 1,
                        plan=ScenePlan(plan.objects, ((-80.0, -80.0), (-80.0, -80.0))))[0]
    assert image.mean() > dark.mean() + 40
    with pytest.raises(ValueError, match="planned category 6 is outside 0..5"):
        render_scene(np.random.default_rng(0), 64, 64, 6, 1, 1, plan=ScenePlan((ObjectPlan(6, (0.2, 0.3)),)))


# --- the embedded sets ---

SPEC = SynthSpec(seed=5, num_categories=6, height=64, width=64)
TINY = EmbeddedClassSpec(train_per_class=3, val_per_class=2, min_train_per_class=1)
TAIL = EmbeddedClassSpec(train_per_class=6, val_per_class=2, min_train_per_class=1)  # inat18: a visible tail
_EMBEDDED = {"imagenet": TINY, "places205": TINY, "inat18": TAIL}


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    """The three sets generated in one process; classification_split then finds them cached."""
    root = tmp_path_factory.mktemp("embedded")
    for dataset, embedded in _EMBEDDED.items():
        ensure_embedded(dataset, SPEC, embedded, root / "data")
    return root


def _split(workdir: Path, dataset: str, split: str, subset: str | None = None):
    return classification_split(DataConfig(source="synth", synth=SPEC), _EMBEDDED[dataset], workdir, dataset, split,
                                subset)


def test_embedded_sets_are_cached_under_their_digests(workdir, monkeypatch):
    monkeypatch.setattr(synth_classify, "_generate", lambda *a: pytest.fail("regenerated a cached set"))
    for dataset in CLASSIFICATION_DATASETS:
        split = _split(workdir, dataset, "train")
        name = f"synth-{SPEC.digest()}-{dataset}-{_EMBEDDED[dataset].digest(dataset)}"
        assert split.key == f"{name}-train" and split.paths[0].is_relative_to(workdir / "data" / name)
        assert json.loads((workdir / "data" / name / "spec.json").read_text())["classes"]
    subset = _split(workdir, "imagenet", "train", "10percent")
    assert subset.key == f"synth-{SPEC.digest()}-imagenet-{TINY.digest('imagenet')}-train-10percent"


def test_embedded_imagenet(workdir):
    classes = sorted(category_names(6))
    for split, per_class in (("train", 3), ("val", 2)):
        s = _split(workdir, "imagenet", split)
        assert s.classes == classes and np.bincount(s.targets).tolist() == [per_class] * 6
        assert all(p.suffix == ".JPEG" and p.name.startswith(s.classes[t] + "_") and p.parent.name == s.classes[t]
                   for p, t in zip(s.paths, s.targets))
        with Image.open(s.paths[0]) as im:
            assert im.format == "JPEG" and im.size == (64, 64)
    train = _split(workdir, "imagenet", "train")
    for subset in IMAGENET_SUBSETS:
        s = _split(workdir, "imagenet", "train", subset)
        expected = max(1, round(classify_sets.SUBSET_FRACTIONS[subset] * 3))
        assert np.bincount(s.targets, minlength=6).tolist() == [expected] * 6
        assert set(s.paths) <= set(train.paths)


def test_embedded_places205(workdir):
    for split, per_class in (("train", 3), ("val", 2)):
        s = _split(workdir, "places205", split)
        assert len(s.classes) == 10 and s.classes == sorted(s.classes)
        assert all(re.fullmatch(r"[a-z]+", c) for c in s.classes)
        assert np.bincount(s.targets).tolist() == [per_class] * 10
        for p, t in zip(s.paths, s.targets):
            letter, cls = p.parent.parent.name, p.parent.name
            assert cls == s.classes[t] and letter == cls[0] and re.fullmatch(r"gsun_[0-9a-f]{32}\.jpg", p.name)


def test_embedded_inat18_is_long_tailed(workdir):
    train, val = _split(workdir, "inat18", "train"), _split(workdir, "inat18", "val")
    assert train.classes == val.classes and len(train.classes) == 6 * 2  # two marked species per category
    counts = np.bincount(train.targets, minlength=12)
    tail = [max(1, round(6 * (rank + 1) ** -0.8)) for rank in range(12)]
    assert sorted(counts.tolist(), reverse=True) == tail  # non-increasing along the shuffled order
    assert counts.tolist() != tail  # shuffled: the head is not species 0, 1, ...
    assert np.bincount(val.targets).tolist() == [2] * 12
    root = train.paths[0].parents[3]
    data = json.loads((root / "train2018.json").read_text())
    shapes = [shape for _, shape in category_table(6)]
    assert {c["supercategory"] for c in data["categories"]} == set(shapes)
    for p, t in zip(train.paths, train.targets):
        assert p.parent.name == str(t) and p.parent.parent.name in shapes and p.parts[-4] == "train_val2018"
    val_images = json.loads((root / "val2018.json").read_text())["images"]
    ids = [im["id"] for im in data["images"] + val_images]
    assert len(set(ids)) == len(ids)  # unique across train and val, as in the real files


def test_embedded_bytes_do_not_depend_on_workers_and_follow_the_seed(workdir, tmp_path, monkeypatch):
    reference = _tree(ensure_embedded("places205", SPEC, TINY, workdir / "data"))
    monkeypatch.setattr(synth_classify, "_CHUNK", 7)  # many chunks, split unevenly over the workers
    parallel = ensure_embedded("places205", SPEC, TINY, tmp_path, workers=2)
    assert _tree(parallel) == reference
    reseeded = _tree(ensure_embedded("places205", SynthSpec(seed=6, num_categories=6, height=64, width=64), TINY,
                                     tmp_path))
    images = sorted(k for k in reference if k.endswith(".jpg"))
    assert sorted(k for k in reseeded if k.endswith(".jpg")) == images  # names from (split, index) alone
    assert all(reseeded[k] != reference[k] for k in images)


def test_interrupted_generation_leaves_nothing(tmp_path, monkeypatch):
    def crash(job):
        raise KeyboardInterrupt

    monkeypatch.setattr(synth_classify, "_render_items", crash)
    with pytest.raises(KeyboardInterrupt):
        ensure_embedded("imagenet", SPEC, TINY, tmp_path)
    assert list(tmp_path.iterdir()) == []
