"""The synthetic scene generator: determinism, scene statistics, annotation consistency, cache."""
from __future__ import annotations

import json
import re
import socket
import subprocess
import sys
from collections import Counter
from pathlib import Path

import cv2
import numpy as np
import pytest
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO

from orl_bench.data import synth
from orl_bench.data.coco import CocoDataset, coco_plus
from orl_bench.data.synth import SynthSpec, ensure_synth, image_rng
from orl_bench.data.synth_scene import (DIFFICULT_MIN_SIDE, DIFFICULT_VISIBLE_FRACTION,
                                        MAX_CATEGORIES, SceneStyle, category_names, category_table,
                                        render_scene)
from orl_bench.data.voc import VOC2007

# pycocotools.mask.decode trips a NumPy 2 deprecation inside the library itself
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")


def _tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _coco_json(root: Path, split: str = "train2017") -> dict:
    return json.loads((root / "coco" / "annotations" / f"instances_{split}.json").read_text())


def test_digest_is_stable_and_sensitive():
    assert SynthSpec().digest() == SynthSpec().digest()
    assert re.fullmatch(r"[0-9a-f]{12}", SynthSpec().digest())
    assert SynthSpec(seed=1).digest() != SynthSpec().digest()
    with pytest.raises(ValueError):
        SynthSpec(num_categories=MAX_CATEGORIES + 1)
    with pytest.raises(ValueError):
        SynthSpec(min_objects=4, max_objects=3)
    assert SynthSpec(backdrop=1.0).digest() != SynthSpec().digest()  # the look is part of the key
    with pytest.raises(ValueError, match="object_size must satisfy 0 < lo <= hi <= 1"):
        SynthSpec(object_size=(0.8, 0.5))
    with pytest.raises(ValueError, match="0 <= backdrop <= 1"):
        SynthSpec(backdrop=2.0)
    assert SynthSpec(blotches=0.0).digest() != SynthSpec().digest()
    with pytest.raises(ValueError, match="blotches >= 0"):
        SynthSpec(blotches=-1.0)
    assert SynthSpec(rotation=1.0).digest() != SynthSpec().digest()
    assert SynthSpec(grey_spread=1.0).digest() != SynthSpec().digest() != SynthSpec(period_spread=1.0).digest()
    with pytest.raises(ValueError, match="0 <= grey_spread <= 1"):
        SynthSpec(grey_spread=-0.5)
    with pytest.raises(ValueError, match="0 <= period_spread <= 1"):
        SynthSpec(period_spread=1.5)
    assert SynthSpec(texture_contrast=0.5).digest() != SynthSpec().digest()
    with pytest.raises(ValueError, match="0 < texture_contrast <= 1"):
        SynthSpec(texture_contrast=0.0)
    with pytest.raises(ValueError, match="0 <= rotation <= 1"):
        SynthSpec(rotation=1.5)


def test_style_sets_object_sizes_and_every_category_has_its_own_shape():
    assert len({shape for _, shape in category_table(20)}) == 20
    style = SceneStyle(object_size=(0.4, 0.5))
    for i in range(20):
        _, objects = render_scene(np.random.default_rng(i), 128, 128, 20, 2, 4, style)
        assert all(0.4 * 64 <= o.radius <= 0.5 * 64 for o in objects)  # radius = diameter / 2 x short side


def test_byte_identical_for_any_worker_count(small_spec, synth_root, tmp_path, monkeypatch):
    again = ensure_synth(small_spec, tmp_path / "a", workers=1)
    monkeypatch.setattr(synth, "_CHUNK", 7)  # many chunks, split unevenly over the workers
    parallel = ensure_synth(small_spec, tmp_path / "b", workers=2)
    reference = _tree(synth_root)
    assert len(reference) > 100
    assert _tree(again) == reference
    assert _tree(parallel) == reference


def test_layout_and_spec_json(small_spec, synth_root):
    info = json.loads((synth_root / "spec.json").read_text())
    assert info["digest"] == small_spec.digest() and synth_root.name == f"synth-{small_spec.digest()}"
    assert info["categories"] == category_names(20)
    assert len(list((synth_root / "coco" / "train2017").glob("*.jpg"))) == 48
    assert (synth_root / "coco" / "train2017" / "000000000001.jpg").is_file()
    voc = synth_root / "VOCdevkit" / "VOC2007"
    assert (voc / "JPEGImages" / "000001.jpg").is_file() and (voc / "Annotations" / "000001.xml").is_file()
    image = cv2.imread(str(voc / "JPEGImages" / "000001.jpg"))
    assert image.shape == (128, 128, 3)


