"""Pretraining throughput: the data pipeline alone, the model step alone on in-memory batches
(the upper bound), and both together, for one method and recipe. Writes JSON with the device.
With train.augment=device the loader only decodes and draws parameters; the views are made in
the end-to-end step, and the bound is the model step on views made beforehand; device_views_only
is the batched augmentation alone, on one decoded batch already on the device.

    python benchmarks/perf/pretrain_throughput.py --method byol --recipe default --steps 30
"""
from __future__ import annotations

import argparse
import itertools
import json
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from orl_bench import pipeline
from orl_bench.data.batched_views import DecodedViews
from orl_bench.data.pretrain_dataset import EpochSampler, collate_skipping_unreadable
from orl_bench.data.sources import pretrain_images
from orl_bench.engine.distributed import DistInfo
from orl_bench.engine.optim import build_optimizer, scaled_lr
from orl_bench.engine.threads import torch_threads, training_threads
from orl_bench.engine.trainer import autocast, autocast_dtype, build_method, to_device
from orl_bench.io import atomic_write_json
from orl_bench.methods.base import Progress
from orl_bench.provenance import device_name, git_revision


def timed(fn, steps: int, warmup: int) -> float:
    for _ in range(warmup):
        fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(steps):
        fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter() - t0


def measure(method_name: str, recipe: str, overrides: list[str], steps: int, warmup: int, workdir: str) -> dict:
    """images/s of the data pipeline alone, the model step alone and both together."""
    cfg = pipeline.load_pretrain_config(method_name, recipe, overrides)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    info = DistInfo(0, 1, 0, device)
    if device.type == "cuda":  # peak memory of this measurement, not of earlier ones in the process
        torch.cuda.reset_peak_memory_stats()
    images = pretrain_images(cfg.data, Path(workdir))
    inputs, _ = pipeline.build_inputs(cfg, Path(workdir), info, overrides, images)  # ORL: stages 1-2
    method = build_method(cfg, info, inputs)
    b = cfg.train.batch_size
    dataset = method.make_dataset(images.paths)
    sampler = EpochSampler(len(dataset), b, cfg.train.seed)
    loader = DataLoader(dataset, batch_size=b, sampler=sampler, num_workers=cfg.train.num_workers,
                        collate_fn=collate_skipping_unreadable, pin_memory=device.type == "cuda",
                        persistent_workers=cfg.train.num_workers > 0, drop_last=True)

    def fresh_batches():
        """Every batch loaded anew: epochs advance rather than replaying stored batches."""
        for epoch in itertools.count():
            sampler.set_epoch(epoch)
            yield from loader

    batches = fresh_batches()
    first, _ = next(batches)
    in_memory = to_device(first, device, cfg.train.channels_last)
    decoded = in_memory if isinstance(in_memory, DecodedViews) else None
    if decoded is not None:  # the bound is the model step on views already made
        in_memory = method.device_views(decoded)
    optimizer = build_optimizer(method, cfg.optim, scaled_lr(cfg.optim, b))
    amp = autocast_dtype(cfg.train.amp, device)
    progress = Progress(0, 1000, 0)

    def model_step(batch) -> None:
        with autocast(device, amp):
            loss = method(batch, progress)["loss"]
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        method.after_step(progress)

    # the training process's thread policy (orl_bench/engine/threads.py), so the figures are the trainer's
    threads = training_threads(device, cfg.train.num_workers, cfg.train.cpu_threads)
    with torch_threads(threads):
        load_only = timed(lambda: next(batches), steps, warmup)
        first_model_step = timed(lambda: model_step(in_memory), 1, 0)  # with train.compile: the compiling
        model_only = timed(lambda: model_step(in_memory), steps, warmup)
        end_to_end = timed(lambda: model_step(to_device(next(batches)[0], device, cfg.train.channels_last)),
                           steps, warmup)
        # the batched augmentation alone: views of one decoded batch already on the device
        views_only = timed(lambda: method.device_views(decoded), steps, warmup) if decoded is not None else None
    n = steps * b
    return {
        "benchmark": "pretrain_throughput", "method": method_name, "recipe": recipe,
        "overrides": overrides, "arch": cfg.model.arch, "width": cfg.model.width, "batch": b,
        "view_size": cfg.method.get("views", {}).get("size"), "num_workers": cfg.train.num_workers,
        "augment": cfg.train.augment,
        "torch_threads": threads, "amp": str(amp),
        "images_per_s": {"data_only": round(n / load_only, 1), "model_only": round(n / model_only, 1),
                         "end_to_end": round(n / end_to_end, 1),
                         **({"device_views_only": round(n / views_only, 1)} if views_only else {})},
        "end_to_end_over_model_only": round(model_only / end_to_end, 3),
        "first_model_step_s": round(first_model_step, 2), "compile": cfg.train.compile,
        **({"peak_gpu_memory_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2)} if device.type == "cuda" else {}),
        "device": device_name(device), "git_revision": git_revision(), "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--method", default="byol")
    parser.add_argument("--recipe", default="default")
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--workdir", default="orl_bench_home")
    parser.add_argument("--out", default=None, help="default: results/perf/pretrain_<method>_<recipe>.json")
    args = parser.parse_args()
    result = measure(args.method, args.recipe, args.overrides, args.steps, args.warmup, args.workdir)
    out = Path(args.out or f"results/perf/pretrain_{args.method}_{args.recipe}.json")
    atomic_write_json(out, result)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
