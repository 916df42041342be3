"""Exporters of a backbone to other frameworks' checkpoint formats."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from orl_bench.engine.checkpoint import save_torch
from orl_bench.models.backbones import ResNet


def export(backbone: ResNet, manifest: dict[str, Any], fmt: str, out: Path) -> None:
    if fmt == "torchvision":
        state = {k: v.detach().cpu() for k, v in backbone.state_dict().items()}
        save_torch(Path(out), state)
        return
    raise ValueError(f"unknown export format '{fmt}'; expected torchvision")
