"""Layer taps and the docs/protocols.md 5.1 pooling table; the per-(artifact, dataset, layer) cache."""
import numpy as np
import pytest
import torch

from orl_bench.config import FeatureConfig
from orl_bench.models.backbones import build_backbone
from orl_bench.tasks import features as F

RESNET50_224_DIMS = {"conv1": 9216, "res2": 9216, "res3": 8192, "res4": 9216, "res5": 8192, "res5_gap": 2048}


def test_resnet50_at_224_gives_the_reference_dimensions():
    net = build_backbone("resnet50").eval()
    with torch.no_grad():
        maps = net.taps(torch.randn(1, 3, 224, 224), set(F.POOLING))
        dims = {layer: F.pool(layer, maps["res5" if layer == "res5_gap" else layer]).shape[1] for layer in F.LAYERS}
    assert dims == RESNET50_224_DIMS


def test_reference_kernel_is_used_at_the_reference_map_size():
    fmap = torch.randn(2, 4, 14, 14)  # res4 at 224 px
    expected = torch.nn.AvgPool2d(8, 3, 0)(fmap).flatten(1)
    assert torch.allclose(F.pool("res4", fmap), expected)
    conv1 = torch.randn(1, 2, 112, 112)
    assert torch.allclose(F.pool("conv1", conv1), torch.nn.AvgPool2d(10, 10, 4)(conv1).flatten(1))


def test_other_sizes_pool_adaptively_to_the_same_grid():
    for layer, (_, _, _, _, grid) in F.POOLING.items():
        assert F.pool(layer, torch.randn(1, 3, 9, 9)).shape == (1, 3 * grid * grid)
    assert F.pool("res5_gap", torch.randn(2, 5, 3, 3)).shape == (2, 5)


def test_cache_computes_once_per_layer(tmp_path, tiny_data, monkeypatch):
    from orl_bench.data.voc import VOC2007
    voc = VOC2007(next(tiny_data.glob("synth-*")) / "VOCdevkit", "test")
    cfg = FeatureConfig(layers=("res5",), resize_short=37, size=32, batch_size=16, num_workers=0)
    net = build_backbone("resnet18", 8)
    cache = F.FeatureCache(tmp_path)
    first = cache.get(net, "ab" * 32, "voc-test", voc.paths, cfg, torch.device("cpu"))
    assert first.by_layer["res5"].shape == (len(voc.paths), 64 * 4) and first.valid.all()

    def forbidden(*a, **k):
        raise AssertionError("features recomputed although cached")
    monkeypatch.setattr(F, "compute_features", forbidden)
    again = cache.get(net, "ab" * 32, "voc-test", voc.paths, cfg, torch.device("cpu"))
    assert np.array_equal(first.by_layer["res5"], again.by_layer["res5"])
    with pytest.raises(AssertionError, match="recomputed"):  # a new layer is computed, only that one
        cache.get(net, "ab" * 32, "voc-test", voc.paths, FeatureConfig(layers=("res4",), size=32), torch.device("cpu"))
