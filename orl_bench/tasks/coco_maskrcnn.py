"""COCO Mask R-CNN detection and instance segmentation (Table 4, docs/protocols.md 5.6).

Built-in backend: torchvision's Mask R-CNN around the pretrained backbone (loaded strictly, every
stage trainable, BatchNorm in training mode, SyncBN when distributed), an FPN with norm, ORL's
4conv1fc box head with norm (or torchvision's 2fc), a mask head with norm; multi-scale training
(shorter side drawn from 640..800 step 32, longer side at most 1333), test at 800; SGD with the
1x schedule (linear warm-up, lr x 0.1 at the steps), iteration-based, lr scaled with the batch.
The run checkpoints every `checkpoint_every` iterations and resumes after kill -9 to the same
weights (global generators seeded per iteration, data order per pass). Box and mask AP by
pycocotools on the val split.
"""
from __future__ import annotations

import copy
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader
from torchvision.models.detection.backbone_utils import BackboneWithFPN
from torchvision.models.detection.faster_rcnn import FastRCNNConvFCHead, FastRCNNPredictor, TwoMLPHead
from torchvision.models.detection.mask_rcnn import MaskRCNN, MaskRCNNHeads, MaskRCNNPredictor
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool

from orl_bench import progress
from orl_bench.config import added_later, check_fields, config_hash, volatile
from orl_bench.data.coco import CocoDataset
from orl_bench.data.coco import check_layout as check_coco_layout
from orl_bench.data.sources import real_root, synth_root
from orl_bench.data.views import IMAGENET_MEAN, IMAGENET_STD
from orl_bench.engine import rehearsal
from orl_bench.engine.checkpoint import CheckpointError, load_train_state, save_torch
from orl_bench.engine.export import save_detectron2
from orl_bench.engine.distributed import DistInfo, all_reduce_mean, barrier
from orl_bench.engine.trainer import autocast, autocast_dtype, seed_globals
from orl_bench.faults import fault_point
from orl_bench.logging import RunLogger
from orl_bench.models.backbones import ResNet
from orl_bench.registry import TASKS
from orl_bench.results.records import CHANCE
from orl_bench.tasks.base import BackboneRef, Task
from orl_bench.tasks.detection_data import (AP_NAMES, InstanceImages, chance_results, check_instances, coco_ap,
                                           coco_results, pass_order)
from orl_bench.tasks.detectron2_backend import (TRAIN_ORDERS, check_detectron2_processes, detectron2_amp,
                                                detectron2_settings, launch_detectron2, mask_format,
                                                require_detectron2, write_maskrcnn_config)

BOX_HEADS = ("4conv1fc", "2fc")
BACKENDS = ("torchvision", "detectron2")
STAGES = {"layer1": "0", "layer2": "1", "layer3": "2", "layer4": "3"}


