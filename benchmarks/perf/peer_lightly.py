"""orl-bench beside lightly: end-to-end pretraining throughput of BYOL, SimCLR and MoCo v2 at
identical settings, in one process, one method after the other, with orl-bench's model-only bound.

"Identical settings" is what an orl-bench recipe fixes: the same torchvision ResNet at the same
width, the same images, view size, augmentation probabilities and strengths, batch size, loader
workers, head widths, optimiser (the recipe's, built for both sides by orl-bench's build_optimizer) and
autocast dtype (the recipe's train.amp: bf16 on a GPU, none on a CPU). lightly's
side is written the way lightly's own examples train these methods: its LightlyDataset over the
image folder, its per-sample PIL transforms (BYOLTransform, SimCLRTransform, MoCoV2Transform), its
heads, losses and momentum helpers, a plain PyTorch loop. Each side runs with its own defaults
beyond that (orl-bench: channels_last and its thread policy; lightly: torch's defaults).

    python benchmarks/perf/peer_lightly.py --recipe default --out results/perf/peer_lightly_cpu.json

lightly is a test/benchmark extra (pip install -e ".[test]"), never a dependency of the package.
"""
from __future__ import annotations

import argparse
import copy
import itertools
import json
import os
import sys
import time
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader

sys.path.insert(0, str(Path(__file__).resolve().parent))
from pretrain_throughput import measure, timed  # noqa: E402  (a sibling script, not a package)

from orl_bench import pipeline  # noqa: E402
from orl_bench.data.sources import pretrain_images  # noqa: E402
from orl_bench.engine.optim import build_optimizer, scaled_lr  # noqa: E402
from orl_bench.engine.threads import torch_threads  # noqa: E402
from orl_bench.engine.trainer import autocast, autocast_dtype  # noqa: E402
from orl_bench.io import atomic_write_json  # noqa: E402
from orl_bench.models.backbones import build_backbone  # noqa: E402
from orl_bench.provenance import device_name, git_revision  # noqa: E402
from orl_bench.registry import METHODS  # noqa: E402

METHODS_COMPARED = ("byol", "simclr", "mocov2")


def lightly_transform(method: str, views):
    """lightly's transform for `method`, set to orl-bench's view parameters."""
    from lightly.transforms import BYOLTransform, BYOLView1Transform, BYOLView2Transform, MoCoV2Transform, SimCLRTransform
    b, c, s, h = views.color_jitter
    common = dict(input_size=views.size, cj_prob=views.color_jitter_p, cj_strength=1.0, cj_bright=b, cj_contrast=c,
                  cj_sat=s, cj_hue=h, min_scale=views.scale[0], random_gray_scale=views.grayscale_p,
                  sigmas=tuple(views.blur_sigma), hf_prob=views.hflip_p)
    if method == "byol":
        return BYOLTransform(BYOLView1Transform(**common, gaussian_blur=views.blur_p[0], solarization_prob=views.solarize_p[0]),
                             BYOLView2Transform(**common, gaussian_blur=views.blur_p[1], solarization_prob=views.solarize_p[1]))
    if method == "simclr":
        return SimCLRTransform(**common, gaussian_blur=views.blur_p[0])
    return MoCoV2Transform(**common, gaussian_blur=views.blur_p[0])


class LightlyModel(nn.Module):
    """The method as lightly's examples build it, around orl-bench's backbone."""

    def __init__(self, method: str, backbone: nn.Module, features: int, p):
        from lightly.loss import NegativeCosineSimilarity, NTXentLoss
        from lightly.models.modules import (BYOLPredictionHead, BYOLProjectionHead, MoCoProjectionHead,
                                            SimCLRProjectionHead)
        from lightly.models.utils import deactivate_requires_grad
        super().__init__()
        self.method, self.backbone = method, backbone
        if method == "byol":
            self.projection = BYOLProjectionHead(features, p.hidden_dim, p.proj_dim)
            self.prediction = BYOLPredictionHead(p.proj_dim, p.hidden_dim, p.proj_dim)
            self.criterion = NegativeCosineSimilarity()
        elif method == "simclr":
            self.projection = SimCLRProjectionHead(features, p.hidden_dim, p.proj_dim)
            self.criterion = NTXentLoss(temperature=p.temperature)
        else:
            self.projection = MoCoProjectionHead(features, p.hidden_dim, p.proj_dim)
            self.criterion = NTXentLoss(temperature=p.temperature, memory_bank_size=(p.queue_size, p.proj_dim))
        if method != "simclr":  # the momentum (target / key) encoder
            self.backbone_momentum = copy.deepcopy(backbone)
            self.projection_momentum = copy.deepcopy(self.projection)
            deactivate_requires_grad(self.backbone_momentum)
            deactivate_requires_grad(self.projection_momentum)
        self.momentum = getattr(p, "base_momentum", getattr(p, "momentum", 0.99))

    def loss(self, x0: torch.Tensor, x1: torch.Tensor) -> torch.Tensor:
        from lightly.models.utils import batch_shuffle, batch_unshuffle, update_momentum
        if self.method == "simclr":
            return self.criterion(self.projection(self.backbone(x0)), self.projection(self.backbone(x1)))
        update_momentum(self.backbone, self.backbone_momentum, m=self.momentum)
        update_momentum(self.projection, self.projection_momentum, m=self.momentum)
        if self.method == "byol":
            p0 = self.prediction(self.projection(self.backbone(x0)))
            p1 = self.prediction(self.projection(self.backbone(x1)))
            with torch.no_grad():
                z0 = self.projection_momentum(self.backbone_momentum(x0))
                z1 = self.projection_momentum(self.backbone_momentum(x1))
            return 0.5 * (self.criterion(p0, z1) + self.criterion(p1, z0))
        query = self.projection(self.backbone(x0))
        with torch.no_grad():  # shuffled key BN, as orl-bench's recipe (key_bn: shuffle)
            shuffled, shuffle = batch_shuffle(x1)
            key = batch_unshuffle(self.projection_momentum(self.backbone_momentum(shuffled)), shuffle)
        return self.criterion(query, key)


