"""The pair-quality diagnostic against hand-counted cases."""
import numpy as np
import pytest

from orl_bench.methods.orl.correspondence import Correspondences
from orl_bench.methods.orl.pair_quality import NO_OBJECT, box_labels, pair_quality


class FakeCoco:
    """The two CocoDataset methods pair_quality reads, over hand-written objects."""

    def __init__(self, objects):  # per image: [(x, y, w, h, category), ...]
        self.objects = objects

    def __len__(self):
        return len(self.objects)

    def boxes(self, i):
        return np.array([o[:4] for o in self.objects[i]], np.float32).reshape(-1, 4)

    def category_ids(self, i):
        return np.array([o[4] for o in self.objects[i]], np.int64)


def test_box_labels_take_the_best_overlap_above_the_threshold():
    gt, cats = np.array([[0, 0, 10, 10], [20, 0, 10, 10]], np.float32), np.array([7, 9])
    boxes = np.array([[0, 0, 10, 10], [21, 0, 10, 10], [0, 0, 30, 10], [50, 50, 5, 5]], np.float32)
    # IoU of box 3 with either object is 1/3 < 0.5; box 2 overlaps object 9 with IoU 9/11
    assert box_labels(boxes, gt, cats).tolist() == [7, 9, NO_OBJECT, NO_OBJECT]
    assert box_labels(boxes, gt[:0], cats[:0]).tolist() == [NO_OBJECT] * 4


def test_pair_quality_counts_pairs_by_hand():
    coco = FakeCoco([[(0, 0, 10, 10, 1), (20, 0, 10, 10, 2)], [(0, 0, 10, 10, 1)], [(0, 0, 10, 10, 2)]])
    boxes = [np.array([[0, 0, 10, 10], [20, 0, 10, 10], [40, 40, 5, 5]], np.float32),  # labels 1, 2, none
             np.array([[0, 0, 10, 10]], np.float32),  # label 1
             np.array([[0, 0, 10, 10], [30, 30, 9, 9]], np.float32)]  # labels 2, none
    knn = np.array([[1, 2], [0, 2], [0, 1]], np.int64)
    pairs = [[np.array([[0, 0], [1, 0]]), np.array([[1, 0], [2, 1]])],  # 1-1 same, 2-1 diff | 2-2 same, none-none
             [np.array([[0, 0]]), np.zeros((0, 2), np.int64)],  # 1-1 same
             [np.array([[0, 1]]), np.array([[1, 0]])]]  # 2-2 same | none-1
    c = Correspondences([0, 1, 2], ["a", "b", "c"], boxes, knn, [[p.astype(np.int64) for p in r] for r in pairs])
    q = pair_quality(c, [coco])
    # 7 pairs: both on objects in 5 (not the none-none and none-1 pairs), 4 of them the same category
    assert q["pairs"] == 7 and q["pairs_both_on_objects"] == pytest.approx(5 / 7, abs=1e-4)
    assert q["same_category_given_both"] == pytest.approx(4 / 5)
    # boxes: labels 1, 2, none, 1, 2, none -> 4 of 6 on objects; chance (2/4)^2 + (2/4)^2
    assert q["boxes_on_objects"] == pytest.approx(4 / 6, abs=1e-4) and q["chance_same_category"] == 0.5
    with pytest.raises(ValueError, match="2 images"):
        pair_quality(c, [FakeCoco(coco.objects[:2])])