@dataclass(frozen=True)
class MaskRCNNParams:
    backend: str = "torchvision"  # torchvision (built in) | detectron2 (when installed)
    num_gpus: int = volatile(1)  # detectron2 backend: GPUs its launcher spreads the batch over
    # detectron2 backend: "seeded" trains on the built-in backend's batch order (resumes to the same
    # weights), "detectron2" on its own sampler with aspect-ratio grouping (the official runs')
    detectron2_train_order: str = added_later("seeded")
    # detectron2 backend: the batches precise BN re-estimates the statistics over before testing
    # (detectron2's default 200; the built-in backend has no precise BN)
    precise_bn_iters: int = added_later(200)
    iterations: int = 90_000
    batch_size: int = 16  # images per iteration, over all ranks
    base_lr: float = 0.02  # at batch 16, scaled linearly with batch_size
    momentum: float = 0.9
    weight_decay: float = 1e-4
    warmup_iters: int = 1000
    warmup_factor: float = 0.001
    steps: tuple[int, ...] = (60_000, 80_000)  # lr x 0.1 at each
    min_size_train: tuple[int, ...] = tuple(range(640, 801, 32))
    max_size: int = 1333
    min_size_test: int = 800
    fpn_channels: int = 256
    box_head: str = "4conv1fc"  # ORL's config; 2fc is torchvision's / detectron2's default head
    head_channels: int = 256  # box-head convs and mask-head convs
    box_fc: int = 1024
    norm: bool = True  # BatchNorm in FPN and heads (SyncBN when distributed)
    # proposals and sampled RoIs per image: the R50-FPN values; the embedded recipe lowers them,
    # since RoIAlign's CPU backward and the 4conv head scale with them
    rpn_pre_nms_top_n_train: int = 2000
    rpn_post_nms_top_n_train: int = 1000
    rpn_pre_nms_top_n_test: int = 1000
    rpn_post_nms_top_n_test: int = 1000
    box_batch_size_per_image: int = 512
    amp: str = "auto"  # bf16 autocast on CUDA, off on CPU (as train.amp: auto | bf16 | fp16 | off)
    sync_bn: bool = True  # under torchrun on CUDA: SyncBN for every norm layer, as in the official configs
    # images per rank at evaluation: 1 (detectron2's) keeps the AP independent of the number of
    # processes, since zero padding to a batch's largest image changes features at the borders
    test_batch_size: int = 1
    seed: int = 0
    train_split: str = "train2017"
    val_split: str = "val2017"
    checkpoint_every: int = volatile(500)
    log_every: int = volatile(20)  # rows of log.jsonl beside the train state
    num_workers: int = volatile(2)

    def __post_init__(self) -> None:
        check_fields(self, "params", ("iterations", self.iterations >= 1, ">= 1"),
                     ("batch_size", self.batch_size >= 1, ">= 1"), ("base_lr", self.base_lr > 0, "> 0"),
                     ("num_gpus", self.num_gpus >= 1, ">= 1"), ("precise_bn_iters", self.precise_bn_iters >= 1, ">= 1"))
        if self.backend not in BACKENDS:
            raise ValueError(f"params.backend must be one of {BACKENDS}, got '{self.backend}'")
        if self.backend == "detectron2" and self.amp == "bf16":
            raise ValueError("params.amp=bf16: the detectron2 backend autocasts to float16 only (its AMPTrainer); "
                             "use fp16, off or auto (off there)")
        if self.detectron2_train_order not in TRAIN_ORDERS:
            raise ValueError(f"params.detectron2_train_order must be one of {TRAIN_ORDERS}, "
                             f"got '{self.detectron2_train_order}'")
        if self.box_head not in BOX_HEADS:
            raise ValueError(f"params.box_head must be one of {BOX_HEADS}, got '{self.box_head}'")
        if list(self.steps) != sorted(self.steps) or any(not 0 < s < self.iterations for s in self.steps):
            raise ValueError(f"params.steps must increase and lie within 1..iterations-1 ({self.iterations}), "
                             f"got {list(self.steps)}")


def stage_channels(backbone: ResNet) -> list[int]:
    """Output channels of res2..res5 (the FPN's inputs)."""
    return [stage[-1].conv3.out_channels if hasattr(stage[-1], "conv3") else stage[-1].conv2.out_channels
            for stage in (backbone.layer1, backbone.layer2, backbone.layer3, backbone.layer4)]


