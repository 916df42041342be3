"""CPU cost per RoI of ORL stage 2's crop-and-resize (`method.stage2.roi_crop`): the batched
`roi_align` on the decoded image tensor against the official per-box PIL crop and resize of the
PIL image, each with its normalisation, at the paper's sizes (640 x 480 image, boxes from 96 px,
224 px crops) and the embedded ones (128 px scenes, boxes from 26 px, 64 px crops), on one thread
and on all cores. Each figure is the fastest of a few passes, which sheds most of what other
processes on the machine cost. Writes a JSON record with the device.

    python benchmarks/perf/roi_crop.py --out results/perf/roi_crop_cpu.json
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from orl_bench.methods.orl.roi_embed import crop_rois, normalised, pil_crops
from orl_bench.provenance import save_benchmark_record

# (name, image height, width, smallest box side, crop size)
SCALES = (("paper", 480, 640, 96, 224), ("embedded", 128, 128, 26, 64))


def random_boxes(rng: np.random.Generator, n: int, height: int, width: int, min_side: int) -> np.ndarray:
    """(n, 4) whole-pixel xywh boxes inside the image, as selective search gives."""
    w, h = rng.uniform(min_side, width, n), rng.uniform(min_side, height, n)
    return np.round(np.stack([rng.uniform(0, width - w), rng.uniform(0, height - h), w, h], axis=1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rois", type=int, default=400, help="RoIs timed per scale, crop and thread count")
    parser.add_argument("--per-call", type=int, default=100, help="RoIs per call (an image's boxes are cropped at once)")
    parser.add_argument("--passes", type=int, default=3, help="timed passes over the RoIs; the fastest counts")
    parser.add_argument("--out", default="results/perf/roi_crop_cpu.json")
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    cpu, rows = torch.device("cpu"), []
    for threads in sorted({1, torch.get_num_threads()}):
        torch.set_num_threads(threads)
        for name, height, width, min_side, size in SCALES:
            pixels = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
            image, tensor = Image.fromarray(pixels), torch.from_numpy(pixels).permute(2, 0, 1).contiguous()
            boxes = random_boxes(rng, args.rois, height, width, min_side)
            row = {"scale": name, "image": [width, height], "crop_size": size, "threads": threads}
            for crop, run in (("roi_align", lambda b: crop_rois(tensor, b, size, cpu)),
                              ("pil", lambda b: normalised(pil_crops(image, b, size), cpu))):
                run(boxes[:10])  # warm-up
                seconds = []
                for _ in range(args.passes):
                    t0 = time.perf_counter()
                    for start in range(0, len(boxes), args.per_call):
                        run(boxes[start:start + args.per_call])
                    seconds.append(time.perf_counter() - t0)
                row[f"{crop}_ms_per_roi"] = round(min(seconds) / len(boxes) * 1000, 4)
            row["pil_over_roi_align"] = round(row["pil_ms_per_roi"] / row["roi_align_ms_per_roi"], 2)
            rows.append(row)
            print(row, flush=True)
    save_benchmark_record(Path(args.out), {"benchmark": "roi_crop", "rois": args.rois, "per_call": args.per_call,
                                           "passes": args.passes, "runs": rows})


if __name__ == "__main__":
    main()
