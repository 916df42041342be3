"""ORL stage 2 end to end on embedded scenes (docs/protocols.md 2): one RoI forward per kept box, pairs
equal to a brute-force docs/protocols.md 2.6, per-image resume, ground-truth boxes, unreadable images,
and an artifact that loads and round-trips through the official JSON layout."""
from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torchvision.transforms import v2

from orl_bench import pipeline
from orl_bench.config import config_hash, to_dict
from orl_bench.data.images import read_rgb
from orl_bench.data.sources import ImageList, pretrain_images
from orl_bench.data.views import normalize
from orl_bench.engine.distributed import DistInfo
from orl_bench.io import sha256_file
from orl_bench.methods.base import Method
from orl_bench.methods.byol import BYOLParams
from orl_bench.methods.orl import proposals, stage2
from orl_bench.methods.orl.boxes import filter_boxes, load_boxes, scaled
from orl_bench.methods.orl.correspondence import (OFFICIAL_INFO_KEYS, Correspondences,
                                                  export_official, import_official)
from orl_bench.methods.orl.proposals import ProposalStore
from orl_bench.methods.orl.roi_embed import embed_crops, normalised, pil_crops
from orl_bench.methods.orl.stage2 import ARTIFACT, TIMINGS, Stage2Params, discover, load_stage1, roi_path

N = 24
SYNTH = f"{{height: 128, width: 128, coco_train: {N}, coco_val: 0, voc_trainval: 0, voc_test: 0}}"
# min_size 96 px at COCO's ~480 px short side is 25.6 px on the 128 px scenes; small crops and a
# 1/8-width ResNet-18 keep the test fast. ratio 0.25 gives several pairs per neighbour.
PARAMS = Stage2Params(knn_k=5, pair_ratio=0.25, reference_short_side=480, embed_resize_short=64,
                      embed_size=56, roi_size=64, batch_size=32, workers=1)
TIE = 1e-9  # cosines closer than this are a tie: identical crops embed identically


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> tuple[Path, ImageList]:
    """A 1-epoch tiny BYOL artifact and the 24 scenes it was trained on."""
    home = tmp_path_factory.mktemp("stage2_home")
    cfg = pipeline.load_pretrain_config("byol", "tiny", ["train.epochs=1", f"data.synth={SYNTH}"])
    images = pretrain_images(cfg.data, home)
    stage1, _ = pipeline.ensure_pretrained(cfg, "tiny", home, DistInfo(0, 1, 0, torch.device("cpu")))
    return stage1, images


@pytest.fixture(scope="module")
def first_run(setup, tmp_path_factory) -> Path:
    stage1, images = setup
    out = tmp_path_factory.mktemp("stage2") / "ss"
    assert discover(stage1, images.paths, images.coco, PARAMS, out) == out / ARTIFACT
    return out


def scaled_filter(p: Stage2Params, width: int, height: int):
    return scaled(p.box_filter, min(width, height), p.reference_short_side)


def test_one_roi_forward_per_kept_box(setup, first_run):
    stage1, images = setup
    c = Correspondences.load(first_run / ARTIFACT, n_images=N)
    run = json.loads((first_run / TIMINGS).read_text())
    kept = sum(len(b) for b in c.boxes)
    assert run["roi_forward_images"] == c.info["kept_boxes"] == kept > 3 * N
    store = ProposalStore(first_run / "proposals")
    for i, im in enumerate(images.coco[0].images):
        expected = filter_boxes(store.load(i), scaled_filter(PARAMS, im.width, im.height))
        assert np.array_equal(c.boxes[i], expected.astype(np.float32))
        assert np.load(roi_path(first_run, i)).shape == (len(expected), 64)  # width 8 -> 64-d
    # the bank is the online network (backbone -> projector) on Resize + CenterCrop, L2
    method = load_stage1(stage1)
    prep = v2.Compose([v2.PILToTensor(), v2.Resize(64, antialias=True), v2.CenterCrop(56), normalize()])
    with torch.no_grad():
        ref = F.normalize(method.online(prep(read_rgb(images.paths[3]))[None]), dim=1)[0].numpy()
    np.testing.assert_allclose(np.load(first_run / "embeddings.npy")[3], ref, atol=1e-5)
    assert set(run["timings"]) >= {"load_stage1", "embeddings", "knn", "proposals", "boxes",
                                      "roi_embeddings", "pairs"}


