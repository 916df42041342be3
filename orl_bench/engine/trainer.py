"""The pretraining loop: one code path for one CPU process and for torchrun on many GPUs.

Resume is automatic: if the artifact folder holds a train_state.pt, training continues from it.
Because every sample's augmentation is seeded by (seed, epoch, index), the global generators by
(seed, step), and the sampler can start mid-epoch, a resumed CPU run in deterministic mode ends
with the same weights and train state, byte for byte, as an uninterrupted one.
"""
from __future__ import annotations

import contextlib
import hashlib
import random
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader

from orl_bench.config import ConfigError, PretrainConfig, config_hash
from orl_bench.data.batched_views import DecodedViews
from orl_bench.data.pretrain_dataset import EpochSampler, collate_skipping_unreadable
from orl_bench.engine import preemption, rehearsal
from orl_bench.engine.checkpoint import TRAIN_STATE, export_artifact, load_train_state, save_torch, write_config
from orl_bench.engine.distributed import DistInfo, all_reduce_mean, barrier
from orl_bench.engine.optim import build_optimizer, lr_at, scaled_lr, set_lr
from orl_bench.engine.threads import torch_threads, training_threads
from orl_bench.faults import fault_point
from orl_bench.logging import RunLogger
from orl_bench.methods.base import Method, Progress
from orl_bench.models.backbones import ResNet
from orl_bench.provenance import device_name, git_revision, now_iso
from orl_bench.registry import METHODS


def autocast_dtype(amp: str, device: torch.device) -> torch.dtype | None:
    if amp not in ("auto", "bf16", "fp16", "off"):
        raise ValueError(f"train.amp must be auto, bf16, fp16 or off; got '{amp}'")
    if device.type != "cuda" or amp == "off":
        return None
    if amp == "fp16":
        return torch.float16
    return torch.bfloat16


