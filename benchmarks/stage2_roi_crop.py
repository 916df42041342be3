"""How many of ORL's retrieved RoI pairs change when stage 2 crops each RoI as the official code
does (`method.stage2.roi_crop=pil`: a PIL crop and resize per box) instead of with the batched
`roi_align` (the default). Builds or reuses both stage-2 artifacts of an `orl` recipe (one stage 1,
shared proposals, so boxes and neighbours are the same), compares their (image, neighbour, query
box, neighbour box) pairs and, on scenes with ground truth, their pair quality. Writes JSON with
the command and the device.

    python benchmarks/stage2_roi_crop.py --recipe default --workdir /tmp/fidelity_wd \\
        --out results/embedded/stage2_roi_crop.json
"""
from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

import numpy as np
import torch

from orl_bench import pipeline
from orl_bench.engine.distributed import DistInfo
from orl_bench.methods.orl.correspondence import Correspondences
from orl_bench.methods.orl.pair_quality import pair_quality
from orl_bench.provenance import save_benchmark_record

CROPS = ("roi_align", "pil")


def pair_set(c: Correspondences) -> set[tuple[int, int, int, int]]:
    return {(i, int(c.knn[i, k]), int(q), int(b)) for i, row in enumerate(c.pairs)
            for k, pairs in enumerate(row) for q, b in pairs.tolist()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipe", default="default", help="the orl recipe")
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="recipe override (repeatable)")
    parser.add_argument("--workdir", default="orl_bench_home")
    parser.add_argument("--out", default="results/embedded/stage2_roi_crop.json")
    args = parser.parse_args()
    info = DistInfo(0, 1, 0, torch.device("cpu"))
    found: dict[str, tuple[Path, Correspondences]] = {}
    for crop in CROPS:
        overrides = [*args.overrides, f"method.stage2.roi_crop={crop}"]
        cfg = pipeline.load_pretrain_config("orl", args.recipe, overrides)
        images = pipeline.pretrain_images(cfg.data, Path(args.workdir))
        path = pipeline.build_inputs(cfg, Path(args.workdir), info, overrides, images)[0]["correspondences"]
        found[crop] = path, Correspondences.load(path, n_images=len(images.paths))
    (_, a), (_, b) = found["roi_align"], found["pil"]
    if not (np.array_equal(a.knn, b.knn) and all(np.array_equal(x, y) for x, y in zip(a.boxes, b.boxes, strict=True))):
        raise SystemExit("the two artifacts differ in boxes or neighbours: not the same stage 1 and proposals")
    pairs_a, pairs_b = pair_set(a), pair_set(b)
    lists = [(x, y) for row_a, row_b in zip(a.pairs, b.pairs, strict=True) for x, y in zip(row_a, row_b, strict=True)
             if len(x)]
    same = len(pairs_a & pairs_b)
    record = {
        "benchmark": "stage2_roi_crop", "recipe": args.recipe,
        "command": " ".join(["python", *map(shlex.quote, sys.argv)]),
        "artifacts": {crop: str(path.parent.name) for crop, (path, _) in found.items()},
        "images": len(a), "kept_boxes": int(sum(len(x) for x in a.boxes)),
        "pairs": {crop: len(s) for crop, s in zip(CROPS, (pairs_a, pairs_b), strict=True)},
        "pairs_identical": same, "pairs_changed": len(pairs_a) - same,
        "fraction_identical": round(same / max(len(pairs_a), 1), 4),
        "fraction_changed": round(1 - same / max(len(pairs_a), 1), 4),
        # per (image, neighbour): the same pairs in the same rank order, and the same top-ranked pair
        "neighbour_lists": len(lists),
        "fraction_lists_identical": round(float(np.mean([np.array_equal(x, y) for x, y in lists])), 4),
        "fraction_top_pair_identical": round(float(np.mean([np.array_equal(x[0], y[0]) for x, y in lists])), 4),
    }
    if images.coco and all(s.categories for s in images.coco):  # ground truth to judge the pairs by
        record["pair_quality"] = {crop: pair_quality(c, images.coco) for crop, (_, c) in found.items()}
    save_benchmark_record(Path(args.out), record, info.device)


if __name__ == "__main__":
    main()
