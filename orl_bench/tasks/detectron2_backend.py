"""The detectron2 backend of COCO Mask R-CNN transfer: the task's params as a config file, and a launcher.

The config is Mask R-CNN R50-FPN on COCO 2017 as MoCo and ORL fine-tune it: the exported .pkl
(`orl-bench export --format detectron2`) as MODEL.WEIGHTS, torchvision's RGB normalisation (the
backbone was pretrained on torchvision-normalised RGB, not Caffe2's BGR), the stride on the 3x3
conv (torchvision's Bottleneck), SyncBN everywhere the pretrained statistics are fine-tuned, and
ORL's 4conv1fc box head. Generating it needs no detectron2; only `launch_detectron2` does.
"""
from __future__ import annotations

import itertools
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import yaml
from torch.utils.data import DataLoader

from orl_bench.config import ConfigError
from orl_bench.data.coco import CocoDataset
from orl_bench.engine.checkpoint import save_torch
from orl_bench.engine.distributed import DistInfo
from orl_bench.engine.trainer import seed_globals
from orl_bench.faults import fault_point
from orl_bench.io import atomic_write_text
from orl_bench.models.backbones import ResNet
from orl_bench.tasks.detection_data import pass_order

if TYPE_CHECKING:  # coco_maskrcnn imports this module
    from orl_bench.tasks.coco_maskrcnn import MaskRCNNParams

# ImageNet mean/std in 0..255 RGB: what torchvision's transforms normalise with.
PIXEL_MEAN = [123.675, 116.280, 103.530]
PIXEL_STD = [58.395, 57.120, 57.375]
# (NAME, NUM_CONV, NUM_FC) of the box head: ORL's 4conv1fc, or detectron2's default 2fc.
BOX_HEADS = {"4conv1fc": ("FastRCNNConvFCHead", 4, 1), "2fc": ("FastRCNNConvFCHead", 0, 2)}
FPN_LEVELS = ["p2", "p3", "p4", "p5", "p6"]

INSTALL_HINT = ("install it to match your torch and CUDA build: pip install "
                "'git+https://github.com/facebookresearch/detectron2.git' (see "
                "https://detectron2.readthedocs.io/en/latest/tutorials/install.html); or use the built-in "
                "backend instead: --set task.params.backend=torchvision")