def autocast(device: torch.device, dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
    """Mixed precision at `dtype` (from `autocast_dtype`), or nothing when it is None."""
    return torch.autocast(device.type, dtype=dtype) if dtype else contextlib.nullcontext()


def build_method(cfg: PretrainConfig, info: DistInfo, inputs: Mapping[str, Path] | None = None) -> Method:
    torch.manual_seed(cfg.train.seed)  # identical initial weights on every rank
    plugin = METHODS.get(cfg.method["name"])
    # Single-stage plugins may define __init__(cfg) only: pass inputs just to those that use them.
    method: Method = plugin(cfg, inputs) if inputs else plugin(cfg)
    if cfg.train.augment == "device" and method.view_specs() is None:
        # what the method lacks: a view_specs() (its samples may need more than the image, or it may not say)
        raise ConfigError(f"method '{cfg.method['name']}' declares no view_specs(), which train.augment=device "
                          "needs: set train.augment=loader, or declare them if each view is an augmented crop of "
                          "the image (docs/plugins.md)")
    if info.distributed and cfg.train.sync_bn:
        if info.device.type != "cuda":
            raise ValueError("train.sync_bn=true needs CUDA (torch's SyncBatchNorm is GPU-only); "
                             "set train.sync_bn=false for a distributed CPU run (per-process BN statistics)")
        method = nn.SyncBatchNorm.convert_sync_batchnorm(method)
    method.to(info.device)
    if cfg.train.channels_last:
        method.to(memory_format=torch.channels_last)
    if cfg.train.compile:
        # in place, so parameter names (checkpoints, exports) stay those of the eager module; only
        # __call__ is compiled, so the res5 maps SCRL reads through ResNet.taps stay eager
        for module in method.modules():
            if isinstance(module, ResNet):
                module.compile()
    return method


def seed_globals(seed: int, step: int) -> None:
    """Seed torch's, NumPy's and Python's global generators from (seed, step) before each step.
    Whatever a method draws from them (dropout, a plugin's torch.rand) is then the same after a
    resume without saving generator state, which would depend on the process's history (loader
    iterators draw seeds from it) and make a resumed train state differ from an uninterrupted one."""
    value = int.from_bytes(hashlib.sha256(f"{seed}:{step}".encode()).digest()[:4], "little")
    torch.manual_seed(value)
    np.random.seed(value)
    random.seed(value)


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; the message names the step and every loss term."""


def pretrain(cfg: PretrainConfig, artifact_dir: Path, image_paths: list[Path], manifest_extra: dict[str, Any],
             info: DistInfo, inputs: Mapping[str, Path] | None = None,
             run_extra: dict[str, Any] | None = None,
             monitor: Callable[[nn.Module], dict[str, float]] | None = None) -> dict[str, Any]:
    """Train (or resume) `cfg`'s method on `image_paths` (with the earlier stages' `inputs`);
    export the artifact (`manifest_extra` joins its manifest, `run_extra` its run.json sidecar);
    return its manifest. `monitor(backbone)` runs on rank 0 every `train.monitor_every_epochs`
    epochs and its values are logged under the `monitor` group. A rehearsal measures it as one
    section and may stop it early (engine/rehearsal.py); the manifest then says where."""
    with rehearsal.section(f"pretrain {cfg.method['name']}"):
        return _pretrain(cfg, Path(artifact_dir), image_paths, manifest_extra, info, inputs, run_extra, monitor)


def _pretrain(cfg: PretrainConfig, artifact_dir: Path, image_paths: list[Path], manifest_extra: dict[str, Any],
              info: DistInfo, inputs: Mapping[str, Path] | None, run_extra: dict[str, Any] | None,
              monitor: Callable[[nn.Module], dict[str, float]] | None) -> dict[str, Any]:
    t = cfg.train
    if t.batch_size % info.world_size:
        raise ValueError(f"train.batch_size {t.batch_size} is not divisible by the world size {info.world_size}")
    if t.deterministic:
        torch.use_deterministic_algorithms(True)
    method = build_method(cfg, info, inputs)
    dataset = method.make_dataset(image_paths)
    if t.augment == "device" and getattr(method, "device_views", None) is None:
        # a plugin's own make_dataset that does not build the device half would silently train on the loader's views
        raise ConfigError(f"method '{cfg.method['name']}' made its dataset without the device views that "
                          "train.augment=device asks for; its make_dataset must set `device_views` (see "
                          "Method.make_dataset), or set train.augment=loader")
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
        step, unreadable = state["step"], set(state["unreadable"])
    if info.is_main:
        write_config(artifact_dir, cfg)
    log = RunLogger(artifact_dir, info.is_main, total=max_steps, initial=step, label=f"training {cfg.method['name']}")
    if step:
        log.event("resume", step=step)

    saved_step = step if state_path.exists() else None  # the step of the checkpoint on disk

    def checkpoint() -> None:
        nonlocal saved_step
        if info.is_main:
            save_torch(state_path, {
                "model": method.state_dict(), "optimizer": optimizer.state_dict(), "scaler": scaler.state_dict(),
                "step": step, "unreadable": sorted(unreadable), "config_hash": config_hash(cfg)})
        saved_step = step
        barrier(info)

    start_time, start_step, window_start = time.perf_counter(), step, time.perf_counter()
    # on CPU the views are made in loader workers beside the model step: give torch the cores they leave
    threads = training_threads(info.device, t.num_workers, t.cpu_threads)
    with torch_threads(threads), preemption.listening():
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
                seed_globals(t.seed, step)
                lr = lr_at(step, max_steps, warmup_steps, peak_lr, cfg.optim.final_lr_fraction)
                set_lr(optimizer, lr)
                progress = Progress(step, max_steps, epoch)
                batch = to_device(batch, info.device, cfg.train.channels_last)
                with autocast(info.device, amp_dtype):
                    losses = model(batch, progress)
                if not torch.isfinite(losses["loss"].detach()):  # one host sync per step, as DINO does
                    raise TrainingDiverged(
                        f"{cfg.method['name']}: the loss is not finite at step {step + 1} of {max_steps} (epoch "
                        f"{epoch}): " + ", ".join(f"{k}={v.detach().float().item():.6g}" for k, v in losses.items())
                        + f". Stopped before the update; the last checkpoint ({state_path}, step {saved_step}) is "
                        "intact. Try a lower optim.lr, more optim.warmup_epochs or train.amp=off.")
                optimizer.zero_grad(set_to_none=True)
                scaler.scale(losses["loss"]).backward()
                scaler.step(optimizer)
                scaler.update()
                step += 1
                # the Progress of the step just taken (0-based), as OpenSelfSup's BYOLHook indexes its momentum
                method.after_step(progress)
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
                if t.monitor_every_epochs and step % (spe * t.monitor_every_epochs) == 0:
                    if info.is_main and monitor is not None:
                        log.scalars(step, group="monitor", epoch=step // spe, **monitor(method.backbone))
                    barrier(info)
                fault_point("train.step")
                if preemption.requested(info):  # Slurm's signal: save here, the requeued job resumes
                    checkpoint()
                    log.event("preempted", step=step)
                    log.close()  # TensorBoard's last scalars, which a kill would lose
                    raise preemption.Preempted(step)
                if rehearsal.step_done(sampler.batch_size):
                    break
            if rehearsal.spent():
                break
    checkpoint()
    wall = time.perf_counter() - start_time
    log.close()
    manifest = {**manifest_extra, "method": cfg.method["name"], "config_hash": config_hash(cfg),
                "arch": cfg.model.arch, "width": cfg.model.width, "epochs": t.epochs, "steps": max_steps,
                "global_batch": t.batch_size, "unreadable_images": len(unreadable),
                "git_revision": git_revision(), "world_size": info.world_size,
                "sync_bn": info.distributed and cfg.train.sync_bn,
                "amp": str(amp_dtype).removeprefix("torch.") if amp_dtype else "off",
                "channels_last": t.channels_last, "augment": t.augment, "torch": torch.__version__,
                **({"compile": True} if t.compile else {}),
                **({"rehearsal_stopped_at_step": step} if step < max_steps else {})}
    if hasattr(dataset, "fallbacks"):  # counts of samples a dataset had to make up (e.g. ORL's)
        manifest["dataset_fallbacks"] = dataset.fallbacks
    run_info = {**(run_extra or {}), "finished": now_iso(), "device": device_name(info.device),
                "train_wall_s_this_run": round(wall, 2), "steps_this_run": step - start_step,
                "torch_threads": threads, "loader_workers": t.num_workers}
    if info.is_main:
        manifest = export_artifact(artifact_dir, method.backbone, manifest, run_info)
    barrier(info)
    return manifest


def to_device(batch: Any, device: torch.device, channels_last: bool) -> Any:
    if isinstance(batch, DecodedViews):  # uint8 images: their views get channels_last on the device
        return batch.to(device)
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
