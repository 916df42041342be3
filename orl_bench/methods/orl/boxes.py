"""The stage-2 box filter (docs/protocols.md 2.4): size, aspect ratio, in-order suppression, top-N.

Everything runs in proposal order. Selective search lists boxes roughly from fine to coarse
segment merges, and ORL keeps the *first* boxes that pass, so the suppression below is greedy in
that order, not the score-sorted NMS of detectors (proposals have no scores).
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from torchvision.ops import box_iou

from orl_bench.io import save_npz

FALLBACKS = ("largest", "first")


@dataclass(frozen=True)
class BoxFilter:
    """Thresholds in pixels of the original image.

    `fallback` picks the one box kept when nothing passes. "largest" (the default, docs/protocols.md 2.4)
    keeps the raw box of largest area. "first" is the official code's behaviour: the first raw
    box, which from selective search is often a tiny segment; offered to reproduce it exactly.
    """
    min_size: float = 96
    max_aspect_ratio: float = 3.0
    nms_iou: float = 0.5
    max_boxes: int = 100
    fallback: str = "largest"

    def __post_init__(self) -> None:
        if self.fallback not in FALLBACKS:
            raise ValueError(f"fallback must be one of {FALLBACKS}, got '{self.fallback}'")
        if self.max_boxes < 1 or self.max_aspect_ratio < 1 or not 0 <= self.nms_iou <= 1:
            raise ValueError(f"need max_boxes >= 1, max_aspect_ratio >= 1, 0 <= nms_iou <= 1; "
                             f"got {self}")


def scaled(f: BoxFilter, image_short_side: float, reference_short_side: float) -> BoxFilter:
    """The filter with its pixel threshold rescaled for smaller (embedded) images.

    Only `min_size` is in pixels; it scales linearly with the short side, so 96 px on COCO
    (short side ~480) becomes 25.6 px on 128 px scenes. Ratio and IoU are scale-free.
    """
    if image_short_side <= 0 or reference_short_side <= 0:
        raise ValueError(f"short sides must be positive, got {image_short_side}, "
                         f"{reference_short_side}")
    return replace(f, min_size=f.min_size * image_short_side / reference_short_side)


def xywh_to_xyxy(boxes: np.ndarray) -> np.ndarray:
    b = np.asarray(boxes, np.float64).reshape(-1, 4)
    return np.concatenate([b[:, :2], b[:, :2] + b[:, 2:]], axis=1)


def filter_boxes(raw_xywh: np.ndarray, f: BoxFilter) -> np.ndarray:
    """Kept rows of `raw_xywh` (same dtype), a subsequence of the proposal order.

    Drops boxes with w or h below `min_size` (and degenerate w or h <= 0, whose ratio is
    undefined), boxes with w/h or h/w above `max_aspect_ratio`, then walks the rest in order,
    dropping a box whose IoU with an already kept box exceeds `nms_iou`, and stops at
    `max_boxes`. If nothing survives, one raw box per `f.fallback`. An empty input (an unreadable
    image) gives an empty result: there is no box to fall back on.
    """
    raw = np.asarray(raw_xywh)
    if raw.ndim != 2 or raw.shape[1] != 4:
        raise ValueError(f"expected (n, 4) xywh boxes, got shape {raw.shape}")
    if len(raw) == 0:
        return raw.copy()
    w, h = raw[:, 2].astype(np.float64), raw[:, 3].astype(np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        ok = (w > 0) & (h > 0) & (w >= f.min_size) & (h >= f.min_size)
        ok &= (w / h <= f.max_aspect_ratio) & (h / w <= f.max_aspect_ratio)
    candidates = np.flatnonzero(ok)
    if len(candidates) == 0:
        pick = int(np.argmax(w * h)) if f.fallback == "largest" else 0
        return raw[[pick]].copy()
    xyxy = torch.from_numpy(xywh_to_xyxy(raw[candidates]))
    iou = box_iou(xyxy, xyxy).numpy()
    kept: list[int] = []
    for j in range(len(candidates)):
        if not kept or iou[j, kept].max() <= f.nms_iou:
            kept.append(j)
            if len(kept) == f.max_boxes:
                break
    return raw[candidates[kept]].copy()


def save_boxes(path: Path, boxes: list[np.ndarray]) -> None:
    """Per-image box arrays to one .npz (counts + concatenated rows), atomically."""
    save_npz(path, {"counts": np.array([len(b) for b in boxes], np.int64),
                    "boxes": np.concatenate(boxes or [np.zeros((0, 4), np.float32)])})


def load_boxes(path: Path) -> list[np.ndarray]:
    with np.load(path, allow_pickle=False) as z:
        counts, flat = z["counts"], z["boxes"]
    return np.split(flat, np.cumsum(counts)[:-1])
