"""Exporters of a backbone to other frameworks' checkpoint formats.

detectron2 names a ResNet's parameters differently from torchvision: the stem is `stem.conv1`,
stage `layerN` is `res{N+1}`, a BatchNorm `bnK` is the `norm` of `convK`, and the projection
shortcut `downsample.{0,1}` is `shortcut` (conv) and `shortcut.norm`. detectron2 reads such a
state as numpy arrays pickled in a .pkl file, matching names to its model by suffix
(`matching_heuristics`), the way MoCo and ORL hand their backbones to it for COCO transfer.
"""
from __future__ import annotations

import pickle
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch

from orl_bench.engine.checkpoint import CheckpointError, save_torch
from orl_bench.io import atomic_write
from orl_bench.models.backbones import ResNet

FORMATS = ("torchvision", "detectron2")

_BN = "weight|bias|running_mean|running_var"
# Every key a torchvision ResNet backbone (fc an Identity) has; torchvision's convs have no bias.
_TORCHVISION_KEY = re.compile(
    rf"(?:conv1\.weight|bn1\.(?:{_BN}|num_batches_tracked))"
    rf"|layer[1-4]\.\d+\.(?:conv[1-3]\.weight|bn[1-3]\.(?:{_BN}|num_batches_tracked)"
    rf"|downsample\.0\.weight|downsample\.1\.(?:{_BN}|num_batches_tracked))")
# What detectron2_state writes: detectron2's BatchNorm keeps no `num_batches_tracked`.
_DETECTRON2_KEY = re.compile(
    rf"stem\.conv1\.(?:weight|norm\.(?:{_BN}))"
    rf"|res[2-5]\.\d+\.(?:conv[1-3]|shortcut)\.(?:weight|norm\.(?:{_BN}))")


def _check_keys(keys: list[str], pattern: re.Pattern[str], expected: str) -> None:
    bad = sorted(k for k in keys if not pattern.fullmatch(k))
    if bad:
        raise CheckpointError(f"{len(bad)} key(s) are not {expected}: {', '.join(bad[:20])}"
                              + (" ..." if len(bad) > 20 else ""))


def _detectron2_name(key: str) -> str:
    name = key if key.startswith("layer") else f"stem.{key}"
    name = re.sub(r"layer([1-4])\.", lambda m: f"res{int(m[1]) + 1}.", name)
    name = re.sub(r"\bbn([1-3])\.", r"conv\1.norm.", name)
    return name.replace("downsample.0.", "shortcut.").replace("downsample.1.", "shortcut.norm.")


def torchvision_name(name: str) -> str:
    """A detectron2 ResNet key under torchvision's name: the inverse of _detectron2_name."""
    key = name.removeprefix("stem.")
    key = re.sub(r"res([2-5])\.", lambda m: f"layer{int(m[1]) - 1}.", key)
    # `shortcut.norm.` before `shortcut.`: the shorter pattern would swallow the norm's keys.
    key = key.replace("shortcut.norm.", "downsample.1.").replace("shortcut.", "downsample.0.")
    return re.sub(r"\bconv([1-3])\.norm\.", r"bn\1.", key)


def detectron2_state(state: dict[str, torch.Tensor]) -> dict[str, np.ndarray]:
    """A torchvision ResNet backbone state dict under detectron2's names, as numpy arrays.

    `num_batches_tracked` is dropped (detectron2's BatchNorm has none). Arrays are copies, so
    the result never aliases a live model's parameters. A key that is not a torchvision ResNet
    backbone key (e.g. a classifier's `fc.weight`) is a CheckpointError naming it.
    """
    _check_keys(list(state), _TORCHVISION_KEY, "torchvision ResNet backbone keys (conv1, bn1, layer1..layer4)")
    return {_detectron2_name(k): v.detach().cpu().numpy().copy()
            for k, v in state.items() if not k.endswith(".num_batches_tracked")}


def torchvision_state(d2: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
    """The inverse of detectron2_state: exactly its keys back under torchvision's names.

    `num_batches_tracked` is not invented: torch's BatchNorm loads a state without it, even
    strictly, and counts from zero (it only matters to momentum=None, which ResNets do not use).
    """
    _check_keys(list(d2), _DETECTRON2_KEY, "detectron2 ResNet keys (stem.conv1, res2..res5)")
    return {torchvision_name(k): torch.tensor(v) for k, v in d2.items()}


def save_detectron2(path: Path, state: dict[str, torch.Tensor]) -> None:
    """Write a torchvision backbone state as the .pkl detectron2's checkpointer loads, atomically."""
    path = Path(path)
    if path.suffix != ".pkl":
        # detectron2 unpickles only files named .pkl; anything else it hands to torch.load.
        raise ValueError(f"detectron2 reads these weights only from a file ending in .pkl; got {path}")
    blob = {"model": detectron2_state(state), "__author__": "orl-bench", "matching_heuristics": True}

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            pickle.dump(blob, f, protocol=pickle.HIGHEST_PROTOCOL)
    atomic_write(path, write)


def export(backbone: ResNet, manifest: dict[str, Any], fmt: str, out: Path) -> None:
    if fmt not in FORMATS:
        raise ValueError(f"unknown export format '{fmt}'; expected one of {', '.join(FORMATS)}")
    state = {k: v.detach().cpu() for k, v in backbone.state_dict().items()}
    if fmt == "torchvision":
        save_torch(Path(out), state)
    else:
        save_detectron2(Path(out), state)