def build_maskrcnn(backbone: ResNet, num_classes: int, p: MaskRCNNParams) -> MaskRCNN:
    """Mask R-CNN on a copy of `backbone` (every stage trainable, BN in training mode)."""
    norm = nn.BatchNorm2d if p.norm else None
    body = BackboneWithFPN(copy.deepcopy(backbone), STAGES, stage_channels(backbone), p.fpn_channels,
                           LastLevelMaxPool(), norm_layer=norm)
    if p.box_head == "4conv1fc":
        box_head = FastRCNNConvFCHead((p.fpn_channels, 7, 7), [p.head_channels] * 4, [p.box_fc], norm_layer=norm)
    else:
        box_head = TwoMLPHead(p.fpn_channels * 7 * 7, p.box_fc)
    return MaskRCNN(body, min_size=p.min_size_train, max_size=p.max_size, image_mean=list(IMAGENET_MEAN),
                    image_std=list(IMAGENET_STD),
                    rpn_pre_nms_top_n_train=p.rpn_pre_nms_top_n_train, rpn_post_nms_top_n_train=p.rpn_post_nms_top_n_train,
                    rpn_pre_nms_top_n_test=p.rpn_pre_nms_top_n_test, rpn_post_nms_top_n_test=p.rpn_post_nms_top_n_test,
                    box_batch_size_per_image=p.box_batch_size_per_image,
                    box_head=box_head, box_predictor=FastRCNNPredictor(p.box_fc, num_classes + 1),
                    mask_head=MaskRCNNHeads(p.fpn_channels, [p.head_channels] * 4, 1, norm_layer=norm),
                    mask_predictor=MaskRCNNPredictor(p.head_channels, p.head_channels, num_classes + 1))


def load_backbone_strict(model: MaskRCNN, state: dict[str, torch.Tensor]) -> None:
    """Load a torchvision-named backbone state dict into the detector's ResNet body, strictly: a
    missing or unexpected key is an error listing them."""
    body = model.backbone.body
    expected, given = set(body.state_dict()), set(state)
    if expected != given:
        missing, extra = sorted(expected - given), sorted(given - expected)
        raise CheckpointError(f"backbone weights do not fit Mask R-CNN's ResNet: {len(missing)} missing keys "
                              f"{missing[:8]}, {len(extra)} unexpected keys {extra[:8]}")
    body.load_state_dict(state, strict=True)


def lr_factor(iteration: int, p: MaskRCNNParams) -> float:
    """Linear warm-up from warmup_factor to 1 over warmup_iters, then x 0.1 at each step."""
    warm = 1.0 if iteration >= p.warmup_iters else p.warmup_factor + (1 - p.warmup_factor) * iteration / p.warmup_iters
    return warm * 0.1 ** sum(iteration >= s for s in p.steps)


def _collate(batch: list) -> tuple[list, list]:
    return [image for image, _ in batch], [target for _, target in batch]


def _optimizer(model: nn.Module, p: MaskRCNNParams, lr: float) -> torch.optim.SGD:
    decay, no_decay = [], []  # no weight decay on norm layers (detectron2's WEIGHT_DECAY_NORM 0)
    for module in model.modules():
        own = list(module.parameters(recurse=False))
        (no_decay if isinstance(module, nn.modules.batchnorm._NormBase) else decay).extend(own)
    return torch.optim.SGD([{"params": decay, "weight_decay": p.weight_decay},
                            {"params": no_decay, "weight_decay": 0.0}], lr=lr, momentum=p.momentum)


def prepare_for(model: MaskRCNN, p: MaskRCNNParams, info: DistInfo) -> nn.Module:
    """The model on its device; under torchrun with SyncBN (CUDA only) and wrapped in DDP."""
    if info.distributed and p.norm and p.sync_bn:
        if info.device.type != "cuda":
            raise ValueError("params.sync_bn=true needs CUDA (torch's SyncBatchNorm is GPU-only); set "
                             "task.params.sync_bn=false for a distributed CPU run (per-process BN statistics)")
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    model.to(info.device)
    if info.distributed:
        return DistributedDataParallel(model, device_ids=[info.device.index] if info.device.type == "cuda" else None)
    return model