def brute_force_top(q: np.ndarray, v: np.ndarray, ratio: float) -> list[tuple[float, int, int]]:
    """docs/protocols.md 2.6 literally: every entry of the B x B_k cosine matrix, sorted descending,
    the first max(1, int(ratio * B))."""
    q, v = q.astype(np.float64), v.astype(np.float64)
    entries = [(float(np.dot(q[a], v[b])), a, b) for a in range(len(q)) for b in range(len(v))]
    entries.sort(key=lambda e: -e[0])
    return entries[:max(1, int(ratio * len(q)))]


def test_pairs_equal_brute_force(first_run):
    c = Correspondences.load(first_run / ARTIFACT, n_images=N)
    roi = [np.load(roi_path(first_run, i)) for i in range(N)]
    exact = 0
    for i in range(N):
        for j, nb in enumerate(c.knn[i].tolist()):
            top = brute_force_top(roi[i], roi[nb], PARAMS.pair_ratio)
            ours = [tuple(p) for p in c.pairs[i][j].tolist()]
            sims = [float(np.dot(roi[i][a].astype(np.float64), roi[nb][b].astype(np.float64)))
                    for a, b in ours]
            assert len(ours) == len(top) == len(set(ours))
            # the same similarities in the same order; which of exactly tied pairs is taken may differ
            np.testing.assert_allclose(sims, [t[0] for t in top], rtol=0, atol=TIE)
            above = top[-1][0] + TIE
            assert ({p for s, p in zip(sims, ours, strict=True) if s > above}
                    == {(a, b) for s, a, b in top if s > above})
            exact += set(ours) == {(a, b) for _, a, b in top}
    assert exact >= 0.9 * N * PARAMS.knn_k  # ties at the boundary are the rare exception


def test_rerun_recomputes_only_missing_images(setup, first_run, tmp_path, monkeypatch):
    stage1, images = setup
    out = tmp_path / "resumed"
    shutil.copytree(first_run, out)
    with pytest.raises(ValueError, match=r"differing: \['knn_k'\]"):
        discover(stage1, images.paths, images.coco, replace(PARAMS, knn_k=3), out)
    ss_calls, embedded = [], []
    real_ss, real_crop = proposals.selective_search, stage2.crop_rois
    monkeypatch.setattr(proposals, "selective_search",
                        lambda image: ss_calls.append(1) or real_ss(image))
    monkeypatch.setattr(stage2, "crop_rois",
                        lambda image, boxes, **kw: embedded.append(len(boxes)) or real_crop(image, boxes, **kw))
    old = Correspondences.load(first_run / ARTIFACT)
    old_sha = sha256_file(first_run / ARTIFACT)

    def rerun_after_deleting(files: list[Path]) -> dict:
        for f in [out / ARTIFACT, *files]:
            f.unlink()
        ss_calls.clear()
        embedded.clear()
        untouched = {f: f.stat().st_mtime_ns for f in out.rglob("*.np*")}
        discover(stage1, images.paths, images.coco, PARAMS, out)
        assert all(f.stat().st_mtime_ns == t for f, t in untouched.items())  # nothing rewritten
        assert sha256_file(out / ARTIFACT) == old_sha  # byte for byte: stage 3's key is this sha256
        return json.loads((out / TIMINGS).read_text())

    killed = [2, 5, 17]  # as if killed before these RoI files were written
    run = rerun_after_deleting([roi_path(out, i) for i in killed])
    assert ss_calls == []
    assert sorted(embedded) == sorted(len(old.boxes[i]) for i in killed)
    assert run["roi_forward_images"] == sum(len(old.boxes[i]) for i in killed)
    # killed during selective search: only the missing proposals are computed, no RoI at all
    store = ProposalStore(out / "proposals")
    run = rerun_after_deleting([out / "boxes.npz", store.path(3), store.path(11)])
    assert len(ss_calls) == 2 and embedded == [] and run["roi_forward_images"] == 0


