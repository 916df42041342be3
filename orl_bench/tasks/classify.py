"""What the image-classification benchmarks share (docs/protocols.md 5.3, 5.4): labelled images,
the train and test transforms, top-k accuracy, the chance row, and a resumable epoch loop."""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms import v2

from orl_bench.config import TaskConfig, config_hash, from_dict, volatile
from orl_bench.data.classification import (ClassificationSplit, EmbeddedClassSpec, check_classification_split,
                                           classification_split)
from orl_bench.data.images import read_rgb
from orl_bench.data.views import IMAGENET_MEAN, IMAGENET_STD
from orl_bench.engine import rehearsal
from orl_bench.engine.checkpoint import load_train_state, save_torch
from orl_bench.engine.trainer import seed_globals
from orl_bench.faults import fault_point
from orl_bench.results.records import CHANCE
from orl_bench.tasks.base import Task

# AlexNet's PCA lighting noise on ImageNet RGB: the eigenvalues and eigenvectors (columns) of the
# pixel covariance, as the ImageNet linear-evaluation recipes use them.
LIGHTING_EIGVAL = torch.tensor([0.2175, 0.0188, 0.0045])
LIGHTING_EIGVEC = torch.tensor([[-0.5675, 0.7192, 0.4009],
                                [-0.5808, -0.0045, -0.8140],
                                [-0.5836, -0.6948, 0.4203]])


class Lighting(nn.Module):
    """Adds eigvec @ (alpha * eigval) to every pixel of a [0, 1] RGB tensor, alpha ~ N(0, std)."""

    def __init__(self, std: float):
        super().__init__()
        self.std = std

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        alpha = torch.randn(3) * self.std
        return image + (LIGHTING_EIGVEC @ (alpha * LIGHTING_EIGVAL)).view(3, 1, 1)


def train_transform(size: int, jitter: bool) -> v2.Compose:
    """RandomResizedCrop + flip; `jitter` adds ColorJitter 0.4/0.4/0.4 and PCA lighting 0.1 (ImageNet's)."""
    ops: list[Any] = [v2.PILToTensor(), v2.RandomResizedCrop(size, antialias=True), v2.RandomHorizontalFlip()]
    if jitter:
        ops.append(v2.ColorJitter(0.4, 0.4, 0.4))
    ops.append(v2.ToDtype(torch.float32, scale=True))
    if jitter:
        ops.append(Lighting(0.1))
    return v2.Compose(ops + [v2.Normalize(IMAGENET_MEAN, IMAGENET_STD)])


def test_transform(resize_short: int, size: int) -> v2.Compose:
    """Resize the shorter side, then centre-crop (the linear and semi-supervised test views)."""
    return v2.Compose([v2.PILToTensor(), v2.Resize(resize_short, antialias=True), v2.CenterCrop(size),
                       v2.ToDtype(torch.float32, scale=True), v2.Normalize(IMAGENET_MEAN, IMAGENET_STD)])


class LabelledImages(Dataset):
    def __init__(self, split: ClassificationSplit, transform: v2.Compose):
        self.split, self.transform = split, transform

    def __len__(self) -> int:
        return len(self.split.paths)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return self.transform(read_rgb(self.split.paths[i])), int(self.split.targets[i])


def topk_correct(logits: torch.Tensor, targets: torch.Tensor, ks: tuple[int, ...] = (1, 5)) -> dict[int, int]:
    """How many rows have their target among the k highest logits, for each k (k capped at the
    number of classes, so top-5 of a 3-class problem is top-3)."""
    top = logits.topk(min(max(ks), logits.shape[1]), dim=1).indices
    hits = top == targets.view(-1, 1)
    return {k: int(hits[:, :k].any(dim=1).sum()) for k in ks}


def chance_record(split: ClassificationSplit, dataset: str) -> dict[str, Any]:
    """A uniform random guess: top-k accuracy k / C in expectation, whatever the class balance."""
    classes = len(split.classes)
    return {"method": CHANCE, "metric": "top1", "value": round(100 / classes, 4),
            "top5": round(100 * min(5, classes) / classes, 4), "layer": None, "dataset": dataset,
            "protocol": "chance: a uniform random guess over the classes", "images": {"val": len(split.paths)}}


