"""Batched view augmentation (orl_bench/data/batched_views.py) against the per-image paths.

Parameters: `draw_view_params` must make the PIL path's own draws (exactly, under the same seed)
and so follow its distributions. Pixels: BatchedViews must match torchvision's per-image functional
ops on float tensors, exactly (to float rounding) for every op but the downscaling crop, whose
roi_align filter differs from the antialiased resize by a documented tolerance.
"""
from __future__ import annotations

import math
from typing import Any, Callable

import numpy as np
import pytest
import torch
from PIL import Image
from scipy.stats import ks_2samp
from torchvision.transforms import RandomResizedCrop, v2

from orl_bench.data import views
from orl_bench.data.batched_views import (PARAM_FIELDS, BatchedViews, DecodedViews, collate_padded,
                                          draw_view_params, shift_hue)
from orl_bench.data.views import IMAGENET_MEAN, IMAGENET_STD, ViewParams, seeded_call, view_transform

TF = v2.functional
COLUMN = {name: i for i, name in enumerate(PARAM_FIELDS)}
RECIPE = ViewParams(size=32)
DRAWS = 4000
DRAW_SIZE = (375, 500)  # a typical photo: crop sizes are near-continuous for the KS test
FLOAT_EXACT = 1e-5  # float32 rounding of the same arithmetic done in another order


def tolerance(p: float, n: int) -> float:
    """Five binomial standard deviations of a rate over n draws (0 for a certain event)."""
    return 5 * math.sqrt(p * (1 - p) / n)


def draws(which: int, seed: int = 0) -> torch.Tensor:
    return seeded_call(seed, which, lambda: torch.stack(
        [draw_view_params(RECIPE, which, *DRAW_SIZE) for _ in range(DRAWS)]))


@pytest.fixture(scope="module")
def rows_by_view() -> dict[int, torch.Tensor]:
    return {1: draws(1), 2: draws(2)}


# --- parameter distributions -------------------------------------------------------------------

def test_crops_follow_random_resized_crop(rows_by_view):
    rows = rows_by_view[1]
    height, width = DRAW_SIZE
    reference = torch.tensor(seeded_call(1, 0, lambda: [
        RandomResizedCrop.get_params(torch.empty(0, height, width), list(RECIPE.scale), list(RECIPE.ratio))
        for _ in range(DRAWS)]), dtype=torch.float64)
    for crops in (rows[:, :4], reference):
        assert (crops[:, :2] >= 0).all() and (crops[:, 2:] >= 1).all()
        assert (crops[:, 0] + crops[:, 2] <= height).all() and (crops[:, 1] + crops[:, 3] <= width).all()

    def area_scale(crops: torch.Tensor) -> np.ndarray:
        return (crops[:, 2] * crops[:, 3] / (height * width)).numpy()

    def log_ratio(crops: torch.Tensor) -> np.ndarray:
        return torch.log(crops[:, 3] / crops[:, 2]).numpy()

    assert ks_2samp(area_scale(rows[:, :4]), area_scale(reference)).pvalue > 1e-3
    assert ks_2samp(log_ratio(rows[:, :4]), log_ratio(reference)).pvalue > 1e-3


@pytest.mark.parametrize("which", [1, 2])
def test_coin_flips_have_the_recipes_rates(rows_by_view, which):
    rows = rows_by_view[which]
    expected = {"flip": RECIPE.hflip_p, "jitter": RECIPE.color_jitter_p, "gray": RECIPE.grayscale_p,
                "blur": RECIPE.blur_p[which - 1], "solarize": RECIPE.solarize_p[which - 1]}
    for name, p in expected.items():
        column = rows[:, COLUMN[name]]
        assert set(column.unique().tolist()) <= {0.0, 1.0}
        assert abs(column.mean().item() - p) <= tolerance(p, DRAWS), name