def measure_lightly(method: str, recipe: str, overrides: list[str], steps: int, warmup: int, workdir: str,
                    threads: int | None = None) -> dict:
    """lightly's end-to-end images/s, with torch's default thread count or `threads`."""
    from lightly.data import LightlyDataset
    cfg = pipeline.load_pretrain_config(method, recipe, overrides)
    p = METHODS.get(method).params_of(cfg)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    images = pretrain_images(cfg.data, Path(workdir))
    folders = {path.parent for path in images.paths}
    if len(folders) != 1:
        raise SystemExit(f"lightly's dataset reads one folder; the recipe's images lie in {len(folders)}")
    dataset = LightlyDataset(input_dir=str(folders.pop()), transform=lightly_transform(method, p.views))
    b = cfg.train.batch_size
    loader = DataLoader(dataset, batch_size=b, shuffle=True, drop_last=True, num_workers=cfg.train.num_workers,
                        persistent_workers=cfg.train.num_workers > 0, pin_memory=device.type == "cuda")
    torch.manual_seed(cfg.train.seed)
    backbone = build_backbone(cfg.model.arch, cfg.model.width, cfg.model.conv_init)
    model = LightlyModel(method, backbone, backbone.num_features, p).to(device)
    optimizer = build_optimizer(model, cfg.optim, scaled_lr(cfg.optim, b))
    amp = autocast_dtype(cfg.train.amp, device)
    batches = (batch for _ in itertools.count() for batch in loader)

    def step() -> None:
        (x0, x1), _, _ = next(batches)
        with autocast(device, amp):
            loss = model.loss(x0.to(device, non_blocking=True), x1.to(device, non_blocking=True))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    with torch_threads(threads or torch.get_num_threads()):
        end_to_end = timed(step, steps, warmup)
        used = torch.get_num_threads()
    return {"end_to_end": round(steps * b / end_to_end, 1), "torch_threads": used,
            **({"peak_gpu_memory_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2)}
               if device.type == "cuda" else {})}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipe", default="default", help="orl-bench recipe whose settings both sides use")
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        help="recipe overrides for both sides, e.g. the data or the batch size")
    parser.add_argument("--methods", default=",".join(METHODS_COMPARED))
    parser.add_argument("--steps", type=int, default=30, help="timed steps per side, after --warmup")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first (workers starting, caches)")
    parser.add_argument("--workdir", default="orl_bench_home", help="where the embedded scenes are (or get) written")
    parser.add_argument("--augment", default="loader,device",
                        help="orl-bench's train.augment settings to time: views made by the loader workers "
                             "(PIL, as lightly) and/or batched on the training device")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    import lightly
    on_gpu = torch.cuda.is_available()
    results = {}

    def save() -> None:
        """After every measurement, so a side that fails keeps the figures measured before it."""
        atomic_write_json(Path(args.out), {
            "benchmark": "peer_lightly", "recipe": args.recipe, "overrides": args.overrides, "steps": args.steps,
            "warmup": args.warmup, "images_per_s": results,
            "device": device_name(torch.device("cuda" if on_gpu else "cpu")),
            "versions": {"torch": torch.__version__, "lightly": lightly.__version__}, "git_revision": git_revision(),
            "time": time.strftime("%Y-%m-%dT%H:%M:%S%z")})

    for method in args.methods.split(","):
        load = {"before": os.getloadavg()[0]}
        results[method] = entry = {"load_1min": load}
        for augment in args.augment.split(","):
            ours = measure(method, args.recipe, [*args.overrides, f"train.augment={augment}"], args.steps,
                           args.warmup, args.workdir)
            load[f"after_orl_bench_{augment}"] = os.getloadavg()[0]
            entry[f"orl_bench_augment_{augment}"] = ours["images_per_s"] | {
                k: ours[k] for k in ("torch_threads", "end_to_end_over_model_only", "peak_gpu_memory_gib") if k in ours}
            entry.setdefault("settings", {k: ours[k] for k in ("arch", "width", "batch", "view_size", "num_workers",
                                                               "amp")})
            save()
        entry["lightly"] = theirs = measure_lightly(method, args.recipe, args.overrides, args.steps, args.warmup,
                                                    args.workdir)
        load["after_lightly"] = os.getloadavg()[0]
        for augment in args.augment.split(","):
            entry[f"orl_bench_{augment}_over_lightly"] = round(
                entry[f"orl_bench_augment_{augment}"]["end_to_end"] / theirs["end_to_end"], 3)
        save()
        if not on_gpu:
            # lightly again with orl-bench's thread count: how much of the gap is the thread policy alone
            # (on a GPU the training process's CPU threads hardly matter)
            entry["lightly_with_orl_bench_threads"] = measure_lightly(
                method, args.recipe, args.overrides, args.steps, args.warmup, args.workdir,
                threads=entry[f"orl_bench_augment_{args.augment.split(',')[0]}"]["torch_threads"])
            load["after_lightly_same_threads"] = os.getloadavg()[0]
            save()
        print(method, json.dumps(entry), flush=True)

if __name__ == "__main__":
    main()
