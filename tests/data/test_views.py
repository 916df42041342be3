"""The blur of the view recipes: the official PIL blur by default, the kernel blur by config."""
import numpy as np
import pytest
import torch
from PIL import Image, ImageFilter
from torchvision.transforms import v2

from orl_bench.data.views import GaussianBlur, ViewParams


def test_pil_blur_is_pils_gaussian_blur_with_radius_sigma():
    x = torch.randint(0, 256, (3, 40, 56), dtype=torch.uint8)
    torch.manual_seed(3)
    sigma = torch.empty(1).uniform_(0.1, 2.0).item()  # the draw the transform makes
    expected = Image.fromarray(x.permute(1, 2, 0).numpy()).filter(ImageFilter.GaussianBlur(radius=sigma))
    torch.manual_seed(3)
    out = GaussianBlur((0.1, 2.0), "pil", 224)(x)
    assert out.dtype == torch.uint8 and out.shape == x.shape
    assert torch.equal(out, torch.from_numpy(np.array(expected)).permute(2, 0, 1))


def test_kernel_blur_uses_a_kernel_of_a_tenth_of_the_view():
    x = torch.randint(0, 256, (3, 40, 56), dtype=torch.uint8)
    torch.manual_seed(3)
    sigma = torch.empty(1).uniform_(0.1, 2.0).item()
    torch.manual_seed(3)
    out = GaussianBlur((0.1, 2.0), "kernel", 224)(x)
    assert torch.equal(out, v2.functional.gaussian_blur(x, [23, 23], [sigma, sigma]))


def test_unknown_blur_is_a_clear_error():
    with pytest.raises(ValueError, match="views.blur must be one of"):
        ViewParams(blur="box")