def test_jitter_factors_and_order_follow_color_jitter(rows_by_view):
    rows = torch.cat(list(rows_by_view.values()))
    jittered = rows[rows[:, COLUMN["jitter"]] == 1]
    brightness, contrast, saturation, hue = RECIPE.color_jitter
    ranges = {"brightness": (1 - brightness, 1 + brightness), "contrast": (1 - contrast, 1 + contrast),
              "saturation": (1 - saturation, 1 + saturation), "hue": (-hue, hue)}
    for name, (low, high) in ranges.items():
        factor = jittered[:, COLUMN[name]]
        assert low <= factor.min() and factor.max() <= high, name
        # A uniform's mean: the centre within five standard errors.
        assert abs(factor.mean().item() - (low + high) / 2) <= 5 * (high - low) / math.sqrt(12 * len(factor)), name
    order = jittered[:, COLUMN["order0"]:COLUMN["order3"] + 1]
    assert (order.sort(dim=1).values == torch.arange(4.0)).all()  # a permutation of the four steps
    for step in range(4):
        for op in range(4):
            assert abs((order[:, step] == op).double().mean().item() - 0.25) <= tolerance(0.25, len(order))

    plain = rows[rows[:, COLUMN["jitter"]] == 0]
    neutral = torch.tensor([1.0, 1.0, 1.0, 0.0, 0.0, 1.0, 2.0, 3.0], dtype=torch.float64)
    assert (plain[:, COLUMN["brightness"]:COLUMN["order3"] + 1] == neutral).all()


def test_blur_sigma_is_uniform_over_the_recipes_range(rows_by_view):
    rows = rows_by_view[1]  # view 1 always blurs
    sigma = rows[:, COLUMN["sigma"]]
    low, high = RECIPE.blur_sigma
    assert low <= sigma.min() and sigma.max() <= high
    assert abs(sigma.mean().item() - (low + high) / 2) <= 5 * (high - low) / math.sqrt(12 * DRAWS)
    unblurred = rows_by_view[2][:, COLUMN["blur"]] == 0
    assert (rows_by_view[2][unblurred, COLUMN["sigma"]] == 0).all()


def record_pil_path_draws(monkeypatch) -> dict[str, Any]:
    """Spy on the transforms of `view_transform`: what each drew, for the steps that ran."""
    seen: dict[str, Any] = {}

    def spy(cls: type, method: str, name: str) -> None:
        # make_params: record what was drawn; transform: record that the step ran.
        original = getattr(cls, method)

        def recording(self, *args, **kwargs):
            result = original(self, *args, **kwargs)
            seen[name] = result if method == "make_params" else True
            return result
        monkeypatch.setattr(cls, method, recording)

    spy(v2.RandomResizedCrop, "make_params", "crop")
    spy(v2.RandomHorizontalFlip, "transform", "flip")
    spy(v2.ColorJitter, "make_params", "jitter")
    spy(v2.RandomGrayscale, "transform", "gray")
    spy(v2.RandomSolarize, "transform", "solarize")
    blur = views.GaussianBlur.__call__

    def recording_blur(self, x):
        state = torch.get_rng_state()  # peek at the sigma it is about to draw
        seen["sigma"] = torch.empty(1).uniform_(*self.sigma).item()
        torch.set_rng_state(state)
        return blur(self, x)
    monkeypatch.setattr(views.GaussianBlur, "__call__", recording_blur)
    return seen


def row_of(seen: dict[str, Any]) -> torch.Tensor:
    """The parameter row of what the PIL path drew."""
    row = torch.zeros(len(PARAM_FIELDS), dtype=torch.float64)
    crop = seen["crop"]
    row[:4] = torch.tensor([crop["top"], crop["left"], crop["height"], crop["width"]], dtype=torch.float64)
    row[COLUMN["brightness"]:COLUMN["order3"] + 1] = torch.tensor([1.0, 1.0, 1.0, 0.0, 0.0, 1.0, 2.0, 3.0])
    if "jitter" in seen:
        jitter = seen["jitter"]
        row[COLUMN["jitter"]] = 1
        for name, neutral in (("brightness", 1.0), ("contrast", 1.0), ("saturation", 1.0), ("hue", 0.0)):
            factor = jitter[f"{name}_factor"]
            row[COLUMN[name]] = neutral if factor is None else factor
        row[COLUMN["order0"]:COLUMN["order3"] + 1] = jitter["fn_idx"].double()
    for name in ("flip", "gray", "solarize"):
        row[COLUMN[name]] = float(name in seen)
    if "sigma" in seen:
        row[COLUMN["blur"]], row[COLUMN["sigma"]] = 1, seen["sigma"]
    return row


