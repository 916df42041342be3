"""CUDA behaviour, run on a GPU machine with `pytest -m gpu` (skipped elsewhere).

What a user relies on when moving from the CPU default to GPUs: channels_last and bf16 autocast
change the numbers only within rounding, gradients stay finite under autocast, and a pretraining
run on CUDA (ORL's whole chain included) writes artifacts that record how they ran and load on
a CPU-only machine.
"""
from __future__ import annotations

import json
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch

from orl_bench import pipeline
from orl_bench.engine.checkpoint import load_backbone, read_run_info
from orl_bench.engine.distributed import DistInfo
from orl_bench.engine.trainer import build_method
from orl_bench.methods.base import Progress
from orl_bench.registry import METHODS
from tests.conftest import run_cli

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]

CUDA = DistInfo(0, 1, 0, torch.device("cuda"))
BATCH, VIEW, PATCH = 16, 64, 32


def _pair(size: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    return tuple(torch.randn(BATCH, 3, size, size, generator=generator).cuda() for _ in range(2))


# One training batch per trainable method, in the layout its dataset yields. A newly registered
# method fails `test_every_trainable_method_has_a_gpu_batch` until it gets an entry here.
CLASSES = 5
BATCHES = {
    "byol": lambda g: _pair(VIEW, g),
    "orl": lambda g: (_pair(VIEW, g), _pair(PATCH, g), _pair(PATCH, g)),
    "supervised": lambda g: (torch.randn(BATCH, 3, VIEW, VIEW, generator=g).cuda(),
                             (torch.rand(BATCH, CLASSES, generator=g) > 0.7).float().cuda()),
    "simclr": lambda g: _pair(VIEW, g),
    "mocov2": lambda g: _pair(VIEW, g),
    "densecl": lambda g: _pair(VIEW, g),
    "selfemd": lambda g: _pair(VIEW, g),
    "byol_multicrop": lambda g: (*_pair(VIEW, g), *_pair(PATCH, g), *_pair(PATCH, g)),
    # two views, then per view 10 xyxy boxes in view pixels (5 distinct pairs), then which are valid
    "scrl": lambda g: (*_pair(VIEW, g),
                       *(torch.tensor([[0.0, 0.0, 32.0, 32.0], [16.0, 8.0, 60.0, 50.0]]).repeat(BATCH, 5, 1).cuda()
                         for _ in range(2)),
                       torch.ones(BATCH, 10, dtype=torch.bool).cuda()),
    # two scene views, K = 4 instance crops per view, and the share of instance slots filled in
    "univip": lambda g: (*_pair(VIEW, g),
                         *(torch.randn(BATCH, 4, 3, PATCH, PATCH, generator=g).cuda() for _ in range(2)),
                         torch.zeros(BATCH).cuda()),
}


def _method(name: str, channels_last: bool = True):
    cfg = pipeline.load_pretrain_config(name, "tiny", [f"train.channels_last={str(channels_last).lower()}"])
    inputs = None
    if name == "supervised":  # its classifier is sized by the labels file
        inputs = {"labels": Path(tempfile.mkdtemp()) / "labels.npy"}
        np.save(inputs["labels"], np.zeros((BATCH, CLASSES), np.uint8))
    return build_method(cfg, CUDA, inputs)


def test_every_trainable_method_has_a_gpu_batch():
    trainable = {name for name in METHODS.names() if name != "random"}
    assert trainable <= set(BATCHES), f"add a batch for {sorted(trainable - set(BATCHES))} to BATCHES"


@pytest.mark.parametrize("name", sorted(BATCHES))
def test_channels_last_matches_contiguous_layout(name, monkeypatch):
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)
    batch = BATCHES[name](torch.Generator().manual_seed(0))
    losses = []
    for channels_last in (True, False):
        method = _method(name, channels_last)
        first_conv = method.backbone.conv1.weight
        assert first_conv.is_contiguous(memory_format=torch.channels_last) == channels_last
        losses.append(method(batch, Progress(0, 10, 0))["loss"].item())
    assert losses[0] == pytest.approx(losses[1], rel=1e-4, abs=1e-5)


@pytest.mark.parametrize("name", sorted(BATCHES))
def test_bf16_autocast_loss_and_gradients(name):
    batch = BATCHES[name](torch.Generator().manual_seed(0))
    method = _method(name)
    full = method(batch, Progress(0, 10, 0))["loss"].item()
    with torch.autocast("cuda", dtype=torch.bfloat16):
        mixed = method(batch, Progress(0, 10, 0))["loss"]
    mixed.backward()
    # bf16 keeps ~3 significant digits; the loss sums a few cosine terms of order 1.
    assert mixed.item() == pytest.approx(full, rel=0.03, abs=0.03)
    grads = [p.grad for p in method.parameters() if p.requires_grad and p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)


@pytest.mark.parametrize("name,extra", [("byol", []), ("orl", ["--set", "method.stage2.box_source=gt"])])
def test_cuda_pretraining_records_how_it_ran_and_loads_on_cpu(workdir, name, extra):
    # Ground-truth boxes keep ORL's chain free of selective search (OpenCV contrib), so the stage-2
    # RoI embeddings and stage 3 still run on CUDA.
    done = run_cli("pretrain", "--method", name, "--recipe", "tiny", "--workdir", str(workdir),
                   "--set", "train.epochs=1", *extra, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    folder = next(p.parent for p in (workdir / "artifacts").glob(f"{name}-*/manifest.json"))
    manifest = json.loads((folder / "manifest.json").read_text())
    assert read_run_info(folder)["device"] == torch.cuda.get_device_name(0) and manifest["amp"] == "bfloat16"
    assert manifest["channels_last"] is True
    backbone, _ = load_backbone(folder)  # strict, onto the CPU
    assert all(p.device.type == "cpu" and torch.isfinite(p).all() for p in backbone.parameters())