def test_gt_source_uses_the_coco_boxes(setup, tmp_path):
    stage1, images = setup
    p = replace(PARAMS, box_source="gt")
    with pytest.raises(ValueError, match="needs the COCO datasets"):
        discover(stage1, images.paths, None, p, tmp_path / "no_coco")
    c = Correspondences.load(discover(stage1, images.paths, images.coco, p, tmp_path / "gt"),
                             n_images=N)
    coco = images.coco[0]
    assert not (tmp_path / "gt" / "proposals").exists()
    for i, im in enumerate(coco.images):
        gt = coco.boxes(i)
        assert np.array_equal(c.boxes[i], filter_boxes(gt, scaled_filter(p, im.width, im.height)))
        assert all((gt == box).all(axis=1).any() for box in c.boxes[i])
    run = json.loads((tmp_path / "gt" / TIMINGS).read_text())
    assert c.info["box_source"] == "gt" and run["roi_forward_images"] == c.info["kept_boxes"] > N


def test_unreadable_image_is_counted_not_fatal(setup, tmp_path):
    stage1, images = setup
    (tmp_path / "images").mkdir()
    paths = [Path(shutil.copy(src, tmp_path / "images" / src.name)) for src in images.paths]
    paths[6].write_bytes(paths[6].read_bytes()[:200])  # truncated JPEG
    c = Correspondences.load(discover(stage1, paths, None, PARAMS, tmp_path / "out"), n_images=N)
    assert c.info["unreadable_images"] == 1 and c.info["unreadable_positions"] == [6]
    assert len(c.boxes[6]) == 0 and all(len(p) == 0 for p in c.pairs[6])
    assert all(len(c.pairs[i][j]) == 0 for i, j in np.argwhere(c.knn == 6))
    assert not np.load(tmp_path / "out" / "embeddings.npy")[6].any()
    assert c.image_ids == list(range(N)) and c.file_names == [x.name for x in paths]


def test_artifact_loads_and_round_trips_official_json(setup, first_run, tmp_path):
    _, images = setup
    coco = images.coco[0]
    sizes = [(im.width, im.height) for im in coco.images]
    c = Correspondences.load(first_run / ARTIFACT, n_images=N, image_sizes=sizes)
    assert c.image_ids == [im.id for im in coco.images]
    assert c.file_names == [im.file_name for im in coco.images]
    assert set(OFFICIAL_INFO_KEYS) <= set(c.info)
    assert (c.info["knn_image_num"], c.info["knn_bbox_pair_ratio"], c.info["bbox_min_size"],
            c.info["reference_short_side"]) == (5, 0.25, 96.0, 480)
    export_official(c, tmp_path / "official.json")
    back = import_official(tmp_path / "official.json", n_images=N, image_sizes=sizes)
    assert (back.image_ids, back.file_names) == (c.image_ids, c.file_names)
    assert np.array_equal(back.knn, c.knn)
    assert all(np.array_equal(a, b) for a, b in zip(back.boxes, c.boxes, strict=True))
    assert all(np.array_equal(a, b) for ra, rb in zip(back.pairs, c.pairs, strict=True)
               for a, b in zip(ra, rb, strict=True))


def test_stage1_must_be_complete_and_byol_like(setup, tmp_path, monkeypatch):
    stage1, _ = setup
    with pytest.raises(FileNotFoundError, match="not a complete stage-1 artifact"):
        load_stage1(tmp_path)

    class BackboneOnly(Method):
        Params = BYOLParams

        def __init__(self, cfg):
            super().__init__(cfg)
            self.backbone = self.build_backbone()
    monkeypatch.setattr(stage2, "METHODS", SimpleNamespace(get=lambda name: BackboneOnly))
    with pytest.raises(TypeError, match="no `online` network"):
        load_stage1(stage1)