def maskrcnn_config(weights: Path, output_dir: Path, *,
                    min_size_train: tuple[int, ...] = tuple(range(640, 801, 32)), max_size_train: int = 1333,
                    min_size_test: int = 800, max_size_test: int = 1333, ims_per_batch: int = 16,
                    base_lr: float = 0.02, steps: tuple[int, ...] = (60000, 80000), max_iter: int = 90000,
                    warmup_iters: int = 1000, box_head: str = "4conv1fc", norm: str = "SyncBN",
                    head_norm: str | None = None, freeze_at: int = 0, depth: int = 50, num_classes: int = 80,
                    fpn_channels: int = 256, head_channels: int = 256, box_fc: int = 1024,
                    rpn_topk_train: tuple[int, int] = (2000, 1000), rpn_topk_test: tuple[int, int] = (1000, 1000),
                    rois_per_image: int = 512, amp: bool = False, seed: int = -1, device: str = "cuda",
                    momentum: float = 0.9, weight_decay: float = 1e-4, warmup_factor: float = 0.001,
                    checkpoint_period: int = 5000, num_workers: int = 4, precise_bn_iters: int = 200,
                    mask_format: str = "polygon",
                    train_datasets: tuple[str, ...] = ("coco_2017_train",),
                    test_datasets: tuple[str, ...] = ("coco_2017_val",)) -> dict[str, Any]:
    """The detectron2 config (a nested dict of its keys) for Mask R-CNN R50-FPN, 1x by default.

    `freeze_at=0` fine-tunes the stem and res2 too, as MoCo does: with SyncBN the pretrained
    normalisation is trained rather than frozen. `norm` is the backbone's, `head_norm` (default:
    the same) the FPN's and heads' ("" for none). `rpn_topk_*` are (pre-NMS per level,
    post-NMS) proposals per image. `device` is MODEL.DEVICE ("cpu" on a machine without CUDA:
    detectron2 defaults to "cuda"). `mask_format` "bitmask" reads RLE segmentations (the
    embedded scenes'), "polygon" COCO's. Sequences are lists, as YAML has no tuples.
    """
    head_norm = norm if head_norm is None else head_norm
    if box_head not in BOX_HEADS:
        raise ConfigError(f"unknown box head '{box_head}'; expected one of {', '.join(BOX_HEADS)}")
    if list(steps) != sorted(steps) or (steps and steps[-1] >= max_iter):
        raise ConfigError(f"solver steps {list(steps)} must increase and end before max_iter {max_iter}")
    head, num_conv, num_fc = BOX_HEADS[box_head]
    return {
        "VERSION": 2,
        "OUTPUT_DIR": str(output_dir),
        "MODEL": {
            "META_ARCHITECTURE": "GeneralizedRCNN",
            "DEVICE": device,
            "WEIGHTS": str(weights),
            "MASK_ON": True,
            "PIXEL_MEAN": PIXEL_MEAN,
            "PIXEL_STD": PIXEL_STD,
            "BACKBONE": {"NAME": "build_resnet_fpn_backbone", "FREEZE_AT": freeze_at},
            # RES2_OUT_CHANNELS 64 is what detectron2 requires of R18/R34 (their res2 is 64 wide)
            "RESNETS": {"DEPTH": depth, "STRIDE_IN_1X1": False, "NORM": norm,
                        "OUT_FEATURES": ["res2", "res3", "res4", "res5"], "RES2_OUT_CHANNELS": 64 if depth < 50 else 256},
            "FPN": {"IN_FEATURES": ["res2", "res3", "res4", "res5"], "NORM": head_norm, "OUT_CHANNELS": fpn_channels},
            "ANCHOR_GENERATOR": {"SIZES": [[32], [64], [128], [256], [512]], "ASPECT_RATIOS": [[0.5, 1.0, 2.0]]},
            "RPN": {"IN_FEATURES": FPN_LEVELS, "PRE_NMS_TOPK_TRAIN": rpn_topk_train[0],
                    "PRE_NMS_TOPK_TEST": rpn_topk_test[0], "POST_NMS_TOPK_TRAIN": rpn_topk_train[1],
                    "POST_NMS_TOPK_TEST": rpn_topk_test[1]},
            "ROI_HEADS": {"NAME": "StandardROIHeads", "IN_FEATURES": FPN_LEVELS[:-1], "NUM_CLASSES": num_classes,
                          "BATCH_SIZE_PER_IMAGE": rois_per_image},
            "ROI_BOX_HEAD": {"NAME": head, "NUM_CONV": num_conv, "NUM_FC": num_fc, "NORM": head_norm,
                             "CONV_DIM": head_channels, "FC_DIM": box_fc, "POOLER_RESOLUTION": 7},
            "ROI_MASK_HEAD": {"NAME": "MaskRCNNConvUpsampleHead", "NUM_CONV": 4, "NORM": head_norm,
                              "CONV_DIM": head_channels, "POOLER_RESOLUTION": 14},
        },
        "INPUT": {"FORMAT": "RGB", "MIN_SIZE_TRAIN": list(min_size_train), "MAX_SIZE_TRAIN": max_size_train,
                  "MIN_SIZE_TEST": min_size_test, "MAX_SIZE_TEST": max_size_test, "MASK_FORMAT": mask_format},
        "DATALOADER": {"NUM_WORKERS": num_workers},
        "DATASETS": {"TRAIN": list(train_datasets), "TEST": list(test_datasets)},
        "SOLVER": {"IMS_PER_BATCH": ims_per_batch, "BASE_LR": base_lr, "MOMENTUM": momentum,
                   "WEIGHT_DECAY": weight_decay, "STEPS": list(steps), "MAX_ITER": max_iter,
                   "WARMUP_FACTOR": warmup_factor, "WARMUP_ITERS": warmup_iters,
                   "CHECKPOINT_PERIOD": checkpoint_period, "AMP": {"ENABLED": amp}},
        "TEST": {"PRECISE_BN": {"ENABLED": True, "NUM_ITER": precise_bn_iters}},
        "SEED": seed,
    }