def test_objects_per_image_and_categories(small_spec, synth_root):
    data = _coco_json(synth_root)
    per_image = Counter(a["image_id"] for a in data["annotations"])
    assert all(small_spec.min_objects <= per_image[im["id"]] <= small_spec.max_objects for im in data["images"])
    assert {a["category_id"] for a in data["annotations"]} == set(range(1, 21))
    names = [c["name"] for c in data["categories"]]
    assert len(set(names)) == 20 and all(re.fullmatch(r"[a-z]+_[a-z]+", n) for n in names)


def test_masks_boxes_and_areas_consistent(synth_root):
    data = _coco_json(synth_root)
    for ann in data["annotations"]:
        m = mask_utils.decode(ann["segmentation"])
        ys, xs = np.nonzero(m)
        assert ann["area"] == m.sum() > 0
        assert ann["bbox"] == [xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1]
        assert ann["iscrowd"] == 0


def test_annotations_match_a_rerender_and_difficult_rule(small_spec, synth_root):
    """Re-render each VOC image from its seed and check masks, occlusion and `difficult`."""
    voc = synth_root / "VOCdevkit" / "VOC2007"
    names = category_names(small_spec.num_categories)
    flags = []
    for index in range(small_spec.voc_trainval):
        _, objects = render_scene(image_rng(small_spec, "trainval", index), 128, 128, 20, small_spec.min_objects,
                                  small_spec.max_objects, small_spec.style())
        xml = (voc / "Annotations" / f"{index + 1:06d}.xml").read_text()
        written = re.findall(r"<name>(\w+)</name>.*?<difficult>(\d)</difficult>.*?<xmin>(\d+)</xmin>"
                             r"<ymin>(\d+)</ymin><xmax>(\d+)</xmax><ymax>(\d+)</ymax>", xml, re.S)
        assert len(written) == len(objects)
        for obj, (name, difficult, x0, y0, x1, y1) in zip(objects, written):
            ys, xs = np.nonzero(obj.visible)
            assert (obj.visible <= obj.mask).all()  # occlusion only removes pixels
            assert name == names[obj.category]
            assert [int(x0), int(y0), int(x1), int(y1)] == [xs.min() + 1, ys.min() + 1, xs.max() + 1, ys.max() + 1]
            fraction = obj.visible.sum() / obj.mask.sum()
            side = min(xs.max() - xs.min(), ys.max() - ys.min()) + 1
            expected = fraction < DIFFICULT_VISIBLE_FRACTION or side < DIFFICULT_MIN_SIDE * 128
            assert int(difficult) == expected
            flags.append(expected)
        front = np.zeros((128, 128), bool)  # drawn back to front: visible = own mask minus later ones
        for obj in reversed(objects):
            assert (obj.visible == obj.mask & ~front).all()
            front |= obj.mask
    assert 0 < sum(flags) < len(flags)


def test_colour_is_not_a_category_cue(synth_root):
    """Instance colours are drawn independently of the category: per category, the hues of the
    instances' mean colours are spread around the hue circle (a resultant length near 0)."""
    data = _coco_json(synth_root)
    hues: dict[int, list[float]] = {}
    for ann in data["annotations"]:
        if ann["area"] < 100:
            continue
        image = cv2.imread(str(synth_root / "coco" / "train2017" / f"{ann['image_id']:012d}.jpg"))
        mean = image[mask_utils.decode(ann["segmentation"]).astype(bool)].mean(0)
        hue = cv2.cvtColor(mean.astype(np.uint8)[None, None], cv2.COLOR_BGR2HSV)[0, 0, 0] * np.pi / 90
        hues.setdefault(ann["category_id"], []).append(hue)
    resultant = [abs(np.exp(1j * np.array(h)).mean()) for h in hues.values() if len(h) >= 5]
    assert len(resultant) >= 10
    assert np.mean(resultant) < 0.6  # a colour-coded class would be close to 1


def test_coco_json_loads_with_pycocotools(synth_root):
    coco = COCO(str(synth_root / "coco" / "annotations" / "instances_train2017.json"))
    assert len(coco.getImgIds()) == 48 and len(coco.getCatIds()) == 20
    ann = coco.loadAnns(coco.getAnnIds(imgIds=[1]))[0]
    assert coco.annToMask(ann).sum() == ann["area"]
    val = CocoDataset(synth_root / "coco", "val2017")
    assert [im.id for im in val.images] == list(range(49, 57))  # ids unique across splits
    train, unlabeled = coco_plus(synth_root / "coco")
    assert len(train) == 48 and len(unlabeled) == 8 and unlabeled.boxes(0).shape == (0, 4)
    assert train.boxes(0).shape == (len(train.category_ids(0)), 4)


