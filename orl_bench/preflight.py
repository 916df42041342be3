"""What a command checks before its first step, so that bad input is refused in seconds rather
than after hours of pretraining: every recipe it runs parsed and validated (a multi-stage method's
earlier stages included), the real data each of them reads where its reader expects it, and every
folder it writes into writable. Cheap: no image is read and nothing is generated.
"""
from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable, Iterator
from pathlib import Path

import torch

from orl_bench import pipeline
from orl_bench.config import ConfigError, PretrainConfig, TaskConfig
from orl_bench.data.images import DatasetLayoutError
from orl_bench.data.sources import check_pretrain_images
from orl_bench.registry import METHODS, TASKS


def stage_configs(cfg: PretrainConfig, overrides: list[str]) -> list[PretrainConfig]:
    """`cfg` and the configs of the earlier stages built before it, loaded as
    `pipeline.build_inputs` loads them."""
    if cfg.method["name"] == pipeline.RANDOM:
        return [cfg]
    earlier = []
    for method, recipe in METHODS.get(cfg.method["name"]).earlier_stages(cfg):
        with _naming(f"{cfg.method['name']}'s earlier stage {method} [{recipe}]"):
            earlier.append(pipeline.stage_config(method, recipe, overrides))
    # an earlier stage builds its own earlier stages without overrides, as ensure_pretrained does
    return [cfg] + [stage for stage_cfg in earlier for stage in stage_configs(stage_cfg, [])]


def check_writable(folder: Path, what: str) -> None:
    """Refuse a folder this process cannot write into: the folder, or where it does not exist yet,
    the nearest existing folder above it, in which it would be created."""
    folder = Path(folder).absolute()
    existing = next(p for p in (folder, *folder.parents) if p.exists())
    if not existing.is_dir():
        raise ConfigError(f"{what} {folder} cannot be created: {existing} is a file; expected a writable folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ConfigError(f"{what} {folder} is not writable: this user may not write in {existing}; expected a "
                          "writable folder")


def check(workdir: Path, pretraining: Iterable[tuple[PretrainConfig, list[str]]] = (),
          tasks: Iterable[TaskConfig] = (), writes: Iterable[tuple[str, Path]] = ()) -> None:
    """Refuse a command that would fail part way: `pretraining` holds the configs it pretrains,
    each with the overrides it was loaded under (its earlier stages inherit them), `tasks` the
    benchmark configs it evaluates, `writes` (what, folder) for each folder it writes into."""
    for what, folder in writes:
        check_writable(folder, what)
    for cfg, overrides in pretraining:
        for stage in stage_configs(cfg, overrides):
            with _naming(f"pretraining {stage.method['name']}"):
                check_pretrain_images(stage.data)
    for task_cfg in tasks:
        with _naming(f"benchmark {task_cfg.name}"):
            TASKS.get(task_cfg.name)(task_cfg, workdir, torch.device("cpu")).check_data()


@contextlib.contextmanager
def _naming(subject: str) -> Iterator[None]:
    """Start an error with what it is about: a table's runs read many recipes and datasets."""
    try:
        yield
    except (DatasetLayoutError, ValueError) as e:
        raise type(e)(f"{subject}: {e}") from e
