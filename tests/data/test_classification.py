"""Classification sets in the real formats: the loaders (ImageNet + SimCLR subsets, Places205,
iNat18) on fixtures written here, their errors, and which source may provide which set. The
embedded sets generated in these formats: test_synth_classify.py."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from orl_bench.config import DataConfig
from orl_bench.data.classification import (EmbeddedClassSpec, classification_split, load_imagenet, load_inat18,
                                           load_places205)
from orl_bench.data.images import DatasetLayoutError


def _image(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (4, 4), (20, 90, 200)).save(path)
    return path


# --- ImageNet ---

@pytest.fixture
def imagenet(tmp_path) -> Path:
    for name in ("n002/n002_7.JPEG", "n001/n001_2.JPEG", "n001/n001_10.JPEG"):
        _image(tmp_path / "train" / name)
    for name in ("n001/ILSVRC2012_val_00000001.JPEG", "n002/ILSVRC2012_val_00000002.JPEG"):
        _image(tmp_path / "val" / name)
    (tmp_path / "imagenet_subsets").mkdir()
    (tmp_path / "imagenet_subsets" / "1percent.txt").write_text("n002_7.JPEG\nn001_2.JPEG\n\n")
    return tmp_path


def test_imagenet_splits_and_subset(imagenet):
    train = load_imagenet(imagenet, "train")
    assert train.classes == ["n001", "n002"] and train.key == "imagenet-train"
    assert [p.relative_to(imagenet).as_posix() for p in train.paths] == [
        "train/n001/n001_10.JPEG", "train/n001/n001_2.JPEG", "train/n002/n002_7.JPEG"]
    assert train.targets.tolist() == [0, 0, 1] and train.targets.dtype == np.int64
    subset = classification_split(DataConfig(source="imagenet", root=str(imagenet)), EmbeddedClassSpec(), imagenet,
                                  "imagenet", "train", "1percent")
    assert [p.name for p in subset.paths] == ["n001_2.JPEG", "n002_7.JPEG"]  # in train order
    assert subset.targets.tolist() == [0, 1] and subset.key == "imagenet-train-1percent"
    val = load_imagenet(imagenet, "val")
    assert val.targets.tolist() == [0, 1] and val.classes == train.classes


@pytest.mark.parametrize("content, expected", [
    (None, "10percent.txt does not exist"),
    ("\n  \n", "10percent.txt is empty"),
    ("n001_2.JPEG\nn003_1.JPEG\nn002_2.JPEG\n",
     "2 of the 3 names in .* are not train images: n003_1.JPEG, n002_2.JPEG"),
])
def test_imagenet_subset_errors(imagenet, content, expected):
    if content is not None:
        (imagenet / "imagenet_subsets" / "10percent.txt").write_text(content)
    with pytest.raises(DatasetLayoutError, match=expected) as e:
        load_imagenet(imagenet, "train", "10percent")
    assert "imagenet_subsets/1percent.txt, 10percent.txt" in str(e.value)  # shows the layout


def test_imagenet_missing_split_and_bad_subset_arguments(imagenet):
    shutil.rmtree(imagenet / "val")
    (imagenet / "val").mkdir()
    with pytest.raises(DatasetLayoutError, match="(?s)holds no class folders.*expected class folders"):
        load_imagenet(imagenet, "val")
    data = DataConfig(source="imagenet", root=str(imagenet))
    for dataset, split, subset in (("imagenet", "train", "5percent"), ("imagenet", "val", "1percent"),
                                   ("places205", "train", "1percent")):
        with pytest.raises(ValueError, match=r"subsets are of imagenet train only, one of \('1percent', '10percent'\)"):
            classification_split(data, EmbeddedClassSpec(), imagenet, dataset, split, subset)


# --- Places205 ---

_PLACES_CSV = ("a/abbey/gsun_0003586c3eedd97457b2d729ebfe18b5.jpg 0\n"
               "f/field/wild/gsun_11.jpg 1\n"
               "a/abbey/gsun_12.jpg 0\n")


@pytest.fixture
def places(tmp_path) -> Path:
    (tmp_path / "trainvalsplit_places205").mkdir()
    for split in ("train", "val"):
        (tmp_path / "trainvalsplit_places205" / f"{split}_places205.csv").write_text(_PLACES_CSV)
    for line in _PLACES_CSV.splitlines():
        _image(tmp_path / "images256" / line.split()[0])
    return tmp_path


def test_places205_reads_csv_and_images(places):
    split = classification_split(DataConfig(source="places205", root=str(places)), EmbeddedClassSpec(), places,
                                 "places205", "val")
    assert split.classes == ["abbey", "field/wild"] and split.key == "places205-val"
    assert split.targets.tolist() == [0, 1, 0]
    assert split.paths[1] == places / "images256" / "f" / "field" / "wild" / "gsun_11.jpg"
    # the archive's own folder layout is accepted too
    deep = places / "data" / "vision" / "torralba" / "deeplearning"
    deep.mkdir(parents=True)
    (places / "images256").rename(deep / "images256")
    assert load_places205(places, "train").paths[0].is_relative_to(deep)


@pytest.mark.parametrize("csv, expected", [
    ("a/abbey/gsun_12.jpg 0\nabbey.jpg 0\n", r"line 2: 'abbey.jpg 0' is not '<letter>/<class>/<image> <label>'"),
    ("a/abbey/gsun_12.jpg zero\n", r"line 1: .* is not '<letter>/<class>/<image> <label>'"),
    ("a/abbey/gsun_12.jpg 0\nf/field/wild/gsun_11.jpg 0\n",
     "line 2: label 0 given to class 'field/wild', but line 1 gave it to 'abbey'"),
    ("a/abbey/gsun_12.jpg 0\nf/field/wild/gsun_11.jpg 1\na/abbey/gsun_0003586c3eedd97457b2d729ebfe18b5.jpg 1\n",
     "line 3: label 1 given to class 'abbey', but line 2 gave it to 'field/wild'"),
    ("a/abbey/gsun_12.jpg 0\na/abbey/gsun_0003586c3eedd97457b2d729ebfe18b5.jpg 2\n",
     "line 2: class 'abbey' given label 2, but line 1 gave it 0"),
    ("f/field/wild/gsun_11.jpg 1\n", r"labels must run 0..C-1, but 1 are unused: 0"),
    ("\n", "lists no images"),
    ("a/abbey/gsun_12.jpg 0\na/abbey/gsun_404.jpg 0\nf/field/wild/gsun_405.jpg 1\n",
     r"2 of the 3 listed images are missing: .*gsun_404.jpg, .*gsun_405.jpg"),
])
def test_places205_malformed_csv(places, csv, expected):
    (places / "trainvalsplit_places205" / "train_places205.csv").write_text(csv)
    with pytest.raises(DatasetLayoutError, match=expected) as e:
        load_places205(places, "train")
    assert "expected Places205" in str(e.value) and "images256/a/abbey/" in str(e.value)


def test_places205_missing_files(places):
    (places / "trainvalsplit_places205" / "val_places205.csv").unlink()
    with pytest.raises(DatasetLayoutError, match="(?s)val_places205.csv does not exist.*trainvalsplit_places205/"):
        load_places205(places, "val")
    (places / "images256").rename(places / "elsewhere")
    with pytest.raises(DatasetLayoutError, match="(?s)no image folder .*images256 .*expected Places205"):
        load_places205(places, "train")


# --- iNat18 ---

def _inat_json(split: str) -> dict:
    categories = [{"id": 7, "name": "Quercus alba", "supercategory": "Plantae"},
                  {"id": 3, "name": "Bufo bufo", "supercategory": "Amphibia"},
                  {"id": 12, "name": "Parus major", "supercategory": "Aves"}]
    cats = (7, 3, 12) if split == "train" else (3, 3)  # val lacks two categories
    images = [{"id": 100 + i, "file_name": f"train_val2018/x/{c}/{split}{i}.jpg", "width": 4, "height": 4}
              for i, c in enumerate(cats)]
    annotations = [{"id": i, "image_id": 100 + i, "category_id": c} for i, c in enumerate(cats)]
    return {"images": images, "annotations": annotations, "categories": categories}


@pytest.fixture
def inat(tmp_path) -> Path:
    for split in ("train", "val"):
        data = _inat_json(split)
        (tmp_path / f"{split}2018.json").write_text(json.dumps(data))
        for im in data["images"]:
            _image(tmp_path / im["file_name"])
    return tmp_path


def test_inat18_maps_sorted_category_ids(inat):
    train = classification_split(DataConfig(source="inat18", root=str(inat)), EmbeddedClassSpec(), inat,
                                 "inat18", "train")
    assert train.classes == ["Bufo bufo", "Quercus alba", "Parus major"]  # ids 3, 7, 12
    assert train.targets.tolist() == [1, 0, 2] and train.key == "inat18-train"
    assert train.paths[0] == inat / "train_val2018" / "x" / "7" / "train0.jpg"
    val = load_inat18(inat, "val")
    assert val.classes == train.classes and val.targets.tolist() == [0, 0]


def _drop_key(data: dict, where: str, key: str) -> None:
    del (data if where == "top" else data[where][0])[key]


def _list_absent_image(data: dict) -> None:
    data["images"].append({"id": 200, "file_name": "train_val2018/x/7/gone.jpg"})
    data["annotations"].append({"id": 9, "image_id": 200, "category_id": 7})


@pytest.mark.parametrize("edit, expected", [
    (lambda d: _drop_key(d, "top", "annotations"), "no 'annotations' list"),
    (lambda d: _drop_key(d, "categories", "name"), r"categories\[0\] lacks 'name'"),
    (lambda d: _drop_key(d, "images", "file_name"), r"images\[0\] lacks 'file_name'"),
    (lambda d: d["annotations"].pop(1), "1 images have no annotation, e.g. ids 101"),
    (lambda d: d["annotations"].append({"id": 9, "image_id": 100, "category_id": 3}),
     "image 100 has annotations of two categories"),
    (lambda d: d["annotations"][0].update(category_id=99), r"annotations\[0\] refers to image 100 / category 99"),
    (_list_absent_image, "1 of the 4 listed images are missing: .*gone.jpg"),
    (lambda d: d["categories"].append({"id": 3, "name": "again"}), "category ids repeat"),
])
def test_inat18_malformed_json(inat, edit, expected):
    data = _inat_json("train")
    edit(data)
    (inat / "train2018.json").write_text(json.dumps(data))
    with pytest.raises(DatasetLayoutError, match=expected) as e:
        load_inat18(inat, "train")
    assert "expected iNaturalist 2018" in str(e.value) and "train2018.json, val2018.json" in str(e.value)


def test_inat18_missing_or_broken_file(inat):
    (inat / "val2018.json").write_text("{not json")
    with pytest.raises(DatasetLayoutError, match="val2018.json is not valid JSON"):
        load_inat18(inat, "val")
    (inat / "val2018.json").unlink()
    with pytest.raises(DatasetLayoutError, match="(?s)val2018.json does not exist.*expected iNaturalist 2018"):
        load_inat18(inat, "val")


# --- sources ---

def test_source_must_match_the_dataset(tmp_path, monkeypatch):
    with pytest.raises(ValueError,
                       match="data.source 'coco' cannot provide imagenet; expected 'synth' .* or 'imagenet'"):
        classification_split(DataConfig(source="coco"), EmbeddedClassSpec(), tmp_path, "imagenet", "train")
    with pytest.raises(ValueError, match=r"unknown classification dataset 'cifar'; expected one of \('imagenet'"):
        classification_split(DataConfig(), EmbeddedClassSpec(), tmp_path, "cifar", "train")
    with pytest.raises(ValueError, match=r"unknown inat18 split 'test'; expected one of \('train', 'val'\)"):
        classification_split(DataConfig(), EmbeddedClassSpec(), tmp_path, "inat18", "test")
    monkeypatch.delenv("ORL_BENCH_PLACES205", raising=False)
    with pytest.raises(DatasetLayoutError, match="set data.root .* or the ORL_BENCH_PLACES205 environment variable"):
        classification_split(DataConfig(source="places205"), EmbeddedClassSpec(), tmp_path, "places205", "val")
    assert not (tmp_path / "data").exists()  # nothing generated for a rejected request
