"""Training faults: a loss that turns NaN stops the run at that step, naming it and the loss
terms; a full disk while writing a checkpoint or a feature cache leaves the previous complete
file in place. Either way the last good state stays loadable and the command says what happened."""
from __future__ import annotations

import errno
from pathlib import Path

import numpy as np
import pytest
import torch

from orl_bench import pipeline
from orl_bench.cli import main
from orl_bench.config import FeatureConfig
from orl_bench.data.sources import pretrain_images
from orl_bench.engine import checkpoint
from orl_bench.engine.checkpoint import TRAIN_STATE, load_train_state
from orl_bench.methods.base import Progress
from orl_bench.methods.byol import BYOL
from orl_bench.models.backbones import build_backbone
from orl_bench.registry import METHODS
from orl_bench.tasks import features as features_module
from orl_bench.tasks.features import FeatureCache

DIVERGES_AT = 3  # 1-based step whose loss is NaN


class DivergingBYOL(BYOL):
    """BYOL whose loss turns NaN at step DIVERGES_AT, as an exploding learning rate would."""

    def training_step(self, batch, progress: Progress) -> dict[str, torch.Tensor]:
        losses = super().training_step(batch, progress)
        if progress.step + 1 == DIVERGES_AT:
            losses = {"loss": losses["loss"] * float("nan"), "loss_part": losses["loss"].detach()}
        return losses


@pytest.fixture
def diverging_plugin(tmp_path, monkeypatch):
    recipes = tmp_path / "recipes"
    recipes.mkdir()
    (recipes / "tiny.yaml").write_text("base: orl_bench:pretrain/byol/tiny.yaml\nmethod: {name: diverging}\n")
    monkeypatch.setattr(DivergingBYOL, "recipes_dir", recipes)
    METHODS.get("byol")  # the registry loads its plugins first, then gets the test's one
    monkeypatch.setitem(METHODS._entries, "diverging", DivergingBYOL)
    monkeypatch.setitem(METHODS._sources, "diverging", "tests")
    return "diverging"


def pretrain_args(workdir: Path, method: str) -> list[str]:
    return ["pretrain", "--method", method, "--recipe", "tiny", "--workdir", str(workdir),
            "--set", "train.checkpoint_every_steps=1"]


def test_a_nan_loss_stops_at_its_step_and_keeps_the_last_checkpoint(workdir, diverging_plugin, capsys):
    assert main(pretrain_args(workdir, diverging_plugin)) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("orl-bench: error: diverging: the loss is not finite at step 3 ")
    assert "loss=nan" in err and "loss_part=" in err and "step 2) is intact" in err
    folder = next((workdir / "artifacts").glob("diverging-*"))
    assert load_train_state(folder / TRAIN_STATE)["step"] == DIVERGES_AT - 1  # loadable, the last good step
    assert not (folder / "manifest.json").exists()


def test_a_full_disk_at_a_checkpoint_keeps_the_previous_one(workdir, monkeypatch, capsys):
    real_save, calls = torch.save, []

    def disk_full_on_third(obj, f, *args, **kwargs):  # part of the file is written, then ENOSPC
        calls.append(1)
        if len(calls) == 3:
            f.write(b"PK\x03\x04 partial")
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(checkpoint.torch, "save", disk_full_on_third)
    assert main(pretrain_args(workdir, "byol")) == 2
    assert capsys.readouterr().err.strip().startswith("orl-bench: error: [Errno 28] No space left on device")
    folder = next((workdir / "artifacts").glob("byol-*"))
    assert load_train_state(folder / TRAIN_STATE)["step"] == 2
    assert [p.name for p in folder.iterdir() if p.name.startswith(".")] == []  # no temporary file left behind


def test_a_full_disk_in_the_feature_cache_keeps_what_was_complete(tmp_path, tiny_data, monkeypatch):
    images = pretrain_images(pipeline.load_pretrain_config("byol", "tiny", []).data, tiny_data.parent)
    paths = images.paths[:8]
    cfg = FeatureConfig(layers=("res5", "res5_gap"), resize_short=37, size=32, batch_size=4, num_workers=0)
    cache, backbone = FeatureCache(tmp_path / "features"), build_backbone("resnet18", 8)
    real_save = np.save

    def disk_full_on_gap(f, array, *args, **kwargs):
        if array.shape[1:] == (backbone.num_features,):  # res5_gap's rows
            f.write(b"\x93NUMPY partial")
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(f, array, *args, **kwargs)

    monkeypatch.setattr(np, "save", disk_full_on_gap)
    with pytest.raises(OSError, match="No space left"):
        cache.get(backbone, "a" * 64, "d", paths, cfg, torch.device("cpu"))
    folder = cache.folder("a" * 64, "d", cfg)
    assert sorted(p.name for p in folder.iterdir()) == ["res5.npy"]  # complete; nothing half-written
    complete = np.load(folder / "res5.npy")
    monkeypatch.setattr(np, "save", real_save)
    computed, real_compute = [], features_module.compute_features
    monkeypatch.setattr(features_module, "compute_features",
                        lambda b, p, layers, *a: computed.append(layers) or real_compute(b, p, layers, *a))
    got = cache.get(backbone, "a" * 64, "d", paths, cfg, torch.device("cpu"))
    assert computed == [("res5_gap",)] and np.array_equal(got.by_layer["res5"], complete)
