"""Throughput of the embedded scene generator (target: >= 200 images/s per core at the default
size, JPEG encoding and annotations included). Writes a JSON record with the device.

    python benchmarks/perf/synth_generation.py --workers 1 2 --out results/perf/synth_generation.json
"""
from __future__ import annotations

import argparse
import resource
import shutil
import tempfile
import time
from dataclasses import asdict, replace
from pathlib import Path

from orl_bench.data.synth import SynthSpec, ensure_synth
from orl_bench.provenance import save_benchmark_record


def cpu_seconds() -> float:
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def measure(spec: SynthSpec, workers: int) -> dict:
    folder = Path(tempfile.mkdtemp(prefix="synth-perf-"))
    try:
        cpu0, t0 = cpu_seconds(), time.perf_counter()
        ensure_synth(spec, folder, workers=workers)
        wall, cpu = time.perf_counter() - t0, cpu_seconds() - cpu0
    finally:
        shutil.rmtree(folder)
    images = spec.coco_train + spec.coco_val + spec.coco_unlabeled + spec.voc_trainval + spec.voc_test
    return {"workers": workers, "images": images, "wall_s": round(wall, 2),
            "images_per_s": round(images / wall, 1), "images_per_cpu_s": round(images / cpu, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--images", type=int, default=0, help="override the default spec's image counts "
                                                              "(split 40/10/25/25) for a quicker run")
    parser.add_argument("--out", default="results/perf/synth_generation.json")
    args = parser.parse_args()
    spec = SynthSpec()
    if args.images:
        n = args.images
        spec = replace(spec, coco_train=int(0.4 * n), coco_val=int(0.1 * n), voc_trainval=n // 4, voc_test=n // 4)
    runs = [measure(spec, w) for w in args.workers]
    save_benchmark_record(Path(args.out), {"benchmark": "synth_generation", "spec": asdict(spec), "runs": runs,
                                           "target_images_per_core_s": 200})


if __name__ == "__main__":
    main()
