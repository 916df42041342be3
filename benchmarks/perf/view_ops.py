"""CPU cost of one view's augmentation, on PIL images (what the loaders run) against the same
chain on uint8 tensors, at the embedded (32, 64 px) and paper (96, 224 px) view sizes, one
thread. On 2 cores the loader worker is what bounds embedded pretraining (an ORL stage-3 sample
is 2 views + 4 patches), so this is where its time goes. Writes a JSON record with the device.

    python benchmarks/perf/view_ops.py --out results/perf/view_ops.json
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torchvision.transforms import v2

from orl_bench.data.views import ViewParams, normalize, photometric
from orl_bench.provenance import save_benchmark_record


def per_call_ms(fn, inputs: list, repeats: int) -> float:
    for x in inputs[:10]:  # warm-up
        fn(x)
    t0 = time.perf_counter()
    for r in range(repeats):
        fn(inputs[r % len(inputs)])
    return (time.perf_counter() - t0) / repeats * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[32, 64, 96, 224])
    parser.add_argument("--repeats", type=int, default=400, help="views timed per size and input type")
    parser.add_argument("--out", default="results/perf/view_ops.json")
    args = parser.parse_args()
    torch.set_num_threads(1)
    rng = np.random.default_rng(0)
    rows = []
    for size in args.sizes:
        # the photometric chain of view 1 (colour jitter at p 0.8, grayscale, blur always) plus normalisation
        chain = v2.Compose([*photometric(ViewParams(size=size), 1, size), normalize()])
        images = [Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)) for _ in range(32)]
        tensors = [v2.functional.pil_to_tensor(im) for im in images]
        torch.manual_seed(0)
        pil_ms = per_call_ms(chain, images, args.repeats)
        torch.manual_seed(0)
        tensor_ms = per_call_ms(chain, tensors, args.repeats)
        rows.append({"size": size, "pil_ms": round(pil_ms, 3), "tensor_ms": round(tensor_ms, 3),
                     "tensor_over_pil": round(tensor_ms / pil_ms, 2)})
        print(rows[-1], flush=True)
    save_benchmark_record(Path(args.out), {"benchmark": "view_ops", "threads": 1, "runs": rows})


if __name__ == "__main__":
    main()
