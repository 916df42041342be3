"""How object-like ORL's stage-2 boxes are on a scene design, without training anything: selective
search on a sample of generated scenes, the stage-2 box filter of an ORL recipe, then the share of
kept boxes that lie on an object (IoU >= 0.5 with a ground-truth box) and the share of objects
that some kept box covers. A minute per variant on 2 cores, against ~20 for an ORL run, so scene
designs can be screened for ORL before they are trained on (results/embedded/range_search.md).
Variants may also change the stage-2 filter (`method.stage2.*`); those reuse the search's boxes.

    python benchmarks/proposal_quality.py --variants benchmarks/proposal_screen.yaml \\
        --images 300 --out results/embedded/proposal_quality.json
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import cv2
import numpy as np
import yaml

from orl_bench import pipeline
from orl_bench.config import config_hash
from orl_bench.data.coco import CocoDataset
from orl_bench.data.sources import pretrain_images
from orl_bench.methods.orl.boxes import filter_boxes, xywh_to_xyxy
from orl_bench.methods.orl.pair_quality import NO_OBJECT, box_labels
from orl_bench.methods.orl.proposals import selective_search
from orl_bench.provenance import save_benchmark_record
from orl_bench.registry import METHODS


def proposals_of(path: Path) -> np.ndarray:
    return selective_search(cv2.imread(str(path), cv2.IMREAD_COLOR))


MISSES = ("part", "group", "background", "other")


def miss_kind(box: np.ndarray, gt: np.ndarray) -> str:
    """Why a kept xyxy box is not on an object: it lies within one object (`part`: >= 80% of it
    inside that object's box), holds two or more objects' centres (`group`), overlaps objects for
    under 20% of its area (`background`), or none of these (`other`: straddles an object's edge)."""
    if len(gt) == 0:
        return "background"
    inter_w = np.clip(np.minimum(box[2], gt[:, 2]) - np.maximum(box[0], gt[:, 0]), 0, None)
    inter_h = np.clip(np.minimum(box[3], gt[:, 3]) - np.maximum(box[1], gt[:, 1]), 0, None)
    inside = inter_w * inter_h / max((box[2] - box[0]) * (box[3] - box[1]), 1e-9)
    centres = (gt[:, :2] + gt[:, 2:]) / 2
    held = ((centres >= box[:2]) & (centres <= box[2:])).all(axis=1).sum()
    if inside.max() >= 0.8:
        return "part"
    if held >= 2:
        return "group"
    if inside.sum() < 0.2:
        return "background"
    return "other"


def measure(name: str, overrides: list[str], recipe: str, n_images: int, workers: int,
            searched: dict[str, tuple[list[np.ndarray], float]]) -> dict:
    """One variant's row. `searched` keeps selective search's output per data config, so variants
    that change only the stage-2 filter reuse it."""
    # Scenes are drawn per index, so the first n of a smaller set are the recipe's first n.
    counts = [f"data.synth.{k}={v}" for k, v in (("coco_train", n_images), ("coco_val", 0), ("coco_unlabeled", 0),
                                                 ("voc_trainval", 0), ("voc_test", 0))]
    cfg = pipeline.load_pretrain_config("orl", recipe, overrides + counts)
    params = METHODS.get("orl").params_of(cfg).stage2
    with tempfile.TemporaryDirectory(prefix="proposal-quality-") as workdir:
        images = pretrain_images(cfg.data, Path(workdir))
        coco: CocoDataset = images.coco[0]
        n = len(coco)
        key = config_hash(cfg.data)
        if key not in searched:
            t0 = time.perf_counter()
            with ProcessPoolExecutor(workers) as pool:
                searched[key] = list(pool.map(proposals_of, images.paths, chunksize=8)), time.perf_counter() - t0
        raw, seconds = searched[key]
        kept, on_object, covered, objects = 0, 0, 0, 0
        misses = dict.fromkeys(MISSES, 0)
        for i, image in enumerate(coco.images):
            keep = filter_boxes(raw[i], params.filter_for(image.width, image.height)).astype(np.float64)
            gt = coco.boxes(i)
            off = box_labels(keep, gt, coco.category_ids(i)) == NO_OBJECT
            on_object += int((~off).sum())
            for box in keep[off]:
                misses[miss_kind(xywh_to_xyxy(box)[0], xywh_to_xyxy(gt))] += 1
            # an object is covered when some kept box overlaps it with IoU >= 0.5
            covered += int((box_labels(gt, keep, np.arange(len(keep))) != NO_OBJECT).sum())
            kept, objects = kept + len(keep), objects + len(gt)
    return {"variant": name, "images": n, "raw_boxes_per_image": round(sum(map(len, raw)) / n, 1),
            "kept_boxes_per_image": round(kept / n, 1), "kept_on_objects": round(on_object / max(kept, 1), 4),
            "objects_covered": round(covered / max(objects, 1), 4),
            "kept_off_objects": {k: round(v / max(kept, 1), 4) for k, v in misses.items()},
            "selective_search_s_per_image": round(seconds * workers / n, 4)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variants", required=True, help="YAML: variant name -> {overrides: {dotted.key: value}}")
    parser.add_argument("--only", nargs="*", help="just these variants (default: all)")
    parser.add_argument("--recipe", default="default", help="ORL recipe whose stage-2 filter and data are used")
    parser.add_argument("--images", type=int, default=300, help="scenes sampled from the start of the pretraining set")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    variants = yaml.safe_load(Path(args.variants).read_text())
    names = args.only or list(variants)
    if unknown := sorted(set(names) - set(variants)):
        sys.exit(f"unknown variants {unknown}; {args.variants} defines {sorted(variants)}")
    if args.images < 1 or args.workers < 1:
        sys.exit(f"--images and --workers must be >= 1, got {args.images} and {args.workers}")
    rows, searched = [], {}
    for name in names:
        # the scenes and the stage-2 filter; other keys (training) do not change the boxes
        overrides = [f"{k}={json.dumps(v)}" for k, v in (variants[name].get("overrides") or {}).items()
                     if k.startswith(("data.", "method.stage2."))]
        rows.append(measure(name, overrides, args.recipe, args.images, args.workers, searched))
        # after every variant, so an interrupted screen keeps what it measured
        save_benchmark_record(Path(args.out), {"benchmark": "proposal_quality", "recipe": args.recipe, "runs": rows})


if __name__ == "__main__":
    main()