@pytest.mark.parametrize("recipe", [ViewParams(size=16),
                                    ViewParams(size=16, color_jitter=(0.4, 0.0, 0.3, 0.0), blur_p=(0.5, 0.5),
                                               solarize_p=(0.5, 0.5), blur="kernel")],
                         ids=["default", "two-factor-jitter"])
def test_draws_are_the_pil_paths_own_under_the_same_seed(monkeypatch, recipe):
    seen = record_pil_path_draws(monkeypatch)
    image = Image.fromarray(np.zeros((40, 56, 3), dtype=np.uint8))
    steps_taken = set()
    for which in (1, 2):
        transform = view_transform(recipe, which)
        for key in range(60):
            seen.clear()
            rng_after_pil = seeded_call(5, key, lambda: (transform(image), torch.get_rng_state())[1])
            row, rng_after_batched = seeded_call(5, key, lambda: (draw_view_params(recipe, which, 40, 56),
                                                                  torch.get_rng_state()))
            assert torch.equal(row, row_of(seen)), (which, key)
            assert torch.equal(rng_after_batched, rng_after_pil)  # the same draws, no more, no fewer
            steps_taken |= set(seen)
    assert steps_taken == {"crop", "flip", "jitter", "gray", "sigma", "solarize"}


# --- pixels ------------------------------------------------------------------------------------

