"""Backbone initialisation (`model.conv_init`): torchvision's Kaiming fan-out or OpenSelfSup's
fan-in (the official ORL code, the `paper` recipes), reaching every freshly built network."""
import math
from dataclasses import replace

import pytest
import torch
from torch import nn

from orl_bench import pipeline
from orl_bench.config import ConfigError, config_hash, dump_yaml, to_dict
from orl_bench.engine.checkpoint import load_backbone
from orl_bench.methods.byol import BYOL
from orl_bench.models.backbones import build_backbone


@pytest.mark.parametrize("mode", ["fan_in", "fan_out"])
def test_every_conv_has_the_kaiming_std_of_its_mode(mode):
    torch.manual_seed(0)
    net = build_backbone("resnet50", conv_init=mode)
    convs = [m for m in net.modules() if isinstance(m, nn.Conv2d)]
    fans = [(c.in_channels // c.groups * c.kernel_size[0] * c.kernel_size[1],
             c.out_channels * c.kernel_size[0] * c.kernel_size[1]) for c in convs]
    assert len(convs) == 53 and sum(f_in != f_out for f_in, f_out in fans) >= 20  # the modes differ there
    for conv, (fan_in, fan_out) in zip(convs, fans, strict=True):
        n = conv.weight.numel()
        expected = math.sqrt(2 / (fan_in if mode == "fan_in" else fan_out))
        # 5 standard errors of a normal sample's std (1 / sqrt(2n) relative): 11% at 1000 weights
        assert n >= 1000 and conv.weight.std().item() == pytest.approx(expected, rel=5 / math.sqrt(2 * n))
    for bn in (m for m in net.modules() if isinstance(m, nn.BatchNorm2d)):
        assert torch.all(bn.weight == 1) and torch.all(bn.bias == 0)
    with pytest.raises(ValueError, match="expected one of fan_out, fan_in"):
        build_backbone("resnet18", conv_init="xavier")


def test_paper_recipes_use_the_official_init_and_the_others_keep_their_hash():
    paper = pipeline.load_pretrain_config("byol", "paper", [])
    default = pipeline.load_pretrain_config("byol", "default", [])
    assert paper.model.conv_init == "fan_in" and default.model.conv_init == "fan_out"
    assert "conv_init: fan_in" in dump_yaml(paper)  # what config.yaml beside the artifact records
    # left at its default the field is not hashed, so configs from before it keep their hash
    assert set(to_dict(default, for_hash=True)["model"]) == {"arch", "width"}
    assert config_hash(replace(default, model=replace(default.model, conv_init="fan_in"))) != config_hash(default)
    with pytest.raises(ConfigError, match="model.conv_init must be one of fan_out, fan_in, got 'xavier'"):
        pipeline.load_pretrain_config("byol", "default", ["model.conv_init=xavier"])


def test_methods_and_the_random_baseline_build_with_the_recipe_init(tmp_path):
    cfg = pipeline.load_pretrain_config("byol", "tiny", ["model.conv_init=fan_in"])
    torch.manual_seed(0)
    method = BYOL(cfg)
    torch.manual_seed(0)
    expected = build_backbone(cfg.model.arch, cfg.model.width, "fan_in").state_dict()
    assert all(torch.equal(v, expected[k]) for k, v in method.backbone.state_dict().items())

    random_cfg = pipeline.load_pretrain_config("random", "tiny", ["model.conv_init=fan_in"])
    pipeline.export_random(random_cfg, tmp_path / "random", {}, {})
    exported, _ = load_backbone(tmp_path / "random")
    torch.manual_seed(random_cfg.train.seed)
    expected = build_backbone(random_cfg.model.arch, random_cfg.model.width, "fan_in").state_dict()
    assert all(torch.equal(v, expected[k]) for k, v in exported.state_dict().items())
