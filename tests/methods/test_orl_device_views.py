"""ORL stage 3 with `train.augment: device`: the decoded samples of ORLDataset against its PIL samples.

Parameters: a decoded sample makes the PIL sample's very draws, exactly (the same views, box,
jitter, neighbour and patch augmentations, leaving the RNG where the PIL path does). Pixels: the
device's global views match the PIL path's within the tolerance of tests/data/test_batched_views.py,
its patches within the same mean and a wider maximum (below). The scenes and hand-made
correspondences of tests/orl/test_orl_stage3.py cover the fallbacks (an image without boxes,
images without pairs).
"""
from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from PIL import Image
from torchvision.transforms import v2

from orl_bench.data.batched_views import BatchedViews, draw_patch_params
from orl_bench.data.pretrain_dataset import collate_skipping_unreadable
from orl_bench.data.views import IMAGENET_STD, ViewParams, normalize, seeded_call
from orl_bench.engine import trainer
from orl_bench.engine.distributed import DistInfo
from orl_bench.methods.orl import dataset as orl_dataset
from orl_bench.methods.orl.dataset import ORLDataset, crop_resize, decoded_specs
from orl_bench.methods.orl.method import ORL, ORLParams, PairedDeviceViews
from tests.data.test_batched_views import record_pil_path_draws, row_of, smooth_images
from tests.orl.test_orl_stage3 import N, PATCH, SIZE, config, hand_made, images  # noqa: F401 (a fixture)

RECIPES = [ViewParams(size=SIZE),
           ViewParams(size=SIZE, color_jitter=(0.4, 0.0, 0.3, 0.0), blur_p=(0.5, 0.5), solarize_p=(0.5, 0.5),
                      blur="kernel")]
CPU = DistInfo(0, 1, 0, torch.device("cpu"))
SCALE = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)  # normalised differences back to [0, 1] units


def datasets(paths, views: ViewParams) -> tuple[ORLDataset, ORLDataset]:
    """The PIL path's dataset and the decoded one, over the same images and correspondences."""
    params = ORLParams(views=views, patch_size=PATCH)
    with pytest.warns(UserWarning, match="no boxes"):
        return tuple(ORLDataset(paths, hand_made(paths), params, 0, decoded) for decoded in (False, True))


def record_pil_rows(monkeypatch, ds: ORLDataset) -> list[torch.Tensor]:
    """The parameter row of each view and patch the PIL dataset `ds` makes, in order."""
    seen = record_pil_path_draws(monkeypatch)
    rows = []

    def recording(make):
        def call(*args):
            seen.clear()
            made = make(*args)
            rows.append(row_of(seen))
            return made
        return call

    crop = Image.Image.crop

    def recording_crop(image, box):  # a patch's crop is a box, not a draw
        left, top, right, bottom = box
        seen["crop"] = {"top": top, "left": left, "height": bottom - top, "width": right - left}
        return crop(image, box)
    monkeypatch.setattr(Image.Image, "crop", recording_crop)
    ds.global_views = tuple(recording(view) for view in ds.global_views)
    monkeypatch.setattr(ds, "_patch", recording(ds._patch))
    return rows


@pytest.mark.parametrize("views", RECIPES, ids=["default", "two-factor-jitter"])
@pytest.mark.parametrize("broken", [False, True], ids=["readable", "unreadable-neighbour"])
def test_decoded_samples_make_the_pil_paths_draws(monkeypatch, images, tmp_path, views, broken):
    paths = list(images)
    if broken:  # image 3: a neighbour of images 1 and 2, whose inter pairs then fall back
        paths[3] = tmp_path / images[3].name
        paths[3].write_bytes(b"not a jpeg")
    pil, decoded = datasets(paths, views)
    rows = record_pil_rows(monkeypatch, pil)
    reads = []
    read = orl_dataset.read_rgb
    monkeypatch.setattr(orl_dataset, "read_rgb", lambda path: (reads.append(path), read(path))[1])
    outcomes = set()
    for key in range(3 * N):
        index = key % N
        if broken and index == 3:
            assert decoded[key] == (3, None)
            continue
        image = read(paths[index])
        rows.clear()
        reads.clear()
        rng_after_pil = seeded_call(7, key, lambda: (pil.sample(index, image), torch.get_rng_state())[1])
        pil_reads = list(reads)
        reads.clear()
        sample, rng_after_decoded = seeded_call(7, key, lambda: (decoded.sample(index, image), torch.get_rng_state()))
        assert torch.equal(sample.params, torch.stack(rows)), key  # views, boxes, jitter, patches
        assert torch.equal(rng_after_decoded, rng_after_pil), key  # the same draws, no more, no fewer
        assert reads == pil_reads, key  # the same neighbour
        neighbour = len(sample.images) == 2
        assert sample.sources.tolist() == [0] * 5 + [int(neighbour)]
        expected = [image, *(read(path) for path in pil_reads[-1:] if neighbour)]
        assert all(torch.equal(t, v2.functional.pil_to_tensor(i)) for t, i in zip(sample.images, expected, strict=True))
        outcomes.add("neighbour" if neighbour else "unreadable neighbour" if reads else "no pairs")
    assert outcomes == {"neighbour", "no pairs", *(["unreadable neighbour"] if broken else [])}