def fine_tune(model: nn.Module, data: InstanceImages, p: MaskRCNNParams, state_path: Path, info: DistInfo
              ) -> list[float]:
    """Iteration-based SGD on `model` (prepared by `prepare_for`); resumes from `state_path`.
    Each global batch of the pass's order is split into contiguous per-rank shares. Returns the
    (rank-mean) loss of every iteration."""
    if p.batch_size % info.world_size:
        raise ValueError(f"params.batch_size {p.batch_size} must divide over the {info.world_size} processes")
    per_rank = p.batch_size // info.world_size
    lr = p.base_lr * p.batch_size / 16
    optimizer = _optimizer(model, p, lr)
    amp_dtype = autocast_dtype(p.amp, info.device)
    scaler = torch.amp.GradScaler("cuda", enabled=amp_dtype == torch.float16)
    iteration, losses = 0, []
    if state_path.exists():
        state = load_train_state(state_path)
        unwrap(model).load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scaler.load_state_dict(state["scaler"])
        iteration, losses = state["iteration"], state["losses"]
    per_pass = len(data) // p.batch_size
    if per_pass == 0:
        raise ValueError(f"params.batch_size {p.batch_size} is larger than the {len(data)} training images")
    passes = iteration // per_pass
    log = RunLogger(state_path.parent, info.is_main, total=p.iterations, initial=iteration,
                    label="Mask R-CNN fine-tuning")
    log.event("fine_tune", iterations=p.iterations, batch_size=p.batch_size, world_size=info.world_size,
              lr=lr, amp=str(amp_dtype), resumed_at=iteration)
    model.train()
    tic = time.perf_counter()
    while iteration < p.iterations:
        # the pass's order from (seed, pass) alone; a resumed pass starts after its trained batches
        order = pass_order(len(data), p.seed, passes)
        batches = order[:per_pass * p.batch_size].view(per_pass, p.batch_size)[iteration - passes * per_pass:]
        mine = batches[:, info.rank * per_rank:(info.rank + 1) * per_rank].flatten().tolist()
        data.pass_index = passes
        loader = DataLoader(data, batch_size=per_rank, sampler=mine, collate_fn=_collate, num_workers=p.num_workers,
                            pin_memory=info.device.type == "cuda")
        for images, targets in loader:
            seed_globals(p.seed, iteration)
            for group in optimizer.param_groups:
                group["lr"] = lr * lr_factor(iteration, p)
            images = [im.to(info.device, non_blocking=True) for im in images]
            targets = [{k: v.to(info.device, non_blocking=True) for k, v in t.items()} for t in targets]
            with autocast(info.device, amp_dtype):
                parts = model(images, targets)
            loss = sum(parts.values())
            if not torch.isfinite(loss):
                raise RuntimeError(f"Mask R-CNN loss is not finite at iteration {iteration + 1}: "
                                   + ", ".join(f"{k}={v.item():.4g}" for k, v in parts.items()))
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            iteration += 1
            mean_parts = {k: all_reduce_mean(v.detach().float(), info).item() for k, v in parts.items()}
            losses.append(round(sum(mean_parts.values()), 6))
            log.tick()
            if iteration % p.log_every == 0 or iteration == p.iterations:
                log.scalars(iteration, loss=losses[-1], lr=optimizer.param_groups[0]["lr"],
                            seconds_per_iteration=round((time.perf_counter() - tic) / p.log_every, 4),
                            **{k: round(v, 6) for k, v in mean_parts.items()})
                tic = time.perf_counter()
            if iteration % p.checkpoint_every == 0 or iteration == p.iterations:
                if info.is_main:
                    save_torch(state_path, {"model": unwrap(model).state_dict(), "optimizer": optimizer.state_dict(),
                                            "scaler": scaler.state_dict(), "iteration": iteration, "losses": losses})
                barrier(info)
                fault_point("detection.checkpoint")
            if iteration == p.iterations or rehearsal.step_done(per_rank):
                break
        if rehearsal.spent():
            break
        passes += 1
    log.close()
    return losses


def unwrap(model: nn.Module) -> MaskRCNN:
    return model.module if isinstance(model, DistributedDataParallel) else model


