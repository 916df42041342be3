"""The task-plugin contract: a backbone in, result records out."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch

from orl_bench.config import NoParams, TaskConfig, from_dict
from orl_bench.engine.distributed import DistInfo
from orl_bench.models.backbones import ResNet


@dataclass(frozen=True)
class BackboneRef:
    """What is evaluated: the network and the facts a record needs about it."""
    backbone: ResNet
    sha256: str
    method: str
    recipe: str
    path: str


class Task:
    """Subclasses declare `Params` (filled from the benchmark recipe's `params:` section) and
    implement `evaluate`, returning records with at least task-specific `metric` and `value`;
    the pipeline adds the common provenance fields. A record that names its own `method` (e.g. the
    chance level) is about the data, not the backbone: it gets no artifact, pretraining config or
    seed, and is stored once per (task, method, metric, dataset)."""

    Params: ClassVar[type] = NoParams
    # True for a task that runs on every torchrun process (it shards its own work and returns the
    # records on rank 0); the others run on rank 0 alone.
    distributed: ClassVar[bool] = False
    # whether the task reads the backbone through `features.layers` (taps and pooling); a
    # rehearsal checks their dimensions against the protocol's
    reads_feature_layers: ClassVar[bool] = True

    def __init__(self, cfg: TaskConfig, workdir: Path, device: torch.device, info: DistInfo | None = None):
        self.cfg = cfg
        self.workdir = Path(workdir)
        self.device = device
        self.info = info or DistInfo(0, 1, 0, device)
        self.params = from_dict(self.Params, cfg.params, "params")

    @classmethod
    def data_identity(cls, cfg: TaskConfig) -> str | None:
        """What names the data this task reads beyond `cfg`, where defaults the config does not spell
        out shape it (an embedded set's design); None where `cfg` says it all. It is part of the task
        hash (pipeline.task_config_hash), so records of data generated otherwise are not reused."""
        return None

    def check_data(self) -> None:
        """Raise DatasetLayoutError where the real data this task reads is missing or not in its
        reader's layout. Cheap (no image is read, nothing is generated), so that a run checks it
        before pretraining; the embedded data needs nothing, being generated on first use."""

    def evaluate(self, ref: BackboneRef) -> list[dict[str, Any]]:
        raise NotImplementedError
