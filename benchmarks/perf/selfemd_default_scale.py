"""Self-EMD at the embedded default scale: which map the EMD matches, at which view size.

At 64 px views res5 is 2 x 2, so the EMD matches 4 nodes a view. The options compared: res5 at
64, 96 and 128 px views (4, 9, 16 nodes), res4 at 64 px (16 nodes), and BYOL at 64 px for the
cost of the step without the dense branch. Per option:
- s/step of the model step (forward, backward, update, EMA) on an in-memory batch and s/batch of
  making a batch's views in this process, under the trainer's thread policy. The options take
  turns step by step and the median is kept, so load from other processes on a shared CPU
  weighs on every option alike (the load averages are recorded).
- nodes a view, and a short run from initialisation on the default recipe's schedule (its
  warm-up included) logging the loss terms and the matching gain: sum(plan * cos) - sum(a b^T *
  cos), what the transport plan gains over pairing the nodes by their masses alone (0 with one
  node a view, where EMD is the cosine of the mean embeddings).
Writes JSON with the device.

    python benchmarks/perf/selfemd_default_scale.py --rounds 7 --run-steps 20
"""
from __future__ import annotations

import argparse
import itertools
import os
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from orl_bench import pipeline
from orl_bench.config import PretrainConfig
from orl_bench.data.pretrain_dataset import EpochSampler, collate_skipping_unreadable
from orl_bench.data.sources import pretrain_images
from orl_bench.engine.distributed import DistInfo
from orl_bench.engine.optim import build_optimizer, lr_at, scaled_lr, set_lr
from orl_bench.engine.threads import torch_threads, training_threads
from orl_bench.engine.trainer import build_method, seed_globals, to_device
from orl_bench.methods.base import Method, Progress
from orl_bench.methods.selfemd import SelfEMD, node_masses, per_position
from orl_bench.methods.sinkhorn import transported_cosine
from orl_bench.provenance import save_benchmark_record


def views_at(size: int) -> list[str]:
    """Views of `size` px with the blur sigma scaled from the paper's (0.1, 2.0) at 224 px."""
    return [f"method.views.size={size}", f"method.views.blur_sigma=[{0.1 * size / 224:.3f},{2.0 * size / 224:.3f}]"]


OPTIONS = {  # label -> (method, overrides of its default recipe)
    "byol_64px": ("byol", []),
    "selfemd_res5_64px": ("selfemd", ["method.dense_layer=res5", *views_at(64)]),
    "selfemd_res4_64px": ("selfemd", ["method.dense_layer=res4", *views_at(64)]),
    "selfemd_res5_96px": ("selfemd", ["method.dense_layer=res5", *views_at(96)]),
    "selfemd_res5_128px": ("selfemd", ["method.dense_layer=res5", *views_at(128)]),
}


class Trial:
    """One option's method, optimizer and batches (made in this process) on `device`."""

    def __init__(self, cfg: PretrainConfig, device: torch.device, workdir: Path):
        self.cfg, self.device = cfg, device
        self.method: Method = build_method(cfg, DistInfo(0, 1, 0, device))
        images = pretrain_images(cfg.data, workdir)
        b = cfg.train.batch_size
        sampler = EpochSampler(len(images.paths), b, cfg.train.seed)
        self.steps_per_epoch = sampler.steps_per_epoch
        loader = DataLoader(self.method.make_dataset(images.paths), batch_size=b, sampler=sampler,
                            collate_fn=collate_skipping_unreadable, drop_last=True)
        self.batches = self.epochs(loader, sampler)
        self.peak = scaled_lr(cfg.optim, b)
        self.optimizer = build_optimizer(self.method, cfg.optim, self.peak)
        self.method.train()

    def epochs(self, loader: DataLoader, sampler: EpochSampler):
        """Batches on the device, epoch after epoch."""
        for epoch in itertools.count():
            sampler.set_epoch(epoch)
            for batch, _ in loader:
                yield to_device(batch, self.device, self.cfg.train.channels_last)

    def step(self, batch, step: int) -> dict[str, float]:
        """One training step as the trainer takes it, on the recipe's learning-rate schedule."""
        cfg = self.cfg
        max_steps = cfg.train.epochs * self.steps_per_epoch
        seed_globals(cfg.train.seed, step)
        set_lr(self.optimizer, lr_at(step, max_steps, round(cfg.optim.warmup_epochs * self.steps_per_epoch),
                                     self.peak, cfg.optim.final_lr_fraction))
        progress = Progress(step, max_steps, 0)
        losses = self.method(batch, progress)
        self.optimizer.zero_grad(set_to_none=True)
        losses["loss"].backward()
        self.optimizer.step()
        self.method.after_step(progress)
        return {k: round(v.item(), 4) for k, v in losses.items()}  # .item() waits for the device


