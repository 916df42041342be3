"""Backbones (torchvision ResNets with layer taps) and MLP heads."""