@torch.no_grad()
def evaluate_detector(model: nn.Module, data: InstanceImages, p: MaskRCNNParams, info: DistInfo
                      ) -> dict[str, dict[str, float]] | None:
    """Box and mask AP on `data`, each rank inferring every world_size-th image; the AP on rank 0,
    None on the others."""
    model = unwrap(model).eval()
    model.transform.min_size = (p.min_size_test,)
    amp_dtype = autocast_dtype(p.amp, info.device)
    category_of = {label: category for category, label in data.label_of.items()}
    mine = list(range(info.rank, len(data), info.world_size))
    outputs = []
    loader = DataLoader(data, batch_size=p.test_batch_size, sampler=mine, collate_fn=_collate,
                        num_workers=p.num_workers, pin_memory=info.device.type == "cuda")
    meter = progress.Meter("Mask R-CNN inference", len(mine), "images", enabled=info.is_main)  # minutes on a CPU
    for images, _ in loader:
        with autocast(info.device, amp_dtype):
            found = model([im.to(info.device, non_blocking=True) for im in images])
        outputs += [{k: v.float().cpu() for k, v in out.items()} for out in found]
        meter.update(len(images))
    ids = [data.coco.images[i].id for i in mine]
    boxes, segms = coco_results(outputs, ids, category_of)
    if info.distributed:
        gathered = [None] * info.world_size
        dist.all_gather_object(gathered, (boxes, segms))
        boxes, segms = [b for part, _ in gathered for b in part], [s for _, part in gathered for s in part]
    if not info.is_main:
        return None
    ann_file, every = str(data.coco.ann_file), [image.id for image in data.coco.images]
    return {"box": coco_ap(ann_file, boxes, "bbox", every), "mask": coco_ap(ann_file, segms, "segm", every)}