def test_patch_crops_are_crop_resizes_boxes():
    # Boxes past the image's edges, fractional, thinner than a pixel: rounded and clipped alike.
    # Each is upscaled to the patch, where the resizes agree but for PIL's rounding to uint8 levels.
    image = smooth_images(1, 48, 64)[0]
    boxes = [(-5.3, -2.0, 12.0, 9.6), (58.6, 40.2, 20.0, 15.0), (10.2, 20.7, 0.3, 0.2), (3.5, 4.5, 12.5, 10.5)]
    plain = ViewParams(size=PATCH, hflip_p=0.0, color_jitter_p=0.0, grayscale_p=0.0, blur_p=(0.0, 0.0),
                       solarize_p=(0.0, 0.0))
    rows = torch.stack([draw_patch_params(plain, 1, box, 64, 48) for box in boxes])
    made = BatchedViews(plain)(image[None], rows, torch.zeros(len(boxes), dtype=torch.int64))
    pil = Image.fromarray(image.permute(1, 2, 0).numpy())
    expected = torch.stack([normalize()(crop_resize(pil, box, PATCH)) for box in boxes])
    assert ((made - expected).abs() * SCALE).max() < 1.5 / 255  # measured 1 / 255


def test_device_views_and_patches_match_the_pil_paths(images):
    params = ORLParams(views=RECIPES[0], patch_size=PATCH)
    pil, decoded = datasets(images, params.views)
    keys = range(N, 3 * N)  # two epochs
    reference, _ = collate_skipping_unreadable([pil[k] for k in keys])
    batch, _ = collate_skipping_unreadable([decoded[k] for k in keys])
    made = PairedDeviceViews(decoded_specs(params), channels_last=False)(batch)
    # Whole views: test_batched_views' tolerance (measured here 0.0059-0.0064 mean, 0.11-0.13 max).
    # Patches: 0.0093-0.0100 mean, 0.12-0.33 max: a 32 px box shrunk to 16 px is a 2x downscale of
    # the scenes' sharp edges, where roi_align's box filter and PIL's triangle differ most
    # (test_downscaling_crops_match_antialiased_resized_crop), then contrast can stretch it.
    for branch, pair, reference_pair in zip(("global", "intra", "inter"), made, reference, strict=True):
        for view, expected in zip(pair, reference_pair, strict=True):
            assert view.shape == expected.shape
            difference = (view - expected).abs() * SCALE
            mean, maximum = difference.mean().item(), difference.max().item()
            assert mean < 0.015 and maximum < (0.2 if branch == "global" else 0.45), (branch, mean, maximum)
    # An inter patch from the neighbour is the neighbour's PIL patch: per sample it is much closer to
    # it than the same parameters applied to the query image are (measured 0.002-0.022 against
    # 0.064-0.17 mean).
    neighbour = batch.sources[:, -1] != batch.sources[:, 0]
    assert neighbour.sum() >= len(keys) // 2
    from_query = BatchedViews(replace(params.views, size=PATCH))(batch.images, batch.params[:, -1], batch.sources[:, 0])
    own, wrong = (((patch - reference[2][1]).abs() * SCALE).flatten(1).mean(1)[neighbour]
                  for patch in (made[2][1], from_query))
    assert (own < 0.04).all() and (own < wrong / 2).all(), (own, wrong)


def test_stage3_trains_on_device_views(images, tmp_path, monkeypatch):
    hand_made(images[:8]).save(tmp_path / "corr.npz")
    cfg = config()
    cfg = replace(cfg, train=replace(cfg.train, augment="device"))
    formats = []
    step = ORL.training_step

    def recording_step(self, batch, progress):
        formats.extend((t.shape[-1], t.is_contiguous(memory_format=torch.channels_last))
                       for pair in batch for t in pair)
        return step(self, batch, progress)
    monkeypatch.setattr(ORL, "training_step", recording_step)
    with pytest.warns(UserWarning, match="no boxes"):
        manifest = trainer.pretrain(cfg, tmp_path / "artifact", images[:8], {}, CPU,
                                    {"correspondences": tmp_path / "corr.npz"})
    assert manifest["steps"] == 2 and manifest["augment"] == "device"
    # Two steps of ((global1, global2), (intra1, intra2), (inter1, inter2)), NHWC (channels_last).
    assert formats == ([(SIZE, True)] * 2 + [(PATCH, True)] * 4) * 2
