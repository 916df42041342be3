"""torchvision ResNets with a width parameter and named layer taps.

Key names are torchvision's (conv1, bn1, layer1..layer4), so a backbone exports to and loads from
a plain torchvision state dict. `fc` is an Identity: a backbone returns globally pooled features.
"""
from __future__ import annotations

import torch
from torch import nn
from torchvision.models import resnet as tv

from orl_bench.config import CONV_INITS

ARCHS: dict[str, tuple[type[nn.Module], list[int]]] = {
    "resnet18": (tv.BasicBlock, [2, 2, 2, 2]),
    "resnet34": (tv.BasicBlock, [3, 4, 6, 3]),
    "resnet50": (tv.Bottleneck, [3, 4, 6, 3]),
    "resnet101": (tv.Bottleneck, [3, 4, 23, 3]),
}
TAPS = ("conv1", "res2", "res3", "res4", "res5")


class ResNet(tv.ResNet):
    """torchvision's ResNet with the stem width as a parameter (64 is torchvision's network).

    torchvision hard-codes 64 channels, so the constructor is restated here with the stage widths
    scaled; blocks, `_make_layer` and forward are torchvision's own. The initialisation is too
    with `conv_init="fan_out"`; "fan_in" is OpenSelfSup's (the official ORL code): Kaiming normal
    over each convolution's fan-in instead of its fan-out, BN weight 1 and bias 0 in both.
    """

    def __init__(self, block: type[nn.Module], layers: list[int], width: int = 64, conv_init: str = "fan_out"):
        nn.Module.__init__(self)
        self._norm_layer = nn.BatchNorm2d
        self.inplanes, self.dilation, self.groups, self.base_width = width, 1, 1, 64
        self.conv1 = nn.Conv2d(3, width, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.layer1 = self._make_layer(block, width, layers[0])
        self.layer2 = self._make_layer(block, width * 2, layers[1], stride=2)
        self.layer3 = self._make_layer(block, width * 4, layers[2], stride=2)
        self.layer4 = self._make_layer(block, width * 8, layers[3], stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Identity()
        self.num_features = width * 8 * block.expansion
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode=conv_init, nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def taps(self, x: torch.Tensor, names: tuple[str, ...] | set[str]) -> dict[str, torch.Tensor]:
        """Intermediate maps: conv1 (stem after ReLU, before max-pool) and res2..res5."""
        out: dict[str, torch.Tensor] = {}
        x = self.relu(self.bn1(self.conv1(x)))
        if "conv1" in names:
            out["conv1"] = x
        x = self.maxpool(x)
        for tap, layer in zip(TAPS[1:], (self.layer1, self.layer2, self.layer3, self.layer4)):
            x = layer(x)
            if tap in names:
                out[tap] = x
            if len(out) == len(names):
                break
        return out


def build_backbone(arch: str, width: int = 64, conv_init: str = "fan_out") -> ResNet:
    """A freshly initialised backbone; `conv_init` is `model.conv_init` (weights loaded over it
    make it irrelevant, hence the default for checkpoints and artifacts)."""
    if arch not in ARCHS:
        raise ValueError(f"unknown arch '{arch}'; expected one of {', '.join(ARCHS)}")
    if width < 8 or width % 8:
        raise ValueError(f"width must be a positive multiple of 8 (64 = torchvision), got {width}")
    if conv_init not in CONV_INITS:
        raise ValueError(f"unknown conv_init '{conv_init}'; expected one of {', '.join(CONV_INITS)}")
    block, layers = ARCHS[arch]
    return ResNet(block, layers, width, conv_init)