def resnet_depth(backbone: ResNet) -> int:
    """18, 34, 50 or 101 from the block type and per-stage block counts; detectron2's ResNets have
    torchvision's widths only, so a narrowed backbone is an error."""
    blocks = tuple(len(stage) for stage in (backbone.layer1, backbone.layer2, backbone.layer3, backbone.layer4))
    bottleneck = hasattr(backbone.layer1[0], "conv3")
    depth = {(False, (2, 2, 2, 2)): 18, (False, (3, 4, 6, 3)): 34, (True, (3, 4, 6, 3)): 50,
             (True, (3, 4, 23, 3)): 101}.get((bottleneck, blocks))
    if depth is None or backbone.conv1.out_channels != 64:
        raise ConfigError(f"the detectron2 backend builds ResNet-18/34/50/101 at torchvision's width (stem 64); "
                          f"this backbone has blocks {blocks} and a stem of {backbone.conv1.out_channels} channels: "
                          "use task.params.backend=torchvision")
    return depth


def check_detectron2_processes(p: MaskRCNNParams, info: DistInfo) -> None:
    """detectron2 starts its own processes, one per GPU; on a machine without CUDA, one."""
    if info.distributed:
        raise ConfigError("params.backend=detectron2 launches its own processes (one per GPU, "
                          "params.num_gpus): run it without torchrun")
    gpus = torch.cuda.device_count()
    if p.num_gpus > max(gpus, 1):
        raise ConfigError(f"params.num_gpus={p.num_gpus} but this machine has {gpus} CUDA GPUs"
                          + ("; without CUDA the detectron2 backend runs in one process (num_gpus=1)" if not gpus else ""))


def mask_format(split: CocoDataset) -> str:
    """detectron2's INPUT.MASK_FORMAT for the split's instance masks: "bitmask" where a non-crowd
    segmentation is RLE (the embedded scenes'), "polygon" otherwise (COCO's)."""
    rle = any(isinstance(a["segmentation"], dict) for i in range(len(split)) for a in split.annotations(i)
              if not a.get("iscrowd", 0))
    return "bitmask" if rle else "polygon"


def detectron2_amp(amp: str, device: torch.device) -> bool:
    """SOLVER.AMP.ENABLED: detectron2's AMPTrainer computes in float16 with a gradient scaler, so
    amp=fp16 (on CUDA) turns it on; auto leaves it off, as the official configs do."""
    return amp == "fp16" and device.type == "cuda"


def detectron2_settings(p: MaskRCNNParams, backbone: ResNet, num_classes: int, device: torch.device,
                        train_name: str, val_name: str, masks: str = "polygon") -> dict[str, Any]:
    """maskrcnn_config's keywords for these params: the same protocol as the built-in backend."""
    return {"min_size_train": p.min_size_train, "max_size_train": p.max_size, "min_size_test": p.min_size_test,
            "max_size_test": p.max_size, "ims_per_batch": p.batch_size, "base_lr": p.base_lr * p.batch_size / 16,
            "momentum": p.momentum, "weight_decay": p.weight_decay, "warmup_factor": p.warmup_factor,
            "steps": p.steps, "max_iter": p.iterations, "warmup_iters": p.warmup_iters, "box_head": p.box_head,
            "norm": "SyncBN" if p.sync_bn else "BN", "head_norm": ("SyncBN" if p.sync_bn else "BN") if p.norm else "",
            "depth": resnet_depth(backbone), "num_classes": num_classes, "fpn_channels": p.fpn_channels,
            "head_channels": p.head_channels, "box_fc": p.box_fc,
            "rpn_topk_train": (p.rpn_pre_nms_top_n_train, p.rpn_post_nms_top_n_train),
            "rpn_topk_test": (p.rpn_pre_nms_top_n_test, p.rpn_post_nms_top_n_test),
            "rois_per_image": p.box_batch_size_per_image, "amp": detectron2_amp(p.amp, device),
            "seed": p.seed, "device": device.type, "checkpoint_period": p.checkpoint_every,
            "num_workers": p.num_workers, "precise_bn_iters": p.precise_bn_iters, "mask_format": masks,
            "train_datasets": (train_name,), "test_datasets": (val_name,)}


def write_maskrcnn_config(weights: Path, output_dir: Path, **settings: Any) -> Path:
    """Write `maskrcnn_config(...)` as `output_dir/config.yaml` (atomically) and return its path.

    `weights` and `output_dir` are made absolute, so the config works from any directory.
    """
    output_dir = Path(output_dir).resolve()
    cfg = maskrcnn_config(Path(weights).resolve(), output_dir, **settings)
    path = output_dir / "config.yaml"
    atomic_write_text(path, yaml.safe_dump(cfg, sort_keys=False))
    return path


