"""How object-like stage 2's RoI pairs are, measured against ground truth (COCO or the embedded
scenes): a diagnostic for the paper's premise that retrieved pairs often show the same kind of
object. Not part of the protocol; nothing trains from it.

A kept box is labelled with the category of the ground-truth object it overlaps best, if that
IoU is at least `min_iou`, else "no object". A pair is a same-category pair when both boxes carry
the same label. `chance` is the same-category rate of two independently drawn labelled boxes
(sum of squared label frequencies), the level a retrieval blind to objects would reach.
"""
from __future__ import annotations

import numpy as np
import torch
from torchvision.ops import box_convert, box_iou

from orl_bench.data.coco import CocoDataset
from orl_bench.methods.orl.correspondence import Correspondences

NO_OBJECT = -1


def box_labels(boxes: np.ndarray, gt_boxes: np.ndarray, gt_categories: np.ndarray,
               min_iou: float = 0.5) -> np.ndarray:
    """Per xywh box, the category of its best-overlapping ground-truth box (IoU >= min_iou), or -1."""
    if len(boxes) == 0 or len(gt_boxes) == 0:
        return np.full(len(boxes), NO_OBJECT, np.int64)
    iou = box_iou(box_convert(torch.as_tensor(boxes, dtype=torch.float64), "xywh", "xyxy"),
                  box_convert(torch.as_tensor(gt_boxes, dtype=torch.float64), "xywh", "xyxy"))
    best, which = iou.max(dim=1)
    labels = np.asarray(gt_categories, np.int64)[which.numpy()]
    return np.where(best.numpy() >= min_iou, labels, NO_OBJECT)


def pair_quality(c: Correspondences, coco: list[CocoDataset], min_iou: float = 0.5) -> dict[str, float]:
    """Shares of boxes on objects and of pairs of the same category, with the chance level."""
    sets = [(s, i) for s in coco for i in range(len(s))]
    if len(sets) != len(c):
        raise ValueError(f"the datasets hold {len(sets)} images, the correspondences {len(c)}")
    labels = [box_labels(boxes, s.boxes(i), s.category_ids(i), min_iou)
              for boxes, (s, i) in zip(c.boxes, sets, strict=True)]
    query, other = [], []
    for i, row in enumerate(c.pairs):
        for k, pairs in enumerate(row):
            query.append(labels[i][pairs[:, 0]])
            other.append(labels[int(c.knn[i, k])][pairs[:, 1]])
    query, other = np.concatenate(query or [np.zeros(0, np.int64)]), np.concatenate(other or [np.zeros(0, np.int64)])
    all_labels = np.concatenate(labels or [np.zeros(0, np.int64)])
    on_object = all_labels[all_labels != NO_OBJECT]
    both = (query != NO_OBJECT) & (other != NO_OBJECT)
    same = both & (query == other)
    freq = np.bincount(on_object)[np.unique(on_object)] / max(len(on_object), 1)
    return {"boxes": int(len(all_labels)), "boxes_on_objects": round(len(on_object) / max(len(all_labels), 1), 4),
            "pairs": int(len(query)), "pairs_both_on_objects": round(float(both.mean()) if len(query) else 0.0, 4),
            "same_category_given_both": round(float(same.sum() / max(both.sum(), 1)), 4),
            "chance_same_category": round(float((freq ** 2).sum()), 4)}