@TASKS.register("coco_maskrcnn")
class CocoMaskRCNN(Task):
    Params = MaskRCNNParams
    distributed = True
    reads_feature_layers = False  # the whole backbone goes into the detector

    def real_root(self) -> Path:
        if self.cfg.data.source not in ("coco", "coco_plus"):
            raise ValueError(f"coco_maskrcnn reads COCO instances: data.source must be synth or coco, "
                             f"got {self.cfg.data.source}")
        return real_root(self.cfg.data)

    def split(self, name: str) -> CocoDataset:
        if self.cfg.data.source == "synth":
            return CocoDataset(synth_root(self.cfg.data, self.workdir) / "coco", name)
        return CocoDataset(self.real_root(), name)

    def check_data(self) -> None:
        if self.params.backend == "detectron2":  # what it needs, before any pretraining
            check_detectron2_processes(self.params, self.info)
            require_detectron2()
        if self.cfg.data.source != "synth":
            for name in (self.params.train_split, self.params.val_split):
                check_coco_layout(self.real_root(), name)

    def evaluate(self, ref: BackboneRef) -> list[dict[str, Any]]:
        p: MaskRCNNParams = self.params
        if p.backend == "detectron2":  # before reading any data: a missing detectron2 is the first thing said
            check_detectron2_processes(p, self.info)
            require_detectron2()
        train, val = self.split(p.train_split), self.split(p.val_split)
        for split in (train, val):
            check_instances(split)  # before any training
        if [c["id"] for c in train.categories] != [c["id"] for c in val.categories]:
            raise ValueError(f"{p.train_split} and {p.val_split} declare different categories")
        settings = config_hash({"task": self.cfg.data, "params": p})[:12]
        run_dir = self.workdir / "evals" / f"coco_maskrcnn-{ref.sha256[:16]}-{settings}"
        if p.backend == "detectron2":
            ap, losses = self._with_detectron2(ref, train, val, run_dir), []
            norm = ("SyncBN" if p.sync_bn and p.num_gpus > 1 else "BN") if p.norm else None
        else:
            torch.manual_seed(p.seed)
            model = build_maskrcnn(ref.backbone, len(train.categories), p)
            load_backbone_strict(model, ref.backbone.state_dict())
            model = prepare_for(model, p, self.info)
            with rehearsal.section("train"):
                losses = fine_tune(model, InstanceImages(train, flip_seed=p.seed), p, run_dir / "state.pt", self.info)
            ap = evaluate_detector(model, InstanceImages(val), p, self.info)
            if ap is None:  # not rank 0
                return []
            norm = ("SyncBN" if p.sync_bn and self.info.distributed else "BN") if p.norm else None
        dataset = f"{self.cfg.data.source}-{val.split}" if self.cfg.data.source != "synth" else \
            f"synth-{self.cfg.data.synth.digest()}-{val.split}"
        amp = (torch.float16 if detectron2_amp(p.amp, self.device) else None) if p.backend == "detectron2" \
            else autocast_dtype(p.amp, self.device)
        common = {"layer": None, "dataset": dataset, "backend": p.backend, "iterations": p.iterations,
                  "batch_size": p.batch_size, "box_head": p.box_head, "world_size": self.info.world_size, "norm": norm,
                  "amp": str(amp).removeprefix("torch.") if amp else "off",
                  "final_train_loss": losses[-1] if losses else None,
                  "protocol": f"Mask R-CNN R-FPN ({p.box_head} head, norm={p.norm}), {p.iterations} iterations, "
                              f"train {p.min_size_train[0]}-{p.min_size_train[-1]} / test {p.min_size_test}",
                  "images": {"train": len(train), "val": len(val)}}
        ids, ann_file = [image.id for image in val.images], str(val.ann_file)
        chance = dict(zip(("box", "mask"), chance_results(train, val, seed=p.seed)))
        chance_ap = {kind: coco_ap(ann_file, chance[kind], iou, ids) for kind, iou in (("box", "bbox"), ("mask", "segm"))}
        chance_common = {"layer": None, "dataset": dataset, "images": common["images"],
                         "protocol": "chance: 100 training boxes per image at their relative positions, "
                                     "categories as drawn, masks the boxes, random scores"}
        return [row for kind in ("box", "mask") for row in
                _ap_rows(kind, ap[kind], common) + _ap_rows(kind, chance_ap[kind], {**chance_common, "method": CHANCE})]

    def _with_detectron2(self, ref: BackboneRef, train: CocoDataset, val: CocoDataset, run_dir: Path
                         ) -> dict[str, dict[str, float | None]]:
        """Export the backbone, write the config from these params, run detectron2's trainer."""
        p: MaskRCNNParams = self.params
        datasets = [(f"orl_bench_{split.split}", str(split.ann_file), str(split.root / split.split))
                    for split in (train, val)]
        settings = detectron2_settings(p, ref.backbone, len(train.categories), self.device,
                                       datasets[0][0], datasets[1][0], mask_format(train))
        weights = run_dir / "backbone.pkl"
        save_detectron2(weights, {k: v.detach().cpu() for k, v in ref.backbone.state_dict().items()})
        config = write_maskrcnn_config(weights, run_dir / "detectron2", **settings)
        results = launch_detectron2(config, datasets=datasets, num_gpus=p.num_gpus,
                                    train_order=p.detectron2_train_order)
        # detectron2 reports a size range without ground truth as NaN; None, as the built-in backend does
        return {kind: {name: (None if v != v else float(v)) for name in AP_NAMES for v in [results[key][name]]}
                for kind, key in (("box", "bbox"), ("mask", "segm"))}


def _ap_rows(kind: str, ap: dict[str, float | None], common: dict[str, Any]) -> list[dict[str, Any]]:
    """One record per number (`box_AP`, `box_AP50`, ..., `mask_APl`), so tables pivot on the
    metric; a size range without ground truth (COCOeval's -1) has no record."""
    return [{"metric": f"{kind}_{name}", "value": round(v, 4), **common} for name, v in ap.items() if v is not None]