def smooth_images(count: int, height: int = 48, width: int = 64, seed: int = 0) -> list[torch.Tensor]:
    """Deterministic random uint8 images with photo-like detail: noise at a quarter resolution,
    upsampled. (Pure per-pixel noise is the worst case of the resize filters' difference.)"""
    generator = torch.Generator().manual_seed(seed)
    coarse = torch.rand(count, 3, height // 4, width // 4, generator=generator)
    fine = TF.resize(coarse, [height, width], antialias=True).clamp(0, 1)
    return list((fine * 255).round().to(torch.uint8))


def noise_images(count: int, height: int = 48, width: int = 64, seed: int = 0) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return list(torch.randint(0, 256, (count, 3, height, width), generator=generator, dtype=torch.uint8))


def param_row(crop: tuple[int, int, int, int], **fields: float) -> torch.Tensor:
    """A row with the given crop and fields; the steps not named are skipped."""
    values = {"brightness": 1.0, "contrast": 1.0, "saturation": 1.0, "order1": 1.0, "order2": 2.0,
              "order3": 3.0, **dict(zip(("top", "left", "height", "width"), crop)), **fields}
    return torch.tensor([values.get(name, 0.0) for name in PARAM_FIELDS], dtype=torch.float64)


def reference_view(image: torch.Tensor, row: torch.Tensor, size: int, blur_kernel: int) -> torch.Tensor:
    """One view with torchvision's per-image functional ops on float [0, 1], before normalisation."""
    value = dict(zip(PARAM_FIELDS, row.tolist()))
    top, left, height, width = (int(value[name]) for name in ("top", "left", "height", "width"))
    x = TF.resized_crop(image.float() / 255, top, left, height, width, [size, size], antialias=True)
    if value["flip"]:
        x = TF.horizontal_flip(x)
    if value["jitter"]:
        steps: list[Callable[[torch.Tensor], torch.Tensor]] = [
            lambda y: TF.adjust_brightness(y, value["brightness"]),
            lambda y: TF.adjust_contrast(y, value["contrast"]),
            lambda y: TF.adjust_saturation(y, value["saturation"]),
            lambda y: TF.adjust_hue(y, value["hue"])]
        for step in range(4):
            x = steps[int(value[f"order{step}"])](x)
    if value["gray"]:
        x = TF.rgb_to_grayscale(x, num_output_channels=3)
    if value["blur"]:
        x = TF.gaussian_blur(x, [blur_kernel, blur_kernel], [value["sigma"], value["sigma"]])
    if value["solarize"]:
        x = TF.solarize(x, 128 / 255)
    return x


def compare(images: list[torch.Tensor], rows: list[torch.Tensor], recipe: ViewParams = RECIPE
            ) -> tuple[float, float]:
    """(mean, max) |BatchedViews - reference| in [0, 1] units, before normalisation."""
    module = BatchedViews(recipe)
    batch, _ = collate_padded(images)
    out = module(batch, torch.stack(rows))
    assert out.dtype == torch.float32 and out.shape == (len(images), 3, recipe.size, recipe.size)
    unnormalised = out * torch.tensor(IMAGENET_STD).view(3, 1, 1) + torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    reference = torch.stack([reference_view(image, row, recipe.size, 2 * module.blur_half + 1)
                             for image, row in zip(images, rows)])
    difference = (unnormalised - reference).abs()
    return difference.mean().item(), difference.max().item()


UNSCALED = (6, 12, 32, 32)  # a crop of the view's own size: resampling is exact, isolating the op
# Three samples per case, with different parameters each, one of them skipping the step.
OPS = {
    "flip": [{"flip": 1}, {}, {"flip": 1}],
    "brightness": [{"jitter": 1, "brightness": 0.65}, {}, {"jitter": 1, "brightness": 1.38}],
    "contrast": [{"jitter": 1, "contrast": 0.62}, {"jitter": 1, "contrast": 1.4}, {}],
    "saturation": [{}, {"jitter": 1, "saturation": 0.8}, {"jitter": 1, "saturation": 1.19}],
    "hue": [{"jitter": 1, "hue": 0.09}, {"jitter": 1, "hue": -0.1}, {"hue": 0.05}],
    "jitter order": [{"jitter": 1, "brightness": 1.3, "contrast": 0.7, "saturation": 1.2, "hue": 0.07,
                      "order0": 3, "order1": 1, "order2": 0, "order3": 2},
                     {"jitter": 1, "brightness": 0.7, "contrast": 1.3, "saturation": 0.8, "hue": -0.05,
                      "order0": 2, "order1": 3, "order2": 1, "order3": 0},
                     {"brightness": 1.3, "order0": 1, "order1": 0}],
    "gray": [{"gray": 1}, {}, {"gray": 1}],
    "blur": [{"blur": 1, "sigma": 0.3}, {"blur": 1, "sigma": 1.9}, {"sigma": 1.0}],
    "solarize": [{"solarize": 1}, {}, {"solarize": 1}],
}


@pytest.mark.parametrize("op", OPS)
def test_each_op_matches_torchvision_per_sample(op):
    rows = [param_row(UNSCALED, **fields) for fields in OPS[op]]
    mean, maximum = compare(smooth_images(3), rows)
    assert maximum < FLOAT_EXACT, (mean, maximum)


def test_hue_shift_matches_adjust_hue_over_the_whole_range():
    generator = torch.Generator().manual_seed(1)
    x = torch.rand(9, 3, 8, 8, generator=generator)
    x[:, :, 0] = x[:, :1, 0]  # a row of grays, whose hue is undefined
    x[:, 1, 1] = x[:, 0, 1]  # red and green tie for the maximum or minimum
    shifts = torch.linspace(-0.5, 0.5, 9)
    expected = torch.stack([TF.adjust_hue(image, shift.item()) for image, shift in zip(x, shifts)])
    assert (shift_hue(x, shifts) - expected).abs().max() < FLOAT_EXACT


@pytest.mark.parametrize("images, mean_tolerance, max_tolerance", [
    # Measured 0.0079 / 0.029 (the most downscaled crop): the filters differ in width only.
    (smooth_images(3), 0.02, 0.06),
    # Measured 0.045 / 0.21: per-pixel noise has all its energy where the filters differ most.
    (noise_images(3), 0.06, 0.25),
], ids=["smooth", "noise"])
def test_downscaling_crops_match_antialiased_resized_crop(images, mean_tolerance, max_tolerance):
    crops = [(0, 0, 48, 64), (4, 6, 40, 52), (9, 3, 36, 47)]  # 1.1x to 2x smaller
    for crop in crops:
        mean, maximum = compare(images, [param_row(crop)] * 3)
        assert mean < mean_tolerance and maximum < max_tolerance, (crop, mean, maximum)


def test_crops_that_are_not_downscaled_match_exactly():
    # roi_align boxes on pixel edges, aligned=True: the same sample points as bilinear resize.
    crops = [UNSCALED, (0, 0, 20, 24), (30, 41, 18, 23), (5, 5, 8, 31)]
    mean, maximum = compare(noise_images(4), [param_row(crop) for crop in crops])
    assert maximum < FLOAT_EXACT, (mean, maximum)


def test_all_steps_together_match_torchvision_per_sample():
    rows = [param_row((4, 6, 40, 52), flip=1, jitter=1, brightness=1.2, contrast=0.7, saturation=1.15,
                      hue=-0.06, order0=2, order1=0, order2=3, order3=1, blur=1, sigma=0.8, solarize=1),
            param_row((0, 0, 48, 64), jitter=1, brightness=0.8, contrast=1.3, saturation=0.9, hue=0.1,
                      order0=3, order1=2, order2=1, order3=0, gray=1, blur=1, sigma=1.7),
            param_row((20, 30, 24, 30), flip=1, solarize=1)]
    # The downscaling crop's difference, carried through the colour steps and softened by the blur
    # (measured 0.0010 / 0.0087); the crop's own tolerance bounds it.
    mean, maximum = compare(smooth_images(3), rows)
    assert mean < 0.02 and maximum < 0.06, (mean, maximum)


@pytest.mark.parametrize("which", [1, 2])
def test_whole_views_match_the_pil_path_under_the_same_seed(which):
    # view_transform rounds to uint8 after every step, runs PIL's own colour ops (hue through a
    # uint8 HSV image) and approximates the Gaussian blur with box filters: measured mean 0.0059 and
    # max 0.094 in [0, 1] units over these 16 views of view 1 (always blurred), 0.0052 / 0.058 of
    # view 2, and up to 0.0066 / 0.12 for other seeds.
    images = smooth_images(16)
    transform = view_transform(RECIPE, which)
    expected = torch.stack([
        seeded_call(9, key, lambda: transform(Image.fromarray(image.permute(1, 2, 0).numpy())))
        for key, image in enumerate(images)])
    params = torch.stack([seeded_call(9, key, lambda: draw_view_params(RECIPE, which, 48, 64))
                          for key in range(len(images))])
    batch, _ = collate_padded(images)
    difference = (BatchedViews(RECIPE)(batch, params) - expected).abs() * torch.tensor(IMAGENET_STD).view(3, 1, 1)
    assert difference.mean() < 0.015 and difference.max() < 0.2, (difference.mean(), difference.max())


def test_views_are_normalised_with_imagenet_statistics():
    image = smooth_images(1, 32, 32)[0]
    out = BatchedViews(RECIPE)(image[None], param_row((0, 0, 32, 32))[None])
    expected = TF.normalize(image.float() / 255, list(IMAGENET_MEAN), list(IMAGENET_STD))
    assert (out[0] - expected).abs().max() < FLOAT_EXACT


# --- padding, determinism ----------------------------------------------------------------------

def test_collate_pads_at_the_bottom_right_and_records_sizes():
    images = [smooth_images(1, 48, 64)[0], smooth_images(1, 40, 56)[0], smooth_images(1, 32, 72)[0]]
    batch, sizes = collate_padded(images)
    assert batch.dtype == torch.uint8 and batch.shape == (3, 3, 48, 72)
    assert sizes.dtype == torch.int64 and sizes.tolist() == [[48, 64], [40, 56], [32, 72]]
    for image, padded, (height, width) in zip(images, batch, sizes.tolist()):
        assert torch.equal(padded[:, :height, :width], image)
        assert padded[:, height:].sum() == 0 and padded[:, :, width:].sum() == 0


def test_crops_never_read_the_padding():
    images = [smooth_images(1, 48, 64)[0], smooth_images(1, 30, 40, seed=1)[0], smooth_images(1, 20, 60, seed=2)[0]]
    batch, sizes = collate_padded(images)
    loud = batch.clone()
    for padded, (height, width) in zip(loud, sizes.tolist()):
        padded[:, height:], padded[:, :, width:] = 255, 255
    # Crops flush with each image's bottom-right corner, up- and downscaled, then every draw.
    rows = [param_row((h - crop_h, w - crop_w, crop_h, crop_w), blur=1, sigma=2.0)
            for (h, w), (crop_h, crop_w) in zip(sizes.tolist(), [(48, 60), (16, 21), (20, 36)])]
    rows += [seeded_call(2, key, lambda: draw_view_params(RECIPE, 2, h, w))
             for key in range(30) for h, w in sizes.tolist()]
    indices = [k % 3 for k in range(len(rows))]
    params = torch.stack(rows)
    heights, widths = sizes[indices].T.double()
    assert (params[:, 0] + params[:, 2] <= heights).all() and (params[:, 1] + params[:, 3] <= widths).all()
    module = BatchedViews(RECIPE)
    assert torch.equal(module(batch[indices], params), module(loud[indices], params))


def test_views_read_their_source_image_and_collate_offsets_the_sources():
    images = [smooth_images(1, 48, 64)[0], smooth_images(1, 30, 40, seed=1)[0], smooth_images(1, 20, 60, seed=2)[0]]
    rows = torch.stack([seeded_call(4, key, lambda: draw_view_params(RECIPE, 1, 20, 40)) for key in range(5)])
    batch, _ = collate_padded(images)
    sources = torch.tensor([2, 0, 2, 1, 0])
    module = BatchedViews(RECIPE)
    assert torch.equal(module(batch, rows, sources), module(batch[sources], rows))
    # A sample of one image and one of two: the second's sources index past the first's image.
    collated = DecodedViews.collate([DecodedViews((images[0],), rows[:2], torch.tensor([0, 0])),
                                     DecodedViews((images[1], images[2]), rows[2:4], torch.tensor([0, 1]))])
    assert torch.equal(collated.images, batch) and collated.sources.tolist() == [[0, 0], [1, 2]]
    assert torch.equal(collated.params, rows[:4].view(2, 2, -1))


def test_draws_repeat_after_a_resume_and_differ_between_samples():
    def draw(key: int) -> torch.Tensor:
        return seeded_call(11, key, lambda: torch.stack([draw_view_params(RECIPE, 1, 48, 64),
                                                         draw_view_params(RECIPE, 2, 48, 64)]))
    first = draw(7)
    torch.rand(5)  # the global RNG moved on, as it does between the run and its resume
    assert torch.equal(draw(7), first)
    assert not torch.equal(draw(8), first)


def test_views_are_deterministic_and_independent_of_their_batch():
    images = smooth_images(4)
    batch, _ = collate_padded(images)
    params = torch.stack([seeded_call(3, key, lambda: draw_view_params(RECIPE, 1 + key % 2, 48, 64))
                          for key in range(4)])
    module = BatchedViews(RECIPE)
    out = module(batch, params)
    assert torch.equal(module(batch, params), out)
    alone = torch.cat([module(batch[k:k + 1], params[k:k + 1]) for k in range(4)])
    assert (alone - out).abs().max() < FLOAT_EXACT


# --- bad input ---------------------------------------------------------------------------------

def test_bad_input_says_what_was_expected():
    batch, _ = collate_padded(smooth_images(2))
    params = torch.stack([param_row(UNSCALED)] * 2)
    module = BatchedViews(RECIPE)
    with pytest.raises(ValueError, match=rf"params \[B, {len(PARAM_FIELDS)}\].*got shape \[2, 17\]"):
        module(batch, params[:, :-1])
    with pytest.raises(ValueError, match="one params row per image: got 1 rows for 2 images"):
        module(batch, params[:1])
    with pytest.raises(ValueError, match=r"one source image per params row: got sources of shape \[3\] for 2 rows"):
        module(batch, params, torch.zeros(3, dtype=torch.int64))
    with pytest.raises(ValueError, match=r"uint8 image batch \[B, 3, H, W\]"):
        module(batch.float(), params)
    with pytest.raises(ValueError, match=r"uint8 images of shape \[3, h, w\], got image 1"):
        collate_padded([batch[0], batch[1, :1]])
    with pytest.raises(ValueError, match="at least one image"):
        collate_padded([])
    with pytest.raises(ValueError, match="must be 1 or 2, got 3"):
        draw_view_params(RECIPE, 3, 48, 64)

