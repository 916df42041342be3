"""ORL stage-2 cost (issue 3): selective-search proposals per second per core, RoI embeddings per
second, and each step's share of the wall time. Stage 2 runs cold, in a fresh folder, with the
`orl` recipe's stage-2 settings on that recipe's images, so no step is read from a cache.
Writes JSON with the device and git revision.

    python benchmarks/perf/orl_stage2.py --stage1 ARTIFACT_DIR [--recipe default] [--images 500] [--set roi_size=112]
        [--recipe-set data.synth.height=480]
    python benchmarks/perf/orl_stage2.py --quick   # tiny stage 1 on 16 scenes: checks the harness
"""
from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

import torch

from orl_bench import pipeline
from orl_bench.config import apply_overrides, from_dict
from orl_bench.data.sources import pretrain_images
from orl_bench.engine.distributed import DistInfo
from orl_bench.io import atomic_write_json
from orl_bench.methods.orl.stage2 import Stage2Params, discover
from orl_bench.provenance import device_name, git_revision, now_iso

# --quick: a 1-epoch tiny BYOL on 16 scenes with the tiny recipe's stage 2; measures nothing worth keeping.
QUICK_DATA = "{height: 128, width: 128, coco_train: 16, coco_val: 0, voc_trainval: 0, voc_test: 0}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--stage1", help="a complete BYOL artifact folder (stage 1)")
    parser.add_argument("--quick", action="store_true", help="build a tiny stage 1 and data set")
    parser.add_argument("--recipe", default="default", help="the orl recipe whose stage-2 settings and data are used")
    parser.add_argument("--images", type=int, default=0, help="first N images only (0: all)")
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        help="Stage2Params field=value, e.g. --set workers=2")
    parser.add_argument("--recipe-set", dest="recipe_overrides", action="append", default=[],
                        help="override of the orl recipe itself, e.g. data.synth.height=480 to measure "
                             "on other images than the recipe's")
    parser.add_argument("--workdir", default="orl_bench_home")
    parser.add_argument("--out", default="results/perf/orl_stage2.json")
    args = parser.parse_args()
    if bool(args.stage1) == args.quick:
        parser.error("give exactly one of --stage1 and --quick")

    workdir = Path(args.workdir)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    info = DistInfo(0, 1, 0, device)
    recipe = "tiny" if args.quick else args.recipe
    overrides = ["train.epochs=1", f"data.synth={QUICK_DATA}"] if args.quick else args.recipe_overrides
    cfg = pipeline.load_pretrain_config("orl", recipe, overrides)
    if args.quick:
        stage1_cfg = pipeline.load_pretrain_config("byol", cfg.method["stage1"], overrides)
        stage1, _ = pipeline.ensure_pretrained(stage1_cfg, recipe, workdir, info)
    else:
        stage1 = Path(args.stage1)
    images = pretrain_images(cfg.data, workdir)
    subset = 0 < args.images < len(images.paths)
    paths = images.paths[:args.images] if subset else images.paths
    params = from_dict(Stage2Params, apply_overrides(cfg.method["stage2"], args.overrides), "stage2")

    with tempfile.TemporaryDirectory(dir=workdir, prefix="perf-orl-stage2-") as tmp:
        t0 = time.perf_counter()
        discover(stage1, paths, None if subset else images.coco, params, Path(tmp), info)
        wall = time.perf_counter() - t0
        run = json.loads((Path(tmp) / "stage2_timings.json").read_text())
    seconds = run["timings"]
    seconds["other"] = round(wall - sum(seconds.values()), 3)  # validation, file listing, set-up
    cores = min(params.workers, os.cpu_count() or 1)
    result = {
        "benchmark": "orl_stage2", "device": device_name(device), "git_revision": git_revision(),
        "torch_threads": torch.get_num_threads(), "cpu_count": os.cpu_count(),
        "timestamp": now_iso(), "quick": args.quick, "data": images.key, "images": len(paths),
        "recipe": recipe, "stage1": str(stage1), "params": asdict(params), "wall_s": round(wall, 2),
        "proposals_per_s_per_core": (round(len(paths) / seconds["proposals"] / cores, 3)
                                     if "proposals" in seconds else None),
        "roi_embeddings_per_s": round(run["roi_forward_images"] / seconds["roi_embeddings"], 2),
        "kept_boxes_per_image": round(run["kept_boxes"] / len(paths), 2),
        "unreadable_images": run["unreadable_images"],
        "seconds": seconds, "share": {k: round(v / wall, 4) for k, v in seconds.items()},
    }
    atomic_write_json(Path(args.out), result)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
