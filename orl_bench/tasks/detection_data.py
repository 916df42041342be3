"""COCO instance data for the Mask R-CNN benchmark (docs/protocols.md 5.6): the instances JSON
checked before any training, images with their targets as torchvision's detection models take
them, and box / mask AP by pycocotools' COCOeval."""
from __future__ import annotations

import contextlib
import io
from typing import Any

import numpy as np
import torch
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval
from torch.utils.data import Dataset
from torchvision.transforms.v2 import functional as TF

from orl_bench.data.coco import CocoDataset
from orl_bench.data.images import DatasetLayoutError, read_rgb

AP_NAMES = ("AP", "AP50", "AP75", "APs", "APm", "APl")  # COCOeval.stats[0:6]
_SHOWN = 5  # problems listed in an error


def check_instances(coco: CocoDataset) -> None:
    """Every non-crowd annotation has a segmentation, a box of positive size inside its image and
    a declared category; otherwise one error listing the first problems and how many there are."""
    declared = {c["id"] for c in coco.categories}
    problems = [] if declared else ["no `categories` declared"]
    for i, image in enumerate(coco.images):
        for ann in coco.annotations(i):
            where = f"annotation {ann.get('id', '?')} (image {image.id})"
            if "segmentation" not in ann:
                problems.append(f"{where} has no `segmentation` (polygons or RLE)")
            if ann.get("category_id") not in declared:
                problems.append(f"{where} has category_id {ann.get('category_id')!r}, not one of the declared "
                                f"{sorted(declared)[:10]}{'...' if len(declared) > 10 else ''}")
            box = ann.get("bbox")
            if not (isinstance(box, list) and len(box) == 4):
                problems.append(f"{where} has bbox {box!r}; expected [x, y, width, height]")
                continue
            x, y, w, h = box
            if w <= 0 or h <= 0 or x < 0 or y < 0 or x + w > image.width + 0.5 or y + h > image.height + 0.5:
                problems.append(f"{where} has bbox {box} outside its {image.width}x{image.height} image or empty")
    if problems:
        raise DatasetLayoutError(f"COCO instances {coco.ann_file}: {len(problems)} problems, e.g.\n  "
                                 + "\n  ".join(problems[:_SHOWN]))


def instance_masks(ann: dict, height: int, width: int) -> np.ndarray:
    """The (height, width) uint8 mask of one annotation's polygons or RLE."""
    seg = ann["segmentation"]
    if isinstance(seg, list):  # polygons
        rle = mask_utils.merge(mask_utils.frPyObjects(seg, height, width))
    elif isinstance(seg["counts"], list):  # uncompressed RLE
        rle = mask_utils.frPyObjects(seg, height, width)
    else:
        rle = seg
    return mask_utils.decode(rle)


class InstanceImages(Dataset):
    """(image in [0, 1], target) per image: boxes xyxy, labels 1..C in category-id order, masks.
    With a `flip_seed`, half of the images are mirrored (the 1x schedule's only augmentation
    besides scale), decided by (flip_seed, pass_index, image) alone: the same after a resume and
    in any loader worker."""

    def __init__(self, coco: CocoDataset, flip_seed: int | None = None):
        self.coco, self.flip_seed, self.pass_index = coco, flip_seed, 0
        self.label_of = {c["id"]: k + 1 for k, c in enumerate(coco.categories)}  # 0 is background

    def __len__(self) -> int:
        return len(self.coco)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        info = self.coco.images[i]
        image = TF.to_dtype(TF.pil_to_tensor(read_rgb(info.path)), torch.float32, scale=True)
        anns = [a for a in self.coco.annotations(i) if not a.get("iscrowd", 0)]
        boxes = torch.tensor([[x, y, x + w, y + h] for x, y, w, h in (a["bbox"] for a in anns)],
                             dtype=torch.float32).reshape(-1, 4)
        masks = torch.from_numpy(np.stack([instance_masks(a, info.height, info.width) for a in anns])
                                 if anns else np.zeros((0, info.height, info.width), np.uint8))
        target = {"boxes": boxes, "labels": torch.tensor([self.label_of[a["category_id"]] for a in anns],
                                                         dtype=torch.int64), "masks": masks}
        if self.flip_seed is not None and np.random.default_rng([self.flip_seed, self.pass_index, i]).random() < 0.5:
            image, masks = image.flip(-1), masks.flip(-1)
            boxes = torch.stack([info.width - boxes[:, 2], boxes[:, 1], info.width - boxes[:, 0], boxes[:, 3]], 1)
            target.update(boxes=boxes, masks=masks)
        return image, target


