"""Shared feature extraction for the benchmarks: layer taps, the pooling table, a disk cache.

Pooling (docs/protocols.md 5.1): ResNet-50 maps at 224 px are average-pooled with the reference
kernel/stride/pad; at any other map size (other inputs, the embedded recipes) each layer is pooled
adaptively to the same output grid, so every layer keeps its spatial layout.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms import v2

from orl_bench import progress
from orl_bench.config import FeatureConfig, config_hash
from orl_bench.data.images import UnreadableImageError, read_rgb
from orl_bench.data.views import normalize
from orl_bench.faults import fault_point
from orl_bench.io import atomic_write_json, save_npy
from orl_bench.models.backbones import ResNet

# layer -> (map side of ResNet-50 at 224 px, kernel, stride, padding, output grid side)
POOLING = {
    "conv1": (112, 10, 10, 4, 12),
    "res2": (56, 16, 8, 0, 6),
    "res3": (28, 13, 5, 0, 4),
    "res4": (14, 8, 3, 0, 3),
    "res5": (7, 6, 1, 0, 2),
}
LAYERS = tuple(POOLING) + ("res5_gap",)  # res5_gap: global average of res5 (2048-d on ResNet-50)
# What the pooling gives ResNet-50 at 224 px: the protocol's feature dimensions (docs/protocols.md 5.1),
# against which a rehearsal checks the taps of a paper-scale run.
RESNET50_224_DIMS = {"conv1": 9216, "res2": 9216, "res3": 8192, "res4": 9216, "res5": 8192, "res5_gap": 2048}


def pool(layer: str, fmap: torch.Tensor) -> torch.Tensor:
    if layer == "res5_gap":
        return fmap.mean(dim=(2, 3))
    side, kernel, stride, pad, grid = POOLING[layer]
    if fmap.shape[-2:] == (side, side):
        fmap = F.avg_pool2d(fmap, kernel, stride, pad)  # zero padding counted, as the reference
    else:
        fmap = F.adaptive_avg_pool2d(fmap, grid)
    return fmap.flatten(1)


def eval_transform(cfg: FeatureConfig) -> v2.Compose:
    """Resize the shorter side, then resize to a square (no crop)."""
    return v2.Compose([v2.PILToTensor(), v2.Resize(cfg.resize_short, antialias=True),
                       v2.Resize((cfg.size, cfg.size), antialias=True), normalize()])


class EvalImages(Dataset):
    """Preprocessed images plus a readable flag; an unreadable image yields zeros, flagged False."""

    def __init__(self, paths: list[Path], transform: v2.Compose, size: int):
        self.paths, self.transform, self.size = paths, transform, size

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, bool]:
        try:
            return self.transform(read_rgb(self.paths[i])), True
        except UnreadableImageError:
            return torch.zeros(3, self.size, self.size), False


def tap_features(backbone: ResNet, images: torch.Tensor, layers: tuple[str, ...]) -> dict[str, torch.Tensor]:
    """Each layer's pooled feature vectors (rows x dims) of a batch, in one forward pass."""
    maps = backbone.taps(images, {"res5" if layer == "res5_gap" else layer for layer in layers})
    return {layer: pool(layer, maps["res5" if layer == "res5_gap" else layer]) for layer in layers}


def check_layers(layers: tuple[str, ...]) -> None:
    unknown = [layer for layer in layers if layer not in LAYERS]
    if unknown:
        raise ValueError(f"unknown feature layers {unknown}; expected some of {', '.join(LAYERS)}")


@dataclass
class Features:
    """Per-layer feature matrices over a dataset's images; `valid[i]` False = unreadable image."""
    by_layer: dict[str, np.ndarray]
    valid: np.ndarray

    @property
    def unreadable(self) -> int:
        return int((~self.valid).sum())


@torch.no_grad()
def compute_features(backbone: ResNet, paths: list[Path], layers: tuple[str, ...], cfg: FeatureConfig,
                     device: torch.device) -> Features:
    check_layers(layers)
    backbone.eval().to(device, memory_format=torch.channels_last)  # as trained: faster convolutions
    loader = DataLoader(EvalImages(paths, eval_transform(cfg), cfg.size), batch_size=cfg.batch_size,
                        num_workers=cfg.num_workers, pin_memory=device.type == "cuda")
    chunks: dict[str, list[np.ndarray]] = {layer: [] for layer in layers}
    valid: list[np.ndarray] = []
    meter = progress.Meter("features", len(paths), "images")
    for images, ok in loader:
        meter.update(len(images))
        for layer, rows in tap_features(backbone, images.to(device, non_blocking=True), layers).items():
            chunks[layer].append(rows.float().cpu().numpy())
        valid.append(ok.numpy())
    return Features({k: np.concatenate(v) for k, v in chunks.items()}, np.concatenate(valid))


class FeatureCache:
    """Features cached on disk per (artifact, dataset, preprocessing, layer)."""

    def __init__(self, root: Path):
        self.root = Path(root)

    def folder(self, artifact_sha: str, dataset_key: str, cfg: FeatureConfig) -> Path:
        prep = config_hash({"resize_short": cfg.resize_short, "size": cfg.size})[:8]
        return self.root / artifact_sha[:16] / f"{dataset_key}-{prep}"

    def get(self, backbone: ResNet, artifact_sha: str, dataset_key: str, paths: list[Path],
            cfg: FeatureConfig, device: torch.device) -> Features:
        folder = self.folder(artifact_sha, dataset_key, cfg)
        missing = [layer for layer in cfg.layers if not (folder / f"{layer}.npy").exists()]
        if missing or not (folder / "valid.npy").exists():  # valid.npy last: a killed write left it out
            fresh = compute_features(backbone, paths, tuple(missing or cfg.layers[:1]), cfg, device)
            for layer, array in fresh.by_layer.items():
                save_npy(folder / f"{layer}.npy", array)
                fault_point("features.layer")
            atomic_write_json(folder / "meta.json", {"images": len(paths), "dataset": dataset_key})
            save_npy(folder / "valid.npy", fresh.valid)
        by_layer = {layer: np.load(folder / f"{layer}.npy") for layer in cfg.layers}
        valid = np.load(folder / "valid.npy")
        if any(len(a) != len(paths) for a in by_layer.values()) or len(valid) != len(paths):
            raise RuntimeError(f"feature cache {folder} does not match the dataset's {len(paths)} images; "
                               "delete it to recompute")
        return Features(by_layer, valid)