# (name, instances JSON, image folder) of a COCO-format split that detectron2 does not know by name
DatasetSpec = tuple[str, str, str]
RESULTS = "orl_bench_results.json"  # OUTPUT_DIR/<this>: detectron2's final COCO AP, by rank 0
# The training stream: "seeded" (the built-in backend's order, resumable to the same weights) or
# "detectron2" (its own TrainingSampler with aspect-ratio grouping, as the official runs; a
# resumed run restarts that stream, so it continues with other batches than it would have).
TRAIN_ORDERS = ("seeded", "detectron2")


def require_detectron2() -> None:
    """A ConfigError saying how to install detectron2 (or which backend to use) when it is absent."""
    try:
        import detectron2  # noqa: F401
    except ImportError as e:
        raise ConfigError(f"the detectron2 backend needs detectron2, which is not installed ({e}); "
                          f"{INSTALL_HINT}") from e


def _as_is(batch: Any) -> Any:
    return batch


class _IterationBatches(torch.utils.data.Dataset):
    """Item i: this rank's share of the i-th global batch, mapped by detectron2's mapper (resize
    to a drawn shorter side, flip) with NumPy, which its augmentations draw from, seeded by
    (seed, i): the same batch in any loader worker and after a resume."""

    def __init__(self, dicts: list[dict], mapper: Any, global_batch: int, seed: int, rank: int, world_size: int):
        if global_batch % world_size:
            raise ConfigError(f"params.batch_size {global_batch} must divide over the {world_size} processes")
        if global_batch > len(dicts):
            raise ConfigError(f"params.batch_size {global_batch} is larger than the {len(dicts)} training images")
        self.dicts, self.mapper, self.batch, self.seed = dicts, mapper, global_batch, seed
        self.share = slice(rank * global_batch // world_size, (rank + 1) * global_batch // world_size)
        self.per_pass = len(dicts) // global_batch

    def __getitem__(self, iteration: int) -> list[dict]:
        pass_index, k = divmod(iteration, self.per_pass)
        batch = pass_order(len(self.dicts), self.seed, pass_index)[k * self.batch:(k + 1) * self.batch][self.share]
        np.random.seed([self.seed, iteration])
        return [self.mapper(self.dicts[i]) for i in batch.tolist()]  # the mapper copies the dict


class SeededTrainLoader:
    """detectron2's training data as an endless iterable of per-rank batches from iteration
    `start` on (set after the checkpoint is loaded: detectron2 iterates its loader lazily)."""

    def __init__(self, batches: _IterationBatches, num_workers: int):
        self.batches, self.num_workers, self.start = batches, num_workers, 0

    def __iter__(self):
        # its own generator: a loader started draws its workers' base seed from the one it is given,
        # which would otherwise be torch's global one, between this iteration's seeding and its step
        return iter(DataLoader(self.batches, batch_size=None, sampler=itertools.count(self.start),
                               collate_fn=_as_is, num_workers=self.num_workers,
                               generator=torch.Generator().manual_seed(self.batches.seed)))


def _train(config_path: str, datasets: list[DatasetSpec], train_order: str) -> None:
    """One process of a detectron2 training run (module level, so launch can spawn it): register
    the splits, train (resuming from OUTPUT_DIR's last checkpoint if there is one), evaluate, and
    write the AP as JSON on rank 0."""
    from detectron2.checkpoint import DetectionCheckpointer
    from detectron2.config import get_cfg
    from detectron2.data import DatasetMapper, get_detection_dataset_dicts
    from detectron2.data.datasets import register_coco_instances
    from detectron2.engine import DefaultTrainer, HookBase, hooks
    from detectron2.evaluation import COCOEvaluator
    from detectron2.utils import comm

    class AtomicCheckpointer(DetectionCheckpointer):
        """detectron2's checkpointer, writing each file whole or not at all: a kill during a save
        leaves the previous checkpoint and its `last_checkpoint` tag intact."""

        def save(self, name: str, **extra: Any) -> None:
            if not self.save_dir or not self.save_to_disk:
                return
            save_torch(Path(self.save_dir) / f"{name}.pth",
                       {"model": self.model.state_dict(), **{k: v.state_dict() for k, v in self.checkpointables.items()},
                        **extra})
            self.tag_last_checkpoint(f"{name}.pth")

        def tag_last_checkpoint(self, basename: str) -> None:
            atomic_write_text(Path(self.save_dir) / "last_checkpoint", basename)

    class Trainer(DefaultTrainer):
        def __init__(self, cfg):
            super().__init__(cfg)
            self.checkpointer = AtomicCheckpointer(self.model, cfg.OUTPUT_DIR,
                                                   **self.checkpointer.checkpointables)
            for hook in self._hooks:
                if isinstance(hook, hooks.PeriodicCheckpointer):
                    hook.checkpointer = self.checkpointer

        @classmethod
        def build_evaluator(cls, cfg, dataset_name):  # DefaultTrainer defines none: COCO box and mask AP
            return COCOEvaluator(dataset_name, output_dir=str(Path(cfg.OUTPUT_DIR) / "inference"))

        @classmethod
        def build_train_loader(cls, cfg):
            if train_order == "detectron2":
                return super().build_train_loader(cfg)
            dicts = get_detection_dataset_dicts(cfg.DATASETS.TRAIN, filter_empty=cfg.DATALOADER.FILTER_EMPTY_ANNOTATIONS)
            batches = _IterationBatches(dicts, DatasetMapper(cfg, is_train=True), cfg.SOLVER.IMS_PER_BATCH,
                                        cfg.SEED, comm.get_rank(), comm.get_world_size())
            return SeededTrainLoader(batches, cfg.DATALOADER.NUM_WORKERS)

        def resume_or_load(self, resume=True):
            super().resume_or_load(resume)
            if isinstance(self._trainer.data_loader, SeededTrainLoader):
                self._trainer.data_loader.start = self.start_iter

    class SeedEachIteration(HookBase):
        """Global generators from (seed, iteration) before each step (proposal and RoI sampling
        draw from torch's), so a resumed run draws what the uninterrupted one drew."""

        def before_step(self):
            seed_globals(self.trainer.cfg.SEED, self.trainer.iter)

    class FaultAfterCheckpoint(HookBase):
        def after_step(self):
            if (self.trainer.iter + 1) % self.trainer.cfg.SOLVER.CHECKPOINT_PERIOD == 0:
                fault_point("detection.checkpoint")

    for name, json_file, image_root in datasets:
        register_coco_instances(name, {}, json_file, image_root)
    cfg = get_cfg()
    cfg.merge_from_file(config_path)
    cfg.freeze()
    torch.manual_seed(cfg.SEED)  # the FPN's and heads' initial weights
    trainer = Trainer(cfg)
    hooks_to_add = [FaultAfterCheckpoint()] if comm.is_main_process() else []
    trainer.register_hooks([SeedEachIteration(), *hooks_to_add] if train_order == "seeded" else hooks_to_add)
    trainer.resume_or_load(resume=True)  # MODEL.WEIGHTS on the first run, the last checkpoint after a kill
    trainer.train()
    if comm.is_main_process():  # the final evaluation's {"bbox": {"AP": ...}, "segm": {...}}
        atomic_write_text(Path(cfg.OUTPUT_DIR) / RESULTS, json.dumps(trainer._last_eval_results))


def launch_detectron2(config_path: Path, *, datasets: list[DatasetSpec] = (), num_gpus: int = 1,
                      train_order: str = "seeded") -> dict[str, Any]:
    """Train and evaluate the config with detectron2's DefaultTrainer in `num_gpus` processes (one
    per GPU; one on a machine without CUDA), continuing from the last checkpoint in OUTPUT_DIR if
    a run was interrupted, after registering `datasets`. `train_order`: see TRAIN_ORDERS. Returns
    detectron2's COCO results ({"bbox": {"AP": ..., "AP50": ...}, "segm": {...}}), also kept in
    OUTPUT_DIR/orl_bench_results.json.

    detectron2 is imported here only, so the rest of orl-bench never needs it; without it this
    raises a ConfigError saying how to install it or which backend to use instead.
    """
    require_detectron2()
    from detectron2.engine import launch
    if not Path(config_path).is_file():
        raise ConfigError(f"detectron2 config {config_path} not found; expected the file write_maskrcnn_config wrote")
    if train_order not in TRAIN_ORDERS:
        raise ConfigError(f"train_order must be one of {', '.join(TRAIN_ORDERS)}, got '{train_order}'")
    launch(_train, num_gpus, dist_url="auto", args=(str(config_path), list(datasets), train_order))
    out = Path(yaml.safe_load(Path(config_path).read_text())["OUTPUT_DIR"]) / RESULTS
    if not out.is_file():
        raise RuntimeError(f"detectron2 finished without writing its evaluation to {out}")
    return json.loads(out.read_text())
