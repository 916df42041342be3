"""Proposal sources: the resumable selective-search store, the official file, ground truth."""
from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from sklearn.datasets import load_sample_image

from orl_bench.data.coco import CocoDataset
from orl_bench.methods.orl import proposals
from orl_bench.methods.orl.proposals import (ProposalFileError, ProposalStore, compute_proposals,
                                             gt_proposals, import_official_proposals, load_all)


@pytest.fixture(scope="module")
def image_paths(tmp_path_factory) -> list[Path]:
    """Six small scenes of random rectangles (selective search takes ~10 ms on each)."""
    root = tmp_path_factory.mktemp("scenes")
    rng = np.random.default_rng(0)
    paths = []
    for i in range(6):
        img = np.full((72, 96, 3), rng.integers(0, 255, 3), np.uint8)
        for _ in range(4):
            x, y = rng.integers(0, 70), rng.integers(0, 50)
            cv2.rectangle(img, (int(x), int(y)), (int(x) + 25, int(y) + 20),
                          rng.integers(0, 255, 3).tolist(), -1)
        paths.append(root / f"{i:03d}.jpg")
        cv2.imwrite(str(paths[-1]), img)
    return paths


@pytest.fixture
def counted(monkeypatch) -> list[int]:
    """Counts selective-search calls made in this process."""
    calls: list[int] = []
    real = proposals.selective_search

    def counting(image_bgr):
        calls.append(1)
        return real(image_bgr)
    monkeypatch.setattr(proposals, "selective_search", counting)
    return calls


def test_store_resumes_and_recomputes_only_missing(image_paths, tmp_path, counted):
    store_dir = tmp_path / "ss"
    assert compute_proposals(image_paths, store_dir, workers=1) == []
    assert len(counted) == 6
    first = load_all(store_dir, 6)
    expected = [proposals.selective_search(cv2.imread(str(p))) for p in image_paths]
    assert all(np.array_equal(a, b) and a.dtype == np.int32 for a, b in zip(first, expected))
    counted.clear()
    compute_proposals(image_paths, store_dir, workers=1)  # a rerun after a finished run
    assert counted == []
    store = ProposalStore(store_dir)
    for i in (1, 4):  # as if the run had been killed before these were written
        store.path(i).unlink()
    compute_proposals(image_paths, store_dir, workers=1)
    assert len(counted) == 2
    assert all(np.array_equal(a, b) for a, b in zip(load_all(store_dir, 6), first))


def test_ranks_take_disjoint_shares(image_paths, tmp_path, counted):
    store = ProposalStore(tmp_path / "ss")
    compute_proposals(image_paths, store.root, workers=1, rank=1, world_size=2)
    assert [store.has(i) for i in range(6)] == [False, True] * 3
    with pytest.raises(FileNotFoundError, match=r"lacks 3 of 6 images \(positions \[0, 2, 4\]"):
        load_all(store.root, 6)
    compute_proposals(image_paths, store.root, workers=1, rank=0, world_size=2)
    assert len(counted) == 6 and len(load_all(store.root, 6)) == 6
    with pytest.raises(ValueError, match="rank"):
        compute_proposals(image_paths, store.root, workers=1, rank=2, world_size=2)


def test_process_pool_matches_in_process(image_paths, tmp_path):
    compute_proposals(image_paths[:4], tmp_path / "one", workers=1)
    compute_proposals(image_paths[:4], tmp_path / "two", workers=2)
    for a, b in zip(load_all(tmp_path / "one", 4), load_all(tmp_path / "two", 4)):
        assert np.array_equal(a, b)


def test_unreadable_image_is_stored_empty_and_reported(image_paths, tmp_path, counted):
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"not a jpeg")
    paths = [image_paths[0], bad]
    assert compute_proposals(paths, tmp_path / "ss", workers=1) == [1]
    assert compute_proposals(paths, tmp_path / "ss", workers=1) == [1]  # reported again
    assert len(counted) == 1
    assert load_all(tmp_path / "ss", 2)[1].shape == (0, 4)


def test_official_proposals_import(tmp_path):
    good = tmp_path / "ss.json"
    good.write_text(json.dumps({"bbox": [[[1, 2, 30, 40], [0, 0, 5, 6]], [], [[3.5, 4, 10, 10]]]}))
    boxes = import_official_proposals(good, 3)
    assert [b.shape for b in boxes] == [(2, 4), (0, 4), (1, 4)]
    assert boxes[0].dtype == np.float32 and boxes[2].tolist() == [[3.5, 4, 10, 10]]
    with pytest.raises(ProposalFileError, match="has 3 images, the dataset has 4"):
        import_official_proposals(good, 4)
    cases = {"not json {": "cannot read",
             json.dumps([[[1, 2, 3, 4]]]): '"bbox" list',
             json.dumps({"boxes": []}): '"bbox" list',
             json.dumps({"bbox": [[[1, 2, 3]]]}): "image 0: expected a list of",
             json.dumps({"bbox": [[[1, 2, 3, 4], [1, 2]]]}): "image 0: boxes are not",
             json.dumps({"bbox": [[[1, 2, 3, "x"]]]}): "image 0: boxes are not",
             json.dumps({"bbox": [[1, 2, 3, 4]]}): "image 0: expected a list of"}
    for text, message in cases.items():
        bad = tmp_path / "bad.json"
        bad.write_text(text)
        with pytest.raises(ProposalFileError, match=message):
            import_official_proposals(bad, 1)


def test_ground_truth_boxes(tmp_path):
    (tmp_path / "train2017").mkdir()
    (tmp_path / "annotations").mkdir()
    images = [{"id": 7, "file_name": "a.jpg", "width": 64, "height": 48},
              {"id": 3, "file_name": "b.jpg", "width": 80, "height": 60}]
    anns = [{"id": 1, "image_id": 7, "category_id": 1, "bbox": [1.5, 2, 10, 20], "iscrowd": 0},
            {"id": 2, "image_id": 3, "category_id": 1, "bbox": [0, 0, 30, 30], "iscrowd": 1}]
    (tmp_path / "annotations" / "instances_train2017.json").write_text(
        json.dumps({"images": images, "annotations": anns, "categories": [{"id": 1, "name": "x"}]}))
    boxes = gt_proposals(CocoDataset(tmp_path))
    assert boxes[0].tolist() == [[1.5, 2, 10, 20]]
    assert boxes[1].tolist() == [[0, 0, 80, 60]]  # only a crowd region: the whole image


def test_selective_search_order_does_not_depend_on_earlier_calls():
    """OpenCV ranks regions with the C rand(); the wrapper re-seeds it for every image."""
    china = cv2.cvtColor(load_sample_image("china.jpg"), cv2.COLOR_RGB2BGR)[::3, ::3].copy()
    flower = cv2.cvtColor(load_sample_image("flower.jpg"), cv2.COLOR_RGB2BGR)[::3, ::3].copy()
    first = proposals.selective_search(china)
    proposals.selective_search(flower)
    assert np.array_equal(proposals.selective_search(china), first)
