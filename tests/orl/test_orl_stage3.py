"""ORL stage 3: the box jitter, the sample dataset, the three-branch method, a short training run."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageOps

from orl_bench.config import PretrainConfig, from_dict
from orl_bench.data.images import read_rgb
from orl_bench.data.pretrain_dataset import collate_skipping_unreadable
from orl_bench.data.synth import SynthSpec, ensure_synth
from orl_bench.data.views import ViewParams, normalize
from orl_bench.engine import trainer
from orl_bench.engine.distributed import DistInfo
from orl_bench.methods.base import Progress
from orl_bench.methods.orl.correspondence import CorrespondenceError, Correspondences
from orl_bench.methods.orl.dataset import ORLDataset, jitter_box
from orl_bench.methods.orl.method import ORL, ORLParams

N, SIZE, PATCH = 12, 32, 16
# Geometry only: every photometric step off except solarize on view 1, so patches can be
# recomputed exactly and the view-1 / view-2 roles are visible.
PLAIN = ViewParams(size=SIZE, hflip_p=0.0, color_jitter_p=0.0, grayscale_p=0.0, blur_p=(0.0, 0.0),
                   solarize_p=(1.0, 0.0))


def iou(a, b) -> float:
    ix = max(0.0, min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[1] + a[3], b[1] + b[3]) - max(a[1], b[1]))
    return ix * iy / (a[2] * a[3] + b[2] * b[3] - ix * iy)


# --- jitter_box -------------------------------------------------------------------------------

def test_jitter_stays_inside_overlaps_and_respects_the_ranges():
    g = torch.Generator().manual_seed(0)
    rng = np.random.default_rng(0)
    kept = 0
    for _ in range(300):
        iw, ih = (int(v) for v in rng.integers(64, 640, 2))
        aspect = math.exp(rng.uniform(-math.log(3), math.log(3)))  # the stage-2 filter's range
        area = rng.uniform(0.02, 0.25) * iw * ih
        w, h = min(math.sqrt(area * aspect), iw), min(math.sqrt(area / aspect), ih)
        box = (rng.uniform(0, iw - w), rng.uniform(0, ih - h), w, h)
        out = jitter_box(box, (iw, ih), g)
        x, y, nw, nh = out
        assert x >= 0 and y >= 0 and x + nw <= iw + 1e-9 and y + nh <= ih + 1e-9
        if out == box:
            continue
        kept += 1
        assert iou(out, box) > 0.5
        assert 0.5 - 1e-9 <= nw * nh / (w * h) <= 2 + 1e-9
        assert 0.5 - 1e-9 <= nw / nh <= 2 + 1e-9
        assert abs(x + nw / 2 - (box[0] + w / 2)) <= 0.5 * w + 1e-9
        assert abs(y + nh / 2 - (box[1] + h / 2)) <= 0.5 * h + 1e-9
    assert kept >= 290  # ordinary boxes almost always find a valid copy


def test_jitter_is_deterministic_per_generator():
    box = (10.0, 20.0, 50.0, 40.0)
    a = jitter_box(box, (200, 100), torch.Generator().manual_seed(7))
    b = jitter_box(box, (200, 100), torch.Generator().manual_seed(7))
    assert a == b != box


def test_jitter_falls_back_to_the_original_when_no_try_fits():
    # A full-image box of an 8:1 image: any copy of >= half its area with aspect <= 2 is taller
    # than the image, so all 200 tries fail.
    box = (0.0, 0.0, 320.0, 40.0)
    g = torch.Generator().manual_seed(0)
    assert all(jitter_box(box, (320, 40), g) == box for _ in range(20))


# --- the dataset ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def images(tmp_path_factory) -> list[Path]:
    spec = SynthSpec(height=64, width=64, coco_train=N, coco_val=0, voc_trainval=0, voc_test=0)
    root = ensure_synth(spec, tmp_path_factory.mktemp("synth"))
    paths = sorted((root / "coco" / "train2017").glob("*.jpg"))
    assert len(paths) == N
    return paths


def hand_made(paths: list[Path]) -> Correspondences:
    """Neighbours i+1, i+2 (mod n). Image 0 has no boxes; image 1 has boxes but no pairs; the
    last image's first neighbour is image 0, so its only usable neighbour is image 1."""
    n = len(paths)
    boxes = [np.zeros((0, 4), np.float32)] + [
        np.array([[0, 0, 32, 32], [8 + i, 4, 40, 24], [30, 30 - i, 20, 34]], np.float32)
        for i in range(1, n)]
    knn = np.array([[(i + 1) % n, (i + 2) % n] for i in range(n)], np.int64)
    pairs = []
    for i in range(n):
        row = []
        for j in knn[i]:
            if i in (0, 1) or j == 0:
                row.append(np.zeros((0, 2), np.int64))
            else:
                row.append(np.array([[0, 1], [2, 0], [1, 2]], np.int64)[: 1 + (i + j) % 3])
        pairs.append(row)
    return Correspondences(list(range(n)), [p.name for p in paths], boxes, knn, pairs)