def pass_order(num_images: int, seed: int, pass_index: int) -> torch.Tensor:
    """The training order of one pass over the images, from (seed, pass) alone, so a resumed run
    and every rank draw the same one; both backends use it (the i-th global batch of a pass is
    its i-th run of batch_size images)."""
    return torch.randperm(num_images, generator=torch.Generator().manual_seed(seed * 1_000_003 + pass_index))


def _json_rle(rle: dict) -> dict:
    """pycocotools' RLE with its byte-string counts as text, as a COCO results JSON holds it."""
    return {**rle, "counts": rle["counts"].decode("ascii")}


def coco_results(outputs: list[dict[str, torch.Tensor]], image_ids: list[int], category_of: dict[int, int]
                 ) -> tuple[list[dict], list[dict]]:
    """torchvision Mask R-CNN outputs -> COCO result lists (boxes xywh; masks as RLE at 0.5)."""
    boxes, segms = [], []
    for out, image_id in zip(outputs, image_ids):
        for box, label, score, mask in zip(out["boxes"].tolist(), out["labels"].tolist(), out["scores"].tolist(),
                                           out["masks"]):
            x0, y0, x1, y1 = box
            common = {"image_id": image_id, "category_id": category_of[label], "score": score}
            boxes.append({**common, "bbox": [x0, y0, x1 - x0, y1 - y0]})
            segms.append({**common, "segmentation": _json_rle(
                mask_utils.encode(np.asfortranarray((mask[0] > 0.5).numpy().astype(np.uint8))))})
    return boxes, segms


def coco_ap(ann_file: str, results: list[dict], kind: str, image_ids: list[int] | None = None) -> dict[str, float]:
    """COCOeval's AP, AP50, AP75, APs, APm, APl (x 100) of `results` (`kind`: bbox or segm),
    over `image_ids` (default: every image of the annotation file). No results: all zero."""
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress
        truth = COCO(ann_file)
        if not results:
            return {name: 0.0 for name in AP_NAMES}
        evaluator = COCOeval(truth, truth.loadRes(results), kind)
        if image_ids is not None:
            evaluator.params.imgIds = image_ids
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    # COCOeval's -1 means "no ground truth in this size range": None, not a score of 0
    return {name: (100 * float(v) if v >= 0 else None) for name, v in zip(AP_NAMES, evaluator.stats[:6])}


def ground_truth_as_results(coco: CocoDataset) -> tuple[list[dict], list[dict]]:
    """Every non-crowd annotation as a detection of score 1 (the check that AP reads 100)."""
    boxes, segms = [], []
    for i, image in enumerate(coco.images):
        for ann in coco.annotations(i):
            if ann.get("iscrowd", 0):
                continue
            common: dict[str, Any] = {"image_id": image.id, "category_id": ann["category_id"], "score": 1.0}
            boxes.append({**common, "bbox": ann["bbox"]})
            segms.append({**common, "segmentation": _json_rle(
                mask_utils.encode(np.asfortranarray(instance_masks(ann, image.height, image.width))))})
    return boxes, segms


def chance_results(train: CocoDataset, val: CocoDataset, seed: int = 0, per_image: int = 100
                   ) -> tuple[list[dict], list[dict]]:
    """An uninformed detector: for every val image, `per_image` training annotations drawn at
    random (so categories, box sizes and positions follow the training set's frequencies), each
    box placed at its relative position in the val image, its mask the filled box, its score
    random. What a detector that never looks at the image scores."""
    pool = [(ann, image) for i, image in enumerate(train.images) for ann in train.annotations(i)
            if not ann.get("iscrowd", 0)]
    if not pool:
        raise ValueError(f"{train.ann_file} has no annotations to draw the chance level from")
    rng = np.random.default_rng(seed)
    boxes, segms = [], []
    for image in val.images:
        for pick, score in zip(rng.integers(len(pool), size=per_image), rng.random(per_image)):
            ann, source = pool[pick]
            x, y, w, h = ann["bbox"]
            sx, sy = image.width / source.width, image.height / source.height
            box = [x * sx, y * sy, w * sx, h * sy]
            common = {"image_id": image.id, "category_id": ann["category_id"], "score": float(score)}
            boxes.append({**common, "bbox": box})
            x0, y0, x1, y1 = box[0], box[1], box[0] + box[2], box[1] + box[3]
            segms.append({**common, "segmentation": _json_rle(
                mask_utils.frPyObjects([[x0, y0, x1, y0, x1, y1, x0, y1]], image.height, image.width)[0])})
    return boxes, segms
