"""The pretraining loop: one code path for one CPU process and for torchrun on many GPUs.

Resume is automatic: if the artifact folder holds a train_state.pt, training continues from it.
Because every sample's augmentation is seeded by (seed, epoch, index) and the sampler can start
mid-epoch, a resumed CPU run in deterministic mode ends with the same weights as an
uninterrupted one.
"""
from __future__ import annotations

import contextlib
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader

from orl_bench.config import PretrainConfig, config_hash
from orl_bench.data.pretrain_dataset import EpochSampler, collate_skipping_unreadable
from orl_bench.engine.checkpoint import (TRAIN_STATE, export_artifact, load_train_state, rng_state, write_config,
                                         save_train_state, set_rng_state)
from orl_bench.engine.distributed import DistInfo, all_reduce_mean, barrier
from orl_bench.engine.optim import build_optimizer, lr_at, scaled_lr, set_lr
from orl_bench.engine.threads import torch_threads, training_threads
from orl_bench.logging import RunLogger
from orl_bench.methods.base import Method, Progress
from orl_bench.provenance import device_name, git_revision
from orl_bench.registry import METHODS


def autocast_dtype(amp: str, device: torch.device) -> torch.dtype | None:
    if amp not in ("auto", "bf16", "fp16", "off"):
        raise ValueError(f"train.amp must be auto, bf16, fp16 or off; got '{amp}'")
    if device.type != "cuda" or amp == "off":
        return None
    if amp == "fp16":
        return torch.float16
    return torch.bfloat16


def build_method(cfg: PretrainConfig, info: DistInfo, inputs: Mapping[str, Path] | None = None) -> Method:
    torch.manual_seed(cfg.train.seed)  # identical initial weights on every rank
    plugin = METHODS.get(cfg.method["name"])
    # Single-stage plugins may define __init__(cfg) only: pass inputs just to those that use them.
    method: Method = plugin(cfg, inputs) if inputs else plugin(cfg)
    if info.distributed and cfg.train.sync_bn:
        if info.device.type != "cuda":
            raise ValueError("train.sync_bn=true needs CUDA (torch's SyncBatchNorm is GPU-only); "
                             "set train.sync_bn=false for a distributed CPU run (per-process BN statistics)")
        method = nn.SyncBatchNorm.convert_sync_batchnorm(method)
    method.to(info.device)
    if cfg.train.channels_last:
        method.to(memory_format=torch.channels_last)
    return method


