"""Multi-crop BYOL (Table 5c): the crop layout of each recipe, the pairing of its loss, its variant."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torchvision.transforms import v2

from orl_bench import pipeline
from orl_bench.data.views import GaussianBlur, MultiCropViews, multi_crop_transform
from orl_bench.methods.base import Progress
from orl_bench.methods.byol_multicrop import multicrop_byol_loss
from orl_bench.registry import METHODS
from orl_bench.results.paper import load_reference


def _pair_loss(p: torch.Tensor, z: torch.Tensor) -> float:
    return float((2 - 2 * F.cosine_similarity(p, z, dim=1)).mean())


def test_loss_is_the_mean_over_every_crop_against_every_other_global_target():
    g = torch.Generator().manual_seed(0)
    g1, g2, l1, l2, l3 = (torch.randn(4, 6, generator=g) for _ in range(5))  # predictions
    t1, t2 = torch.randn(4, 6, generator=g), torch.randn(4, 6, generator=g)  # the globals' targets
    pairs = [(g1, t2), (g2, t1), (l1, t1), (l1, t2), (l2, t1), (l2, t2), (l3, t1), (l3, t2)]
    expected = sum(_pair_loss(p, z) for p, z in pairs) / len(pairs)
    assert multicrop_byol_loss([g1, g2, l1, l2, l3], [t1, t2]).item() == pytest.approx(expected, rel=1e-6)
    # no crop is pulled towards its own target: a perfect self-match costs nothing extra
    assert multicrop_byol_loss([t1, t2], [t1, t2]).item() == pytest.approx(_pair_loss(t1, t2), rel=1e-6)


def test_step_pairs_the_online_predictions_with_the_global_targets_only():
    method = METHODS.get("byol_multicrop")(pipeline.load_pretrain_config("byol_multicrop", "tiny", []))
    crops = [torch.randn(4, 3, 32, 32) for _ in range(2)] + [torch.randn(4, 3, 16, 16) for _ in range(4)]
    loss = method.training_step(tuple(crops), Progress(0, 10, 0))["loss"]
    with torch.no_grad():
        p = [method.predictor(method.online(c)) for c in crops]
        z = [method.target(c) for c in crops[:2]]
    pairs = [(p[0], z[1]), (p[1], z[0])] + [(p[k], z[j]) for k in range(2, 6) for j in range(2)]
    assert loss.item() == pytest.approx(sum(_pair_loss(a, b) for a, b in pairs) / 10, rel=1e-5)
    loss.backward()
    assert all(t.grad is None for t in method.target.parameters())


@pytest.mark.parametrize("recipe, global_size, local_size", [("tiny", 32, 16), ("default", 64, 32), ("paper", 224, 96)])
def test_recipes_give_two_global_and_four_local_crops(recipe, global_size, local_size):
    cfg = pipeline.load_pretrain_config("byol_multicrop", recipe, [])
    method_cls = METHODS.get("byol_multicrop")
    views = method_cls.params_of(cfg).views
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (120, 160, 3), dtype=np.uint8))
    crops = multi_crop_transform(views)(image)
    assert [tuple(c.shape) for c in crops] == [(3, global_size, global_size)] * 2 + [(3, local_size, local_size)] * 4
    assert all(c.dtype == torch.float32 for c in crops)
    # Table 5c's row is found at every scale: the key names the crop counts in the paper's pixels
    variant = method_cls.variant(cfg)
    assert variant == {"views": "2x224+4x96"}
    assert load_reference().lookup("voc07_svm", "mAP", "byol_multicrop", **variant) == 84.0


def test_crop_scales_and_view_probabilities_follow_the_multi_crop_recipe():
    transform = multi_crop_transform(MultiCropViews(size=32, local_size=16, local_crops=3))
    def step(chain, kind):
        return next(t for t in chain.transforms if isinstance(t, kind)
                    or isinstance(t, v2.RandomApply) and isinstance(t.transforms[0], kind))

    crops = [step(t, v2.RandomResizedCrop) for t in transform.transforms]
    assert [c.scale for c in crops] == [(0.14, 1.0)] * 2 + [(0.05, 0.14)] * 3
    blur_p = [step(t, GaussianBlur).p for t in transform.transforms]  # view 1 always blurs, view 2 rarely
    assert blur_p == [1.0, 0.1, 1.0, 0.1, 1.0]


def test_other_crop_counts_change_the_variant_and_too_few_globals_are_an_error():
    cfg = pipeline.load_pretrain_config("byol_multicrop", "tiny", ["method.views.local_crops=6"])
    variant = METHODS.get("byol_multicrop").variant(cfg)
    assert variant == {"views": "2x224+6x96"}
    assert load_reference().lookup("voc07_svm", "mAP", "byol_multicrop", **variant) is None
    with pytest.raises(ValueError, match="global_crops must be >= 2, got 1"):
        pipeline.load_pretrain_config("byol_multicrop", "tiny", ["method.views.global_crops=1"])
    with pytest.raises(ValueError, match="local_size must be >= 1"):
        MultiCropViews(local_size=0)
