"""COCO loader on hand-written fixtures (independent of the generator)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from orl_bench.data.coco import CocoDataset, coco_plus
from orl_bench.data.images import DatasetLayoutError

INSTANCES = {
    "images": [{"id": 42, "file_name": "b.jpg", "width": 64, "height": 48},
               {"id": 7, "file_name": "a.jpg", "width": 32, "height": 32}],
    "categories": [{"id": 5, "name": "dog"}, {"id": 2, "name": "cat"}],
    "annotations": [
        {"id": 1, "image_id": 7, "category_id": 2, "bbox": [1, 2, 3, 4], "iscrowd": 0},
        {"id": 2, "image_id": 42, "category_id": 5, "bbox": [0, 0, 10, 10], "iscrowd": 1},
        {"id": 3, "image_id": 42, "category_id": 2, "bbox": [5.5, 6, 7, 8], "iscrowd": 0},
        {"id": 4, "image_id": 7, "category_id": 5, "bbox": [9, 9, 2, 2], "iscrowd": 0},
    ],
}


def _write(root: Path, split: str, data: dict | str, ann_name: str | None = None) -> Path:
    (root / split).mkdir(parents=True, exist_ok=True)
    (root / "annotations").mkdir(exist_ok=True)
    path = root / "annotations" / (ann_name or f"instances_{split}.json")
    path.write_text(data if isinstance(data, str) else json.dumps(data))
    return root


def test_images_in_json_order_with_boxes(tmp_path):
    ds = CocoDataset(_write(tmp_path, "train2017", INSTANCES))
    assert len(ds) == 2
    assert [im.id for im in ds.images] == [42, 7]  # the JSON order is the image list position
    assert ds.images[1].path == tmp_path / "train2017" / "a.jpg"
    assert (ds.images[0].width, ds.images[0].height) == (64, 48)
    assert ds.categories == [{"id": 2, "name": "cat"}, {"id": 5, "name": "dog"}]
    assert ds.boxes(0).tolist() == [[5.5, 6, 7, 8]] and ds.category_ids(0).tolist() == [2]  # crowd dropped
    assert ds.boxes(1).dtype.name == "float32" and ds.boxes(1).shape == (2, 4)
    assert ds.category_ids(1).tolist() == [2, 5] and ds.category_ids(1).dtype.name == "int64"
    assert len(ds.annotations(0)) == 2  # raw, crowd included


def test_unlabeled_split_and_coco_plus(tmp_path):
    _write(tmp_path, "train2017", INSTANCES)
    unlabeled = {"images": [{"id": 99, "file_name": "u.jpg", "width": 8, "height": 8}]}
    _write(tmp_path, "unlabeled2017", unlabeled, "image_info_unlabeled2017.json")
    train, extra = coco_plus(tmp_path)
    assert len(train) == 2 and len(extra) == 1
    assert extra.boxes(0).shape == (0, 4) and extra.category_ids(0).shape == (0,)


def test_ann_file_override(tmp_path):
    (tmp_path / "val2017").mkdir()
    custom = tmp_path / "elsewhere.json"
    custom.write_text(json.dumps(INSTANCES))
    assert len(CocoDataset(tmp_path, "val2017", ann_file=custom)) == 2


@pytest.mark.parametrize("missing", ["root", "images", "annotations"])
def test_missing_parts_name_the_layout(tmp_path, missing):
    root = _write(tmp_path / "coco", "train2017", INSTANCES)
    gone = {"root": root, "images": root / "train2017",
            "annotations": root / "annotations" / "instances_train2017.json"}[missing]
    if gone.is_dir():
        for p in sorted(gone.rglob("*"), reverse=True):
            p.unlink() if p.is_file() else p.rmdir()
        gone.rmdir()
    else:
        gone.unlink()
    with pytest.raises(DatasetLayoutError) as err:
        CocoDataset(root)
    assert str(gone) in str(err.value)
    assert "expected COCO layout" in str(err.value) and "instances_train2017.json" in str(err.value)
    assert isinstance(err.value, FileNotFoundError)


@pytest.mark.parametrize("content", ["{not json", json.dumps({"annotations": []}),
                                     json.dumps({"images": [{"id": 1}]}),
                                     json.dumps({"images": [], "annotations": [{"image_id": 3}]})])
def test_malformed_json(tmp_path, content):
    root = _write(tmp_path, "train2017", content)
    with pytest.raises(DatasetLayoutError, match="malformed.*expected a JSON object with `images`"):
        CocoDataset(root)