def pretrain(cfg: PretrainConfig, artifact_dir: Path, image_paths: list[Path], manifest_extra: dict[str, Any],
             info: DistInfo, inputs: Mapping[str, Path] | None = None) -> dict[str, Any]:
    """Train (or resume) `cfg`'s method on `image_paths` (with the earlier stages' `inputs`);
    export the artifact; return its manifest."""
    artifact_dir = Path(artifact_dir)
    t = cfg.train
    if t.batch_size % info.world_size:
        raise ValueError(f"train.batch_size {t.batch_size} is not divisible by the world size {info.world_size}")
    if t.deterministic:
        torch.use_deterministic_algorithms(True)
    method = build_method(cfg, info, inputs)
    dataset = method.make_dataset(image_paths)
    sampler = EpochSampler(len(dataset), t.batch_size // info.world_size, t.seed, info.rank, info.world_size)
    loader = DataLoader(dataset, batch_size=sampler.batch_size, sampler=sampler, num_workers=t.num_workers,
                        collate_fn=collate_skipping_unreadable, pin_memory=info.device.type == "cuda",
                        persistent_workers=t.num_workers > 0, drop_last=True)
    peak_lr = scaled_lr(cfg.optim, t.batch_size)
    optimizer = build_optimizer(method, cfg.optim, peak_lr)
    amp_dtype = autocast_dtype(t.amp, info.device)
    scaler = torch.amp.GradScaler("cuda", enabled=amp_dtype == torch.float16)
    model = DistributedDataParallel(method, device_ids=[info.local_rank] if info.device.type == "cuda" else None) \
        if info.distributed else method

    spe = sampler.steps_per_epoch
    max_steps = t.epochs * spe
    warmup_steps = round(cfg.optim.warmup_epochs * spe)
    step, unreadable = 0, set()
    state_path = artifact_dir / TRAIN_STATE
    if state_path.exists():
        state = load_train_state(state_path)
        if state["config_hash"] != config_hash(cfg):
            raise RuntimeError(f"{state_path} was written by a different config; remove it to start over")
        method.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scaler.load_state_dict(state["scaler"])
        set_rng_state(state["rng"])
        step, unreadable = state["step"], set(state["unreadable"])
    if info.is_main:
        write_config(artifact_dir, cfg)
    log = RunLogger(artifact_dir, info.is_main, total=max_steps, initial=step)
    if step:
        log.event("resume", step=step)

    def checkpoint() -> None:
        if info.is_main:
            save_train_state(state_path, {
                "model": method.state_dict(), "optimizer": optimizer.state_dict(), "scaler": scaler.state_dict(),
                "rng": rng_state(), "step": step, "unreadable": sorted(unreadable), "config_hash": config_hash(cfg)})
        barrier(info)

    start_time, start_step, window_start = time.perf_counter(), step, time.perf_counter()
    # on CPU the views are made in loader workers beside the model step: give torch the cores they leave
    threads = training_threads(info.device, t.num_workers, t.cpu_threads)
    with torch_threads(threads):
        method.train()
        while step < max_steps:
            epoch, in_epoch = divmod(step, spe)
            sampler.set_epoch(epoch, in_epoch)
            for batch, bad in loader:
                if bad and not unreadable.issuperset(bad):
                    unreadable.update(bad)
                    log.event("unreadable_images", count=len(unreadable), paths=[str(image_paths[i]) for i in bad])
                if batch is None:
                    raise RuntimeError(f"every image of a batch was unreadable ({len(bad)} images, e.g. "
                                       f"{image_paths[bad[0]]}); check the dataset")
                lr = lr_at(step, max_steps, warmup_steps, peak_lr, cfg.optim.final_lr_fraction)
                set_lr(optimizer, lr)
                progress = Progress(step, max_steps, epoch)
                batch = to_device(batch, info.device, cfg.train.channels_last)
                autocast = torch.autocast(info.device.type, dtype=amp_dtype) if amp_dtype else contextlib.nullcontext()
                with autocast:
                    losses = model(batch, progress)
                optimizer.zero_grad(set_to_none=True)
                scaler.scale(losses["loss"]).backward()
                scaler.step(optimizer)
                scaler.update()
                step += 1
                method.after_step(Progress(step, max_steps, epoch))
                log.tick()
                if step % t.log_every_steps == 0 or step == max_steps:
                    now = time.perf_counter()
                    n_images = t.log_every_steps * t.batch_size if step % t.log_every_steps == 0 else 0
                    scalars = {k: all_reduce_mean(v.detach().float(), info).item() for k, v in losses.items()}
                    log.scalars(step, epoch=epoch, lr=lr, **scalars,
                                images_per_s=n_images / max(now - window_start, 1e-9) if n_images else None)
                    window_start = now
                if step % t.checkpoint_every_steps == 0 or step % spe == 0:
                    checkpoint()
    checkpoint()
    wall = time.perf_counter() - start_time
    log.close()
    manifest = {**manifest_extra, "method": cfg.method["name"], "config_hash": config_hash(cfg),
                "arch": cfg.model.arch, "width": cfg.model.width, "epochs": t.epochs, "steps": max_steps,
                "global_batch": t.batch_size, "unreadable_images": len(unreadable),
                "train_wall_s_this_run": round(wall, 2), "steps_this_run": step - start_step,
                "git_revision": git_revision(), "device": device_name(info.device),
                "world_size": info.world_size, "sync_bn": info.distributed and cfg.train.sync_bn,
                "amp": str(amp_dtype).removeprefix("torch.") if amp_dtype else "off",
                "channels_last": t.channels_last, "torch": torch.__version__,
                "torch_threads": threads, "loader_workers": t.num_workers}
    if hasattr(dataset, "fallbacks"):  # counts of samples a dataset had to make up (e.g. ORL's)
        manifest["dataset_fallbacks"] = dataset.fallbacks
    if info.is_main:
        manifest = export_artifact(artifact_dir, method.backbone, manifest)
    barrier(info)
    return manifest


def to_device(batch: Any, device: torch.device, channels_last: bool) -> Any:
    if isinstance(batch, torch.Tensor):
        batch = batch.to(device, non_blocking=True)
        if channels_last and batch.ndim == 4:
            batch = batch.contiguous(memory_format=torch.channels_last)
        return batch
    if isinstance(batch, (list, tuple)):
        return type(batch)(to_device(b, device, channels_last) for b in batch)
    if isinstance(batch, dict):
        return {k: to_device(v, device, channels_last) for k, v in batch.items()}
    return batch
