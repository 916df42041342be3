"""train.augment=device through the method and its dataset: the loader's decoded images and
drawn parameters become the loader path's views, and methods whose samples need more than the
image refuse it."""
from __future__ import annotations

import pytest
import torch

from orl_bench import pipeline
from orl_bench.config import ConfigError
from orl_bench.data.pretrain_dataset import collate_skipping_unreadable
from orl_bench.data.sources import pretrain_images
from orl_bench.data.views import IMAGENET_STD
from orl_bench.engine.distributed import DistInfo
from orl_bench.data.pretrain_dataset import ViewsDataset
from orl_bench.engine.trainer import build_method, pretrain
from orl_bench.methods.byol import BYOL
from orl_bench.registry import METHODS


@pytest.mark.parametrize("method", ["byol", "byol_multicrop"])
def test_device_path_batches_match_the_loader_path(workdir, method):
    """train.augment=device: the same sampler keys give the loader path's views (same parameters,
    pixels within the tolerance above), view for view and in the same order."""
    paths = pretrain_images(pipeline.load_pretrain_config(method, "tiny", []).data, workdir).paths
    keys = [3, 70, 5, 64 + 11]  # two epochs' keys, as the sampler gives them
    batches = {}
    for augment in ("loader", "device"):
        cfg = pipeline.load_pretrain_config(method, "tiny", [f"train.augment={augment}", "train.channels_last=false"])
        built = build_method(cfg, DistInfo(0, 1, 0, torch.device("cpu")))
        dataset = built.make_dataset(paths)
        batch, bad = collate_skipping_unreadable([dataset[k] for k in keys])
        assert not bad
        batches[augment] = built.device_views(batch) if augment == "device" else batch
    assert len(batches["device"]) == len(batches["loader"]) >= 2
    for made, reference in zip(batches["device"], batches["loader"]):
        assert made.shape == reference.shape
        scale = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)  # back to [0, 1] units
        assert ((made - reference).abs() * scale).mean() < 0.02


@pytest.mark.parametrize("name", ["supervised", "scrl", "univip"])
def test_methods_whose_samples_need_more_than_the_image_refuse_the_device_path(workdir, name):
    cfg = pipeline.load_pretrain_config(name, "tiny", ["train.augment=device"])
    with pytest.raises(ConfigError, match=rf"method '{name}' declares no view_specs\(\), which train.augment=device "
                                          "needs: set train.augment=loader"):
        build_method(cfg, DistInfo(0, 1, 0, torch.device("cpu")))


class LoaderOnlyBYOL(BYOL):
    """A plugin that keeps BYOL's view specs but builds its own dataset without the device half."""

    def make_dataset(self, paths):
        return ViewsDataset(paths, self.view_transform(), self.cfg.train.seed)


def test_a_dataset_that_ignores_the_device_path_is_an_error_not_loader_views(workdir, tmp_path, monkeypatch):
    METHODS.get("byol")  # the built-ins are loaded, so the stand-in replaces BYOL for this test only
    monkeypatch.setitem(METHODS._entries, "byol", LoaderOnlyBYOL)
    cfg = pipeline.load_pretrain_config("byol", "tiny", ["train.augment=device"])
    paths = pretrain_images(cfg.data, workdir).paths
    with pytest.raises(ConfigError, match="method 'byol' made its dataset without the device views that "
                                          "train.augment=device asks for"):
        pretrain(cfg, tmp_path / "artifact", paths, {}, DistInfo(0, 1, 0, torch.device("cpu")))
    assert not (tmp_path / "artifact" / "manifest.json").exists()