def test_params_are_validated():
    for bad in ({"box_source": "edge_boxes"}, {"box_source": "official:"}, {"pair_ratio": 0},
                {"knn_k": 0}, {"reference_short_side": -1}, {"fallback": "none"}, {"nms_iou": 2}):
        with pytest.raises(ValueError):
            Stage2Params(**bad)
    info = Stage2Params().info()
    assert {k: info[k] for k in OFFICIAL_INFO_KEYS} == {
        "bbox_min_size": 96.0, "bbox_max_aspect_ratio": 3.0, "bbox_max_iou": 0.5,
        "intra_bbox_num": 100, "knn_image_num": 10, "knn_bbox_pair_ratio": 0.1}


def test_roi_crop_pil_embeds_the_official_crops_under_keys_of_its_own(setup, first_run, tmp_path):
    """roi_crop came after stage-2 folders existed: at roi_align it is in no key, hash or artifact,
    so those stay valid; pil is another folder and another ORL config, and embeds PIL crops."""
    pil = replace(PARAMS, roi_crop="pil")
    assert "roi_crop" not in to_dict(PARAMS, for_hash=True) and "roi_crop" not in PARAMS.info()
    assert pil.info()["roi_crop"] == "pil" and stage2.folder_name("s", "i", pil) != stage2.folder_name("s", "i", PARAMS)
    orl = pipeline.load_pretrain_config("orl", "default", [])
    orl_pil = pipeline.load_pretrain_config("orl", "default", ["method.stage2.roi_crop=pil"])
    assert "roi_crop" not in orl.method["stage2"] and orl_pil.method["stage2"]["roi_crop"] == "pil"
    assert config_hash(orl_pil) != config_hash(orl)
    assert pipeline.load_pretrain_config("orl", "paper", []).method["stage2"]["roi_crop"] == "pil"
    with pytest.raises(ValueError, match="roi_crop must be one of roi_align, pil, got 'nearest'"):
        Stage2Params(roi_crop="nearest")

    stage1, images = setup
    backbone = load_stage1(stage1).backbone
    boxes = load_boxes(first_run / "boxes.npz")
    stage2.embed_images(backbone, images.paths, boxes, [0, 1], tmp_path, pil)
    for i in (0, 1):
        expected = embed_crops(backbone, normalised(pil_crops(read_rgb(images.paths[i]), boxes[i], pil.roi_size),
                                                    torch.device("cpu")))
        assert len(expected) and not np.allclose(np.load(roi_path(first_run, i)), expected, atol=1e-4)  # roi_align's
        np.testing.assert_allclose(np.load(roi_path(tmp_path, i)), expected, atol=1e-5)


def test_batching_crops_across_images_does_not_change_embeddings(setup, first_run, tmp_path):
    """One forward per image and one forward per many images give the same RoI files."""
    stage1, images = setup
    backbone = load_stage1(stage1).backbone
    boxes = load_boxes(first_run / "boxes.npz")
    positions = list(range(8))
    outputs = {}
    for batch in (1, 1000):
        out = tmp_path / f"batch{batch}"
        forwards = stage2.embed_images(backbone, images.paths, boxes, positions, out,
                                       replace(PARAMS, batch_size=batch))
        assert forwards == sum(len(boxes[i]) for i in positions)
        outputs[batch] = [np.load(roi_path(out, i)) for i in positions]
    for one, many, i in zip(outputs[1], outputs[1000], positions, strict=True):
        assert one.shape == (len(boxes[i]), backbone.num_features)
        np.testing.assert_allclose(one, many, atol=1e-5)


def test_runs_over_the_same_images_share_proposals(setup, tmp_path, monkeypatch):
    stage1, images = setup
    shared = tmp_path / "proposals"
    calls = []
    real_ss = proposals.selective_search
    monkeypatch.setattr(proposals, "selective_search", lambda image: calls.append(1) or real_ss(image))
    discover(stage1, images.paths, images.coco, PARAMS, tmp_path / "k5", proposal_dir=shared)
    assert len(calls) == N
    other = Correspondences.load(discover(stage1, images.paths, images.coco, replace(PARAMS, knn_k=3),
                                          tmp_path / "k3", proposal_dir=shared))
    assert len(calls) == N and other.knn.shape == (N, 3)  # no image searched twice
    with pytest.raises(ValueError, match="other inputs"):
        discover(stage1, images.paths[:-1], None, PARAMS, tmp_path / "fewer", proposal_dir=shared)