def make_dataset(paths, views=PLAIN, seed=0) -> ORLDataset:
    with pytest.warns(UserWarning, match="1 of 12 images have no boxes"):
        return ORLDataset(paths, hand_made(paths), ORLParams(views=views, patch_size=PATCH), seed)


def plain_patch(path: Path, box, solarized: bool) -> torch.Tensor:
    x, y, w, h = (int(v) for v in box)
    patch = read_rgb(path).crop((x, y, x + w, y + h)).resize((PATCH, PATCH), Image.Resampling.BILINEAR)
    return normalize()(ImageOps.solarize(patch, 128) if solarized else patch)


def test_samples_are_deterministic_per_key_and_shaped(images):
    ds = make_dataset(images, ViewParams(size=SIZE))
    assert ds.fallbacks == {"images": N, "no_boxes": 1, "no_pairs": 2}
    index, sample = ds[5]
    assert index == 5
    again, next_epoch = ds[5][1], ds[5 + N][1]
    for pair, pair_again, pair_next in zip(sample, again, next_epoch, strict=True):
        for t, t_again, t_next in zip(pair, pair_again, pair_next, strict=True):
            assert torch.equal(t, t_again) and not torch.equal(t, t_next)
    (g1, g2), intra, inter = sample
    assert g1.shape == g2.shape == (3, SIZE, SIZE) and g1.dtype == torch.float32
    assert all(t.shape == (3, PATCH, PATCH) for t in (*intra, *inter))
    batch, bad = collate_skipping_unreadable([ds[0], ds[11]])
    assert bad == [] and batch[2][1].shape == (2, 3, PATCH, PATCH)


def test_inter_pair_comes_from_the_stored_boxes(images):
    ds = make_dataset(images)
    c = hand_made(images)
    for key in range(2, 2 + 3 * N):
        index = key % N
        if index in (0, 1):
            continue
        _, (_, (intra1, _), (inter1, inter2)) = ds[key]
        options = [(plain_patch(images[index], c.boxes[index][q], True),
                    plain_patch(images[j], c.boxes[j][o], False))
                   for j, row in zip(c.knn[index], c.pairs[index], strict=True) for q, o in row]
        assert any(torch.allclose(inter1, a, atol=1e-5) and torch.allclose(inter2, b, atol=1e-5)
                   for a, b in options), f"key {key}: inter pair is not a stored pair"
        assert any(torch.allclose(intra1, plain_patch(images[index], b, True), atol=1e-5)
                   for b in c.boxes[index])
        if index == 11:  # neighbour 0 has no pairs: always neighbour 1
            assert any(torch.allclose(inter2, plain_patch(images[1], b, False), atol=1e-5)
                       for b in c.boxes[1])


def test_fallbacks_whole_image_and_intra_as_inter(images):
    ds = make_dataset(images)
    _, (_, (intra1, intra2), (inter1, inter2)) = ds[0]  # no boxes, no pairs
    assert torch.allclose(intra1, plain_patch(images[0], (0, 0, 64, 64), True), atol=1e-5)
    assert torch.equal(inter1, intra1) and torch.equal(inter2, intra2)
    _, (_, (intra1, intra2), (inter1, inter2)) = ds[1]  # boxes, no pairs
    assert torch.equal(inter1, intra1) and torch.equal(inter2, intra2)


def test_unreadable_image_and_mismatched_lists(images, tmp_path):
    broken = tmp_path / images[3].name
    broken.write_bytes(b"not a jpeg")
    ds = make_dataset([*images[:3], broken, *images[4:]])
    assert ds[3] == (3, None)
    with pytest.raises(CorrespondenceError, match="same order"):
        ORLDataset(images[::-1], hand_made(images), ORLParams(patch_size=PATCH), 0)
    with pytest.raises(CorrespondenceError, match="wrong image count"):
        ORLDataset(images[:-1], hand_made(images), ORLParams(patch_size=PATCH), 0)


# --- the method -------------------------------------------------------------------------------

def config(**method) -> PretrainConfig:
    return from_dict(PretrainConfig, {
        "model": {"arch": "resnet18", "width": 8},
        "train": {"epochs": 1, "batch_size": 4, "num_workers": 0},
        "method": {"name": "orl", "hidden_dim": 32, "proj_dim": 16,
                   "patch_size": PATCH, "views": {"size": SIZE}, **method}})


