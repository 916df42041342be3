"""DenseCL at the embedded default scale: which map the dense loss uses. At 64 px views res5 is
2x2, so each query position picks among 4 key positions. Options: res5 or res4 (4x the positions)
at 64 px, and res5 at larger views. For each, from the default recipe: the grid; the model step
(forward, backward, AdamW) on an in-memory batch at the trainer's thread count; the views of one
batch as the loader makes them (decode + both views, PIL); and the losses of a short run (`--epochs`
from random weights, logged every step). MoCo v2's default step is timed beside them.

The CPU may be shared: the options are timed in turns, one step (or batch of views) each per
round, so a busy spell slows all of them; min and median over the rounds are reported. The
loader runs beside the model step, so a step takes about the larger of the two. Writes JSON.

    python benchmarks/perf/densecl_dense_layer.py --out results/perf/densecl_dense_layer_cpu.json
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch
from PIL import Image

from orl_bench import pipeline
from orl_bench.data.sources import pretrain_images
from orl_bench.engine.distributed import DistInfo
from orl_bench.engine.optim import build_optimizer, scaled_lr
from orl_bench.engine.threads import torch_threads, training_threads
from orl_bench.engine.trainer import build_method
from orl_bench.io import atomic_write_json
from orl_bench.methods.base import Progress
from orl_bench.provenance import device_name, git_revision, now_iso

CPU = DistInfo(0, 1, 0, torch.device("cpu"))
PAPER_VIEW, PAPER_BLUR = 224, (0.1, 2.0)  # the blur sigma scales with the view, as the default recipes'
OPTIONS = ("res5:64", "res4:64", "res5:96", "res5:128")


def option_overrides(option: str) -> list[str]:
    layer, size = option.split(":")
    blur = [round(s * int(size) / PAPER_VIEW, 2) for s in PAPER_BLUR]  # 64 px: the recipe's
    return [f"method.dense_layer={layer}", f"method.views.size={size}", f"method.views.blur_sigma={blur}"]


class Timed:
    """One method's training step on a fixed in-memory batch, and its loader's views of a batch."""

    def __init__(self, method_name: str, overrides: list[str], images: list[Path]):
        cfg = pipeline.load_pretrain_config(method_name, "default", overrides)
        self.method = build_method(cfg, CPU).train()
        self.size = self.method.params.views.size
        b = cfg.train.batch_size
        self.batch = tuple(torch.randn(b, 3, self.size, self.size) for _ in range(2))
        self.optimizer = build_optimizer(self.method, cfg.optim, scaled_lr(cfg.optim, b))
        self.views = self.method.view_transform()
        self.images = images[:b]
        self.step_s: list[float] = []
        self.views_s: list[float] = []

    def step(self) -> None:
        t0 = time.perf_counter()
        loss = self.method(self.batch, Progress(0, 1000, 0))["loss"]
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        self.method.after_step(Progress(0, 1000, 0))
        self.step_s.append(time.perf_counter() - t0)

    def make_views(self) -> None:
        t0 = time.perf_counter()
        for path in self.images:
            with Image.open(path) as image:
                self.views(image.convert("RGB"))
        self.views_s.append(time.perf_counter() - t0)

    def grid_side(self) -> int:
        with torch.no_grad():
            _, grid, _ = self.method.query(self.batch[0][:2])
        return round(grid.shape[2] ** 0.5)


def summary(seconds: list[float]) -> dict:
    return {"min": round(min(seconds), 3), "median": round(statistics.median(seconds), 3)}


def short_run(overrides: list[str], epochs: int, workdir: Path) -> dict:
    """Mean losses over the first and the last 10 steps of a run of `epochs` epochs."""
    cfg = pipeline.load_pretrain_config("densecl", "default", [*overrides, f"train.epochs={epochs}",
                                                               "train.log_every_steps=1"])
    folder, _ = pipeline.ensure_pretrained(cfg, "default", workdir, CPU)
    rows = [row for row in map(json.loads, (folder / "log.jsonl").read_text().splitlines()) if "loss" in row]

    def mean(part: list[dict], key: str) -> float:
        return round(sum(r[key] for r in part) / len(part), 4)

    return {"steps": len(rows), **{f"{key}_{end}": mean(part, key) for key in ("loss", "loss_global", "loss_dense")
                                   for end, part in (("first10", rows[:10]), ("last10", rows[-10:]))}}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--option", action="append", default=None, metavar="LAYER:SIZE",
                   help=f"dense_layer and view size (default: {' '.join(OPTIONS)})")
    p.add_argument("--rounds", type=int, default=8, help="timed turns of every option (after one warm-up)")
    p.add_argument("--epochs", type=int, default=1, help="length of the short run; 0: none")
    p.add_argument("--workdir", default="orl_bench_home")
    p.add_argument("--out", required=True)
    args = p.parse_args()
    options = args.option or list(OPTIONS)
    cfg = pipeline.load_pretrain_config("densecl", "default", [])
    images = pretrain_images(cfg.data, Path(args.workdir)).paths
    timed = {option: Timed("densecl", option_overrides(option), images) for option in options}
    timed["mocov2"] = Timed("mocov2", [], images)
    threads = training_threads(CPU.device, cfg.train.num_workers, cfg.train.cpu_threads)
    load_before = os.getloadavg()[0]
    with torch_threads(threads):
        for round_ in range(args.rounds + 1):
            for t in timed.values():
                t.step()
                t.make_views()
                if round_ == 0:  # warm-up
                    t.step_s.clear()
                    t.views_s.clear()
    load_after = os.getloadavg()[0]
    rows = []
    for option in options:
        t = timed[option]
        row = {"option": option, "dense_layer": t.method.params.dense_layer, "view_size": t.size,
               "grid_side": t.grid_side(), "model_step_s": summary(t.step_s), "loader_views_s": summary(t.views_s)}
        if args.epochs:
            row["short_run"] = short_run(option_overrides(option), args.epochs, Path(args.workdir))
        rows.append(row)
    reference = timed["mocov2"]
    result = {"benchmark": "densecl_dense_layer", "recipe": "default", "batch": cfg.train.batch_size,
              "torch_threads": threads, "rounds": args.rounds,
              # the machine's 1-minute load average when the timing began and ended (cores: os.cpu_count())
              "load_average": [round(load_before, 2), round(load_after, 2)], "cpu_count": os.cpu_count(),
              "command": "python benchmarks/perf/densecl_dense_layer.py " + " ".join(sys.argv[1:]),
              "options": rows,
              "mocov2_default": {"model_step_s": summary(reference.step_s),
                                 "loader_views_s": summary(reference.views_s)},
              "device": device_name(), "git_revision": git_revision(), "timestamp": now_iso()}
    atomic_write_json(Path(args.out), result)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
