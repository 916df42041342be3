"""The stage-2 box filter (docs/protocols.md 2.4) on hand-made boxes and on real photographs."""
from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch
from sklearn.datasets import load_sample_image
from torchvision.ops import nms

from orl_bench.methods.orl.boxes import BoxFilter, filter_boxes, scaled, xywh_to_xyxy
from orl_bench.methods.orl.proposals import selective_search


def iou(a, b) -> float:
    ix = max(0.0, min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[1] + a[3], b[1] + b[3]) - max(a[1], b[1]))
    inter = ix * iy
    return inter / (a[2] * a[3] + b[2] * b[3] - inter)


def reference(raw: np.ndarray, f: BoxFilter) -> list[list[float]]:
    """docs/protocols.md 2.4 in plain loops."""
    kept: list[list[float]] = []
    for box in raw.astype(float).tolist():
        w, h = box[2], box[3]
        if w < f.min_size or h < f.min_size or w / h > f.max_aspect_ratio or h / w > f.max_aspect_ratio:
            continue
        if all(iou(box, k) <= f.nms_iou for k in kept):
            kept.append(box)
    return kept[:f.max_boxes]


def rows(a: np.ndarray) -> list[list[float]]:
    return np.asarray(a, float).tolist()


def test_min_side_and_ratio_both_ways():
    raw = np.array([[0, 0, 95, 200], [0, 0, 200, 95], [0, 0, 96, 96],     # min side; 96 passes
                    [1000, 0, 300, 100], [2000, 0, 301, 100],               # ratio 3 passes, >3 not
                    [3000, 0, 100, 300], [4000, 0, 100, 301]], np.int32)
    assert rows(filter_boxes(raw, BoxFilter())) == [[0, 0, 96, 96], [1000, 0, 300, 100],
                                                   [3000, 0, 100, 300]]


def test_in_order_suppression_is_not_sorted_nms():
    a, b, c = [0, 0, 100, 100], [30, 0, 100, 100], [60, 0, 100, 100]
    assert iou(a, b) > 0.5 and iou(b, c) > 0.5 and iou(a, c) <= 0.5
    f = BoxFilter()
    # b is dropped against the kept a, so c is only compared with a and survives
    assert rows(filter_boxes(np.array([a, b, c]), f)) == [a, c]
    assert rows(filter_boxes(np.array([b, a, c]), f)) == [b]
    assert rows(filter_boxes(np.array([c, b, a]), f)) == [c, a]
    # score-sorted NMS with b scored best keeps b alone: a different rule
    keep = nms(torch.from_numpy(xywh_to_xyxy(np.array([a, b, c]))), torch.tensor([0.1, 0.9, 0.5]
                                                                                  ).double(), 0.5)
    assert keep.tolist() == [1]


def test_iou_equal_to_threshold_is_kept():
    a, b = [0, 0, 120, 100], [40, 0, 120, 100]
    assert iou(a, b) == 0.5
    assert rows(filter_boxes(np.array([a, b]), BoxFilter())) == [a, b]


def test_max_boxes_keeps_the_first():
    grid = np.array([[x * 200, y * 200, 100, 100] for y in range(5) for x in range(5)])
    assert rows(filter_boxes(grid, BoxFilter(max_boxes=3))) == rows(grid[:3])
    assert len(filter_boxes(grid, BoxFilter())) == 25


@pytest.mark.parametrize("fallback, expected", [("largest", [0, 0, 400, 100]), ("first", [0, 0, 10, 10])])
def test_fallback_when_nothing_survives(fallback, expected):
    raw = np.array([[0, 0, 10, 10], [5, 5, 50, 40], [0, 0, 20, 20], [0, 0, 400, 100]], np.int32)
    out = filter_boxes(raw, BoxFilter(fallback=fallback))  # too small, or ratio 4
    assert rows(out) == [expected] and out.dtype == np.int32


def test_empty_and_bad_input():
    assert filter_boxes(np.zeros((0, 4), np.int32), BoxFilter()).shape == (0, 4)
    with pytest.raises(ValueError, match="xywh"):
        filter_boxes(np.zeros((3, 5)), BoxFilter())
    with pytest.raises(ValueError, match="fallback"):
        BoxFilter(fallback="smallest")


def test_scaled_scales_only_the_pixel_threshold():
    f = scaled(BoxFilter(), 128, 480)
    assert f.min_size == pytest.approx(96 * 128 / 480)
    assert (f.max_aspect_ratio, f.nms_iou, f.max_boxes, f.fallback) == (3.0, 0.5, 100, "largest")


@pytest.fixture(scope="module")
def photo_proposals() -> list[np.ndarray]:
    """Selective search on the two photographs scikit-learn ships (427 x 640)."""
    return [selective_search(cv2.cvtColor(load_sample_image(name), cv2.COLOR_RGB2BGR))
            for name in ("china.jpg", "flower.jpg")]


@pytest.mark.parametrize("f", [BoxFilter(), BoxFilter(max_boxes=5), BoxFilter(min_size=64, nms_iou=0.3)])
def test_filter_on_photographs(photo_proposals, f):
    for raw in photo_proposals:
        assert raw.dtype == np.int32 and len(raw) > 100
        kept = filter_boxes(raw, f)
        assert rows(kept) == reference(raw, f)
        assert 1 <= len(kept) <= f.max_boxes
        w, h = kept[:, 2].astype(float), kept[:, 3].astype(float)
        assert (w >= f.min_size).all() and (h >= f.min_size).all()
        assert (w / h <= f.max_aspect_ratio).all() and (h / w <= f.max_aspect_ratio).all()
        pairwise = [iou(a, b) for i, a in enumerate(rows(kept)) for b in rows(kept)[i + 1:]]
        assert max(pairwise, default=0) <= f.nms_iou
        position = 0  # kept boxes appear in the raw list in the same order
        for box in rows(kept):
            while rows(raw[position:position + 1]) != [box]:
                position += 1
            position += 1
    assert len(filter_boxes(photo_proposals[0], BoxFilter())) > 5


def test_fallback_on_photograph(photo_proposals):
    raw = photo_proposals[0]
    out = filter_boxes(raw, BoxFilter(min_size=10_000))
    area = raw[:, 2].astype(float) * raw[:, 3]
    assert rows(out) == [rows(raw[int(np.argmax(area))])]