def random_batch(b: int = 4):
    g = torch.Generator().manual_seed(0)
    return [[torch.randn(b, 3, s, s, generator=g) for _ in range(2)] for s in (SIZE, PATCH, PATCH)]


def count_calls(orl: ORL) -> dict[str, int]:
    calls = {}
    for name in ("predictor", "intra_predictor", "inter_predictor"):
        module = getattr(orl, name)
        if module is not None:
            calls[name] = 0
            module.register_forward_hook(lambda *_, n=name: calls.__setitem__(n, calls[n] + 1))
    return calls


def test_losses_are_the_weighted_sum_of_three_branches():
    torch.manual_seed(0)
    orl = ORL(config(image_weight=2.0, intra_weight=0.5))
    calls = count_calls(orl)
    losses = orl.training_step(random_batch(), Progress(0, 10, 0))
    assert set(losses) == {"loss", "loss_image", "loss_intra", "loss_inter"}
    expected = 2.0 * losses["loss_image"] + 0.5 * losses["loss_intra"] + losses["loss_inter"]
    assert losses["loss"].item() == pytest.approx(expected.item(), rel=1e-6)
    assert calls == {"predictor": 2, "intra_predictor": 2, "inter_predictor": 2}
    orl = ORL(config())
    losses = orl.training_step(random_batch(), Progress(0, 10, 0))
    total = losses["loss_image"] + losses["loss_intra"] + losses["loss_inter"]
    assert losses["loss"].item() == pytest.approx(total.item(), rel=1e-6)


def test_zero_weight_branches_are_not_built_or_computed():
    orl = ORL(config(image_weight=0, intra_weight=1, inter_weight=0))
    assert orl.predictor is None and orl.inter_predictor is None
    calls = count_calls(orl)
    online_calls = []
    orl.online.register_forward_hook(lambda m, x, y: online_calls.append(x[0].shape[-1]))
    losses = orl.training_step(random_batch(), Progress(0, 10, 0))
    assert set(losses) == {"loss", "loss_intra"} and torch.equal(losses["loss"], losses["loss_intra"])
    assert calls == {"intra_predictor": 2} and online_calls == [PATCH, PATCH]
    with pytest.raises(ValueError, match="at least one > 0"):
        ORL(config(image_weight=0, intra_weight=0, inter_weight=0))


def test_a_step_moves_the_target_by_ema():
    torch.manual_seed(0)
    orl = ORL(config())
    before = [p.clone() for p in orl.target.parameters()]
    optimizer = torch.optim.SGD(orl.parameters(), lr=0.1)
    progress = Progress(0, 10, 0)
    orl.training_step(random_batch(), progress)["loss"].backward()
    optimizer.step()
    orl.after_step(progress)  # the trainer passes the Progress of the step just taken
    moved = [not torch.equal(a, b) for a, b in zip(before, orl.target.parameters(), strict=True)]
    assert any(moved)
    assert all(not p.requires_grad for p in orl.target.parameters())


def test_make_dataset_needs_a_matching_correspondence_file(images, tmp_path):
    with pytest.raises(ValueError, match="needs the stage-2 correspondence artifact"):
        ORL(config()).make_dataset(images)
    hand_made(images).save(tmp_path / "corr.npz")
    with pytest.raises(CorrespondenceError, match="wrong image count"):
        ORL(config(), {"correspondences": tmp_path / "corr.npz"}).make_dataset(images[:-1])


def test_two_step_pretraining_run(images, tmp_path):
    hand_made(images[:8]).save(tmp_path / "corr.npz")
    with pytest.warns(UserWarning, match="no boxes"):
        manifest = trainer.pretrain(config(), tmp_path / "artifact", images[:8], {},
                                    DistInfo(0, 1, 0, torch.device("cpu")),
                                    {"correspondences": tmp_path / "corr.npz"})
    assert manifest["steps"] == 2 and manifest["method"] == "orl"
    # hand_made: image 0 has no boxes, images 0 and 1 have no pairs
    assert manifest["dataset_fallbacks"] == {"images": 8, "no_boxes": 1, "no_pairs": 2}
    rows = [json.loads(line) for line in (tmp_path / "artifact" / "log.jsonl").read_text().splitlines()]
    last = [r for r in rows if "loss" in r][-1]
    assert all(math.isfinite(last[k]) for k in ("loss", "loss_image", "loss_intra", "loss_inter"))
    assert (tmp_path / "artifact" / "backbone.safetensors").exists()