def test_voc_loads_and_matches_per_class_files(synth_root):
    main = synth_root / "VOCdevkit" / "VOC2007" / "ImageSets" / "Main"
    for split, n in (("trainval", 40), ("test", 16)):
        voc = VOC2007(synth_root, split)
        assert len(voc) == n and voc.ids == sorted(voc.ids)
        assert voc.classes == sorted(category_names(20))
        assert set(np.unique(voc.labels)) <= {-1, 0, 1} and (voc.labels == 1).any()
        to_ours = {1: 1, -1: 0, 0: -1}  # VOC's per-class files: 1 present, -1 absent, 0 difficult only
        for k, cls in enumerate(voc.classes):
            rows = dict(line.split() for line in (main / f"{cls}_{split}.txt").read_text().splitlines())
            assert [to_ours[int(rows[i])] for i in voc.ids] == voc.labels[:, k].tolist()
    assert (VOC2007(synth_root, "trainval").labels == -1).any() or (VOC2007(synth_root, "test").labels == -1).any()


# --- cache ---

def test_second_call_does_not_regenerate(small_spec, synth_root, monkeypatch):
    monkeypatch.setattr(synth, "_generate", lambda *a: pytest.fail("regenerated a cached dataset"))
    assert ensure_synth(small_spec, synth_root.parent) == synth_root


def test_interrupted_generation_leaves_nothing(tmp_path, monkeypatch):
    spec = SynthSpec(seed=9, coco_train=8, coco_val=0, voc_trainval=8, voc_test=0)

    def crash(job):
        raise KeyboardInterrupt

    monkeypatch.setattr(synth, "_render_chunk", crash)
    with pytest.raises(KeyboardInterrupt):
        ensure_synth(spec, tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_stale_temp_folders(tmp_path):
    spec = SynthSpec(seed=9, coco_train=8, coco_val=0, voc_trainval=8, voc_test=0)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True).stdout.strip()
    name = f".synth-{spec.digest()}.tmp"
    stale = tmp_path / f"{name}-{socket.gethostname()}-{dead}"
    foreign = tmp_path / f"{name}-some-other-host-1"
    for d in (stale, foreign):
        (d / "coco").mkdir(parents=True)
        (d / "coco" / "partial.jpg").write_bytes(b"\xff\xd8")
    root = ensure_synth(spec, tmp_path)
    assert (root / "spec.json").is_file() and len(CocoDataset(root / "coco")) == 8
    assert not stale.exists()  # its owner is dead: removed
    assert foreign.exists()  # another host's generation may still be running: left alone


def test_rotation_narrows_poses_around_one_angle_and_keeps_the_draw():
    from orl_bench.data.synth_scene import _angle
    full = [_angle(np.random.default_rng(i), 1.0) for i in range(200)]
    narrow = [_angle(np.random.default_rng(i), 0.1) for i in range(200)]
    assert max(full) - min(full) > 1.8 * np.pi
    assert all(abs(a - np.pi) <= 0.1 * np.pi for a in narrow)
    # the same draw, narrowed: scenes keep every other property when only the pose range changes
    assert np.allclose(np.array(narrow) - np.pi, (np.array(full) - np.pi) * 0.1)


def test_zero_period_spread_gives_every_instance_its_category_period():
    from orl_bench.data.synth_scene import CategoryLook, _period
    look = CategoryLook.of(5)
    shared = {_period(np.random.default_rng(seed), 20.0, look, 0.0) for seed in range(10)}
    assert shared == {20.0 * look.period_share}
    assert len({_period(np.random.default_rng(seed), 20.0, look, 1.0) for seed in range(10)}) == 10


def test_zero_grey_spread_gives_every_instance_its_category_grey_levels():
    from orl_bench.data.synth_scene import CategoryLook, _colour_pair
    look = CategoryLook.of(3)
    assert look == CategoryLook.of(3) != CategoryLook.of(4)  # fixed per category
    for seed in range(20):
        base, ink = _colour_pair(np.random.default_rng(seed), (0.0, 0.0), look, 0.0)  # grey: value = level
        assert np.allclose([base[0] / 255, ink[0] / 255], look.values, atol=1e-6)
        half = _colour_pair(np.random.default_rng(seed), (0.0, 0.0), look, 0.5)
        assert abs(half[0][0] - half[1][0]) / 255 >= 0.35 - 1e-6  # the texture's contrast survives a blend
        low = _colour_pair(np.random.default_rng(seed), (0.0, 0.0), look, 0.0, 0.25)
        assert low[0][0] == base[0] and np.isclose(low[1][0] - low[0][0], 0.25 * (ink[0] - base[0]), atol=1e-3)
