"""Mask R-CNN on the embedded COCO scenes by both backends, side by side: the same pretrained
full-width backbone, data, schedule and sizes (benchmarks/coco_maskrcnn/backends.yaml), fine-tuned
and evaluated once by the built-in torchvision backend and once by detectron2's own trainer.
Each run is the CLI command a user types; the records of both give box and mask AP, the JSON
beside them says what each backend does differently.

    python benchmarks/detection_backends.py --workdir /tmp/backends \\
        --out results/embedded/detection_backends.json
"""
from __future__ import annotations

import argparse
import shlex
import subprocess
import sys
import time
from pathlib import Path

from orl_bench.provenance import save_benchmark_record
from orl_bench.results.records import load_records

BACKENDS = ("torchvision", "detectron2")
METRICS = [f"{kind}_{name}" for kind in ("box", "mask") for name in ("AP", "AP50", "AP75")]
# What the two runs do differently by construction (docs/protocols.md 5.6)
DIFFERENCES = {
    "precise_bn": "detectron2 re-estimates every BN's statistics over params.precise_bn_iters training batches "
                  "before testing (its PreciseBN hook, in the official configs); the built-in backend tests with "
                  "the running statistics",
    "roi_pooling": "detectron2 pools RoIs with ROIAlignV2 (aligned, adaptive sampling); torchvision's "
                   "MultiScaleRoIAlign with aligned=False and 2 samples per bin; mask targets alike "
                   "(detectron2 crops the bitmask with an aligned RoIAlign, torchvision with an unaligned one)",
    "box_losses": "detectron2's RPN and box regression use smooth L1 with beta 0 (L1); torchvision's beta 1/9",
    "resize": "detectron2 resizes the image with PIL in the loader (ResizeShortestEdge); torchvision by bilinear "
              "interpolation of the tensor inside the model",
    "initialisation": "each library initialises the FPN and the heads its own way (from params.seed in both): "
                      "detectron2's mask predictor starts from normal(std 0.001) weights, its box predictor from "
                      "normal(0.01) / normal(0.001), its head convs c2_msra / c2_xavier; torchvision's mask "
                      "predictor and head convs from Kaiming normal (fan-out)",
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--method", default="byol")
    parser.add_argument("--recipe", default="tiny",
                        help="the pretraining recipe (tiny: minutes at full width; the backbone is what both "
                             "backends start from, so its quality does not decide the comparison)")
    parser.add_argument("--width", type=int, default=64, help="the ResNet's stem width: 64 is torchvision's, "
                        "the only one detectron2 builds")
    parser.add_argument("--task-recipe", default="benchmarks/coco_maskrcnn/backends.yaml")
    parser.add_argument("--workdir", default="orl_bench_home")
    parser.add_argument("--out", default="results/embedded/detection_backends.json")
    args = parser.parse_args()
    runs = {}
    for backend in BACKENDS:
        command = [sys.executable, "-m", "orl_bench.cli", "run", "--method", args.method, "--recipe", args.recipe,
                   "--set", f"model.width={args.width}", "--task", "coco_maskrcnn", "--task-recipe",
                   args.task_recipe, "--set", f"task.params.backend={backend}", "--workdir", args.workdir]
        tic = time.perf_counter()
        done = subprocess.run(command, capture_output=True, text=True)
        if done.returncode:
            raise SystemExit(f"{backend} run failed ({done.returncode}): {done.stderr[-3000:]}")
        runs[backend] = {"command": shlex.join(["orl-bench", *command[3:]]),
                         "wall_s": round(time.perf_counter() - tic, 1)}
    records = [r for r in load_records(Path(args.workdir)) if r["task"] == "coco_maskrcnn" and r["method"] == args.method]
    for backend in BACKENDS:
        mine = {r["metric"]: r for r in records if r.get("backend") == backend}
        runs[backend].update({m: mine[m]["value"] for m in METRICS if m in mine},
                             eval_wall_s=next(iter(mine.values()))["wall_time_s"],
                             artifact=next(iter(mine.values()))["artifact_sha256"][:12])
    if runs["torchvision"]["artifact"] != runs["detectron2"]["artifact"]:
        raise SystemExit("the two backends evaluated different backbones")
    record = {"benchmark": "detection_backends", "method": args.method, "recipe": args.recipe, "width": args.width,
              "task_recipe": args.task_recipe, "command": shlex.join(["python", *sys.argv]), "runs": runs,
              "delta_detectron2_minus_torchvision": {m: round(runs["detectron2"][m] - runs["torchvision"][m], 2)
                                                     for m in METRICS if m in runs["detectron2"]},
              "differences": DIFFERENCES}
    save_benchmark_record(Path(args.out), record)


if __name__ == "__main__":
    main()