@dataclass(frozen=True)
class Schedule:
    """SGD with momentum; lr x gamma at each milestone epoch (docs/protocols.md 5.3 / 5.4)."""
    epochs: int
    milestones: tuple[int, ...]
    gamma: float = 0.1
    batch_size: int = 256
    momentum: float = 0.9
    nesterov: bool = False

    def __post_init__(self) -> None:
        if self.epochs < 1 or any(not 0 < m <= self.epochs for m in self.milestones):
            raise ValueError(f"need epochs >= 1 and milestones within 1..epochs, got {self.epochs}, {self.milestones}")


@dataclass(frozen=True)
class ClassificationParams:
    """What every image-classification task takes besides its schedule."""
    embedded: EmbeddedClassSpec = field(default_factory=EmbeddedClassSpec)  # the embedded set's size (data.source=synth)
    seed: int = 0  # data order and augmentation
    num_workers: int = volatile(2)


class ClassificationTask(Task):
    """A task on one of the classification datasets (data/classification.py), `DATASET`: its val
    split and its train split, or the `SUBSET` of it."""
    DATASET = ""
    SUBSET: str | None = None

    @classmethod
    def dataset_of(cls, params: ClassificationParams) -> str:
        return cls.DATASET

    @classmethod
    def data_identity(cls, cfg: TaskConfig) -> str | None:
        """The embedded set's name and design digest: its design lives in EmbeddedClassSpec's defaults,
        which a recipe need not spell out."""
        if cfg.data.source != "synth":
            return None
        params = from_dict(cls.Params, cfg.params, "params")
        dataset = cls.dataset_of(params)
        return f"{dataset}-{params.embedded.digest(dataset)}"

    @property
    def dataset(self) -> str:
        return self.dataset_of(self.params)

    def split(self, split: str, subset: str | None = None) -> ClassificationSplit:
        return classification_split(self.cfg.data, self.params.embedded, self.workdir, self.dataset, split, subset)

    def check_data(self) -> None:
        check_classification_split(self.cfg.data, self.dataset, "train", self.SUBSET)
        check_classification_split(self.cfg.data, self.dataset, "val")

    def state_path(self, artifact_sha: str, run: str = "") -> Path:
        """Where a resumable evaluation of backbone `artifact_sha` under this task config keeps its state."""
        settings = config_hash({"task": replace(self.cfg, params={}), "params": self.params})  # volatile params out
        name = f"{self.cfg.name}-{artifact_sha[:16]}-{settings[:12]}{run}"
        return self.workdir / "evals" / name / "state.pt"

    def loader(self, split: ClassificationSplit, transform: v2.Compose, batch_size: int, train: bool,
               epoch: int = 0) -> DataLoader:
        """Shuffled per (seed, epoch) for training, so a resumed epoch sees the same order."""
        generator = torch.Generator().manual_seed(self.params.seed * 100_003 + epoch) if train else None
        return DataLoader(LabelledImages(split, transform), batch_size=batch_size, shuffle=train,
                          generator=generator, drop_last=False, num_workers=self.params.num_workers,
                          pin_memory=self.device.type == "cuda")


def run_epochs(state_path: Path, modules: dict[str, nn.Module], optimizer: torch.optim.Optimizer,
               scheduler: torch.optim.lr_scheduler.LRScheduler, epochs: int, seed: int,
               train_epoch: Callable[[int], float]) -> list[float]:
    """Resumable epoch loop: after every epoch the modules, optimizer, scheduler and the mean
    losses so far are written atomically to `state_path`; a rerun continues after the last one
    written. Global generators are seeded from (seed, epoch), so a resumed run equals an
    uninterrupted one. A rehearsal stops it once `train_epoch`'s steps spend its budget
    (engine/rehearsal.py). Returns each epoch's mean training loss."""
    losses: list[float] = []
    start = 0
    if state_path.exists():
        state = load_train_state(state_path)
        for name, module in modules.items():
            module.load_state_dict(state["modules"][name])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        losses, start = state["losses"], state["epoch"]
    with rehearsal.section("train"):
        for epoch in range(start, epochs):
            seed_globals(seed, epoch)
            loss = train_epoch(epoch)
            if not np.isfinite(loss):
                raise RuntimeError(f"the training loss is not finite in epoch {epoch + 1} of {epochs}; lower the lr")
            losses.append(loss)
            scheduler.step()
            save_torch(state_path, {"modules": {n: m.state_dict() for n, m in modules.items()},
                                    "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                                    "losses": losses, "epoch": epoch + 1})
            fault_point("eval.epoch")
            if rehearsal.spent():
                break
    return losses