@torch.no_grad()
def matching_gain(method: SelfEMD, views: tuple[torch.Tensor, torch.Tensor]) -> tuple[int, float]:
    """(nodes a view, the batch's mean of sum(plan * cos) - sum(a b^T * cos) over both directions)."""
    p = method.params
    online = [method.embed(method.backbone, method.projector, method.dense_projector, v)[1] for v in views]
    preds = [per_position(method.dense_predictor, d) for d in online]
    backbone, projector = method.target
    targets = [method.embed(backbone, projector, method.dense_target, v)[1] for v in views]
    gains = []
    for u, v in ((preds[0], targets[1]), (preds[1], targets[0])):
        a, b = node_masses(u, v, p.node_weights), node_masses(v, u, p.node_weights)
        cos = F.normalize(u.float(), dim=-1) @ F.normalize(v.float(), dim=-1).transpose(1, 2)
        by_mass = (a[:, :, None] * b[:, None, :] * cos).sum(dim=(1, 2))
        gains.append((transported_cosine(u, v, a, b, p.sinkhorn_eps, p.sinkhorn_iters) - by_mass).mean())
    return u.shape[1], round(float(sum(gains) / 2), 5)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=7, help="timed steps and batches of each option")
    parser.add_argument("--run-steps", type=int, default=20, help="steps of each short run (0: none)")
    parser.add_argument("--options", nargs="*", default=list(OPTIONS), choices=list(OPTIONS))
    parser.add_argument("--workdir", default="orl_bench_home")
    parser.add_argument("--out", default=None, help="default: results/perf/selfemd_default_scale_<cpu|cuda>.json")
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    configs = {label: pipeline.load_pretrain_config(name, "default", overrides)
               for label, (name, overrides) in OPTIONS.items() if label in args.options}
    first = next(iter(configs.values())).train
    threads = training_threads(device, first.num_workers, first.cpu_threads)
    load_before = os.getloadavg()
    rows: dict[str, dict] = {}
    with torch_threads(threads):
        trials = {label: Trial(cfg, device, Path(args.workdir)) for label, cfg in configs.items()}
        timings = {label: {"model": [], "views": []} for label in trials}
        for label, trial in trials.items():  # untimed: first-call allocations
            trial.step(next(trial.batches), 0)
        for _ in range(args.rounds):
            for label, trial in trials.items():
                t0 = time.perf_counter()
                batch = next(trial.batches)
                t1 = time.perf_counter()
                trial.step(batch, 0)
                timings[label]["views"].append(t1 - t0)
                timings[label]["model"].append(time.perf_counter() - t1)
        for label, trial in trials.items():
            rows[label] = {"overrides": OPTIONS[label][1], "batch": trial.cfg.train.batch_size,
                           **{f"{k}_s": round(statistics.median(v), 3) for k, v in timings[label].items()},
                           **{f"{k}_s_all": [round(x, 3) for x in v] for k, v in timings[label].items()}}
        for label, cfg in configs.items():
            if not args.run_steps:
                break
            trial = Trial(cfg, device, Path(args.workdir))  # from initialisation again
            first_batch = next(trial.batches)
            run: dict = {}
            if isinstance(trial.method, SelfEMD):
                run["nodes_per_view"], run["matching_gain_at_init"] = matching_gain(trial.method, first_batch)
            run["losses"] = [trial.step(batch, step) for step, batch in
                             zip(range(args.run_steps), itertools.chain([first_batch], trial.batches))]
            if isinstance(trial.method, SelfEMD):
                run["matching_gain_after"] = matching_gain(trial.method, first_batch)[1]
            rows[label]["short_run"] = run
            print(label, {k: v for k, v in rows[label].items() if not k.endswith("_all")}, flush=True)
    save_benchmark_record(
        Path(args.out or f"results/perf/selfemd_default_scale_{device.type}.json"),
        {"benchmark": "selfemd_default_scale", "recipe": "default", "rounds": args.rounds,
         "run_steps": args.run_steps, "torch_threads": threads, "load_average_before": load_before,
         "load_average_after": os.getloadavg(), "options": rows}, device)


if __name__ == "__main__":
    main()
