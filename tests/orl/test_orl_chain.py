"""`orl` as one chain: stage 1 shared with `byol`, stage 2 cached by its inputs, stage 3 keyed by
the correspondence file it trains from; recipes and their paper variants; `viz pairs`."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from orl_bench import pipeline
from orl_bench.cli import main
from orl_bench.config import ConfigError, recipe_root
from orl_bench.data.sources import pretrain_images
from orl_bench.engine.checkpoint import read_manifest, read_run_info
from orl_bench.engine.distributed import DistInfo
from orl_bench.methods.orl.correspondence import Correspondences
from orl_bench.methods.orl.method import ORL
from orl_bench.results.figures import correspondence_grid
from orl_bench.results.paper import load_reference
from tests.conftest import content_files

CPU = DistInfo(0, 1, 0, torch.device("cpu"))
FAST = ["train.epochs=1"]  # every stage of the tiny chain for one epoch


def build(workdir, overrides=FAST, recipe="tiny"):
    cfg = pipeline.load_pretrain_config("orl", recipe, overrides)
    return cfg, *pipeline.ensure_pretrained(cfg, recipe, workdir, CPU, overrides)


@pytest.fixture(scope="module")
def built(tmp_path_factory, tiny_data):
    """One tiny chain, built once: (work directory, stage-3 folder, timings of the cold build)."""
    home = tmp_path_factory.mktemp("orl_chain")
    (home / "data").symlink_to(tiny_data, target_is_directory=True)
    _, folder, timings = build(home)
    return home, folder, timings


@pytest.fixture
def built_copy(built, tmp_path):
    """A private copy of the built chain, for tests that damage its files."""
    home = tmp_path / "home"
    shutil.copytree(built[0], home, symlinks=True)
    return home, home / "artifacts" / built[1].name


def test_stage1_is_the_byol_artifact_and_every_stage_is_reused(built_copy, built):
    workdir, folder = built_copy
    timings = built[2]
    byol_cfg = pipeline.load_pretrain_config("byol", "tiny", FAST)
    byol_dir = pipeline.artifact_dir(workdir, byol_cfg)
    manifest = read_manifest(folder)
    corr_path = workdir / manifest["inputs"]["correspondences"]["path"]  # relative to the work directory
    c = Correspondences.load(corr_path)
    assert c.info["stage1_backbone_sha256"] == read_manifest(byol_dir)["backbone_sha256"]
    assert manifest["method"] == "orl" and read_run_info(folder)["stages"]["stage2_reused"] is False
    assert manifest["dataset_fallbacks"]["images"] == len(c)
    assert set(timings["stage2_steps_s"]) >= {"embeddings", "knn", "proposals", "boxes", "roi_embeddings", "pairs"}

    # `--method byol` with the same recipe and overrides finds stage 1 already built
    assert pipeline.ensure_pretrained(byol_cfg, "tiny", workdir, CPU)[1]["pretrain_reused"]
    again = build(workdir)
    assert again[1] == folder
    assert again[2]["pretrain_reused"] and again[2]["stage1"]["pretrain_reused"] and again[2]["stage2_reused"]

    # stage-2 settings: a new correspondence folder and stage-3 artifact, the same stage 1
    other = build(workdir, FAST + ["method.stage2.knn_k=2"])
    assert other[1] != folder and other[2]["stage1"]["pretrain_reused"] and not other[2]["stage2_reused"]
    assert Correspondences.load(workdir / read_manifest(other[1])["inputs"]["correspondences"]["path"]).knn.shape[1] == 2

    # a stage-3-only option keeps stages 1 and 2
    weights = build(workdir, FAST + ["method.inter_weight=0"])
    assert weights[2]["stage2_reused"] and weights[1] != folder


def _copied_corr(workdir, folder):
    """The correspondence file of the copied chain."""
    return workdir / read_manifest(folder)["inputs"]["correspondences"]["path"]


def test_the_chain_in_another_work_directory_gives_the_same_bytes(built, tmp_path, tiny_data):
    """Artifacts are keyed by their inputs' sha256: no path, time or host may leak into them."""
    home = tmp_path / "elsewhere"
    home.mkdir()
    (home / "data").symlink_to(tiny_data, target_is_directory=True)
    assert build(home)[1].name == built[1].name
    theirs, ours = content_files(built[0]), content_files(home)
    assert any(f.endswith("correspondences.npz") for f in ours) and any(f.endswith("backbone.safetensors")
                                                                      for f in ours)
    assert [f for f, sha in ours.items() if theirs.get(f) != sha] == []


def test_a_rebuilt_correspondence_file_gives_a_new_stage3_artifact(built_copy):
    workdir, folder = built_copy
    assert build(workdir)[1] == folder  # the copy is found complete
    corr = _copied_corr(workdir, folder)
    c = Correspondences.load(corr)
    c.pairs[0][0] = c.pairs[0][0][:0]  # as if stage 2 had run again with another outcome
    c.save(corr)
    assert build(workdir)[1] != folder


@pytest.mark.slow  # a second tiny chain: ~20 s
def test_stage2_mines_the_unlabeled_images_of_the_embedded_coco_plus(workdir):
    cfg, folder, _ = build(workdir, FAST + ["data.source=synth_plus"])
    images = pretrain_images(cfg.data, workdir)
    manifest = read_manifest(folder)
    c = Correspondences.load(workdir / manifest["inputs"]["correspondences"]["path"], n_images=len(images.paths))
    assert len(c) == 128 and c.image_ids == [im.id for split in images.coco for im in split.images]
    unlabeled = range(64, 128)  # unlabeled2017 follows train2017; no annotations, selective-search boxes all the same
    assert all(c.file_names[i] == images.paths[i].name for i in unlabeled)
    assert sum(len(c.boxes[i]) for i in unlabeled) and sum(len(p) for i in unlabeled for p in c.pairs[i])
    assert (c.knn >= 64).any()  # train2017 queries find neighbours among the unlabeled scenes too
    stage1 = read_manifest(workdir / "artifacts" / c.info["stage1"])
    assert stage1["data"] == manifest["data"] == {"source": "synth_plus", "key": images.key, "images": 128}


def test_seed_overrides_reach_stage1(workdir):
    overrides = FAST + ["train.seed=3"]
    cfg, folder, _ = build(workdir, overrides)
    byol_seed3 = pipeline.artifact_dir(workdir, pipeline.load_pretrain_config("byol", "tiny", overrides))
    stage1_sha = Correspondences.load(workdir / read_manifest(folder)["inputs"]["correspondences"]["path"]).info[
        "stage1_backbone_sha256"]
    assert read_manifest(byol_seed3)["backbone_sha256"] == stage1_sha


def test_stage1_on_other_images_is_refused_before_training(tmp_path):
    recipe = tmp_path / "orl_other_data.yaml"
    recipe.write_text(f"base: {recipe_root('pretrain') / 'orl' / 'tiny.yaml'}\n"
                      "data: {synth: {coco_train: 48}}\n")
    home = tmp_path / "home"  # not the shared tiny data: this recipe generates its own scenes
    with pytest.raises(ConfigError, match="must pretrain on the same images"):
        build(home, FAST, str(recipe))
    assert not (home / "artifacts").exists()


def test_correspondence_file_that_does_not_fit_fails_before_training(built_copy):
    workdir, folder = built_copy
    corr = _copied_corr(workdir, folder)
    n = len(Correspondences.load(corr))
    with np.load(corr, allow_pickle=False) as z:
        arrays = dict(z)
    arrays["knn"][0, 0] = n + 5
    np.savez(corr, **arrays)  # written directly, past save()'s checks
    with pytest.raises(ValueError, match="neighbour"):
        build(workdir)
    new = [p for p in (workdir / "artifacts").glob("orl-*") if "stage2" not in p.name and p != folder]
    assert all(not (p / "manifest.json").exists() and not (p / "train_state.pt").exists() for p in new)


ABLATIONS = {  # recipe -> the Table 5 number its records must find (VOC07 SVM mAP)
    "paper": 86.7, "paper_5a_intra_only": 85.7, "paper_5a_inter_only": 85.9, "paper_5b_knn1": 84.7,
    "paper_5b_knn20": 87.0, "paper_5b_ratio5": 86.1, "paper_5b_ratio20": 86.4, "paper_5d_gt_boxes": 85.4,
}


@pytest.mark.parametrize("recipe", sorted(ABLATIONS))
def test_ablation_recipes_record_their_table5_variant(recipe):
    cfg = pipeline.load_pretrain_config("orl", recipe, [])
    fields = pipeline.record_fields(cfg)
    assert load_reference().lookup("voc07_svm", "mAP", "orl", **fields["variant"]) == ABLATIONS[recipe]
    default = pipeline.record_fields(pipeline.load_pretrain_config("orl", recipe.replace("paper", "default"), []))
    assert default["variant"] == fields["variant"]  # the embedded ablation changes the same setting


def test_stage3_epochs_ablation_also_sets_stage1():
    for scale, epochs in (("paper", 100), ("default", 2)):
        cfg = pipeline.load_pretrain_config("orl", f"{scale}_5e_epochs{epochs}", [])
        stage1 = pipeline.load_pretrain_config("byol", cfg.method["stage1"], [])
        assert cfg.train.epochs == stage1.train.epochs == epochs


def test_zero_image_weight_is_not_a_paper_row():
    cfg = pipeline.load_pretrain_config("orl", "paper", ["method.image_weight=0"])
    assert load_reference().lookup("voc07_svm", "mAP", "orl", **ORL.variant(cfg)) is None


def test_viz_pairs_draws_the_grid(built, capsys):
    workdir = built[0]
    out = workdir / "pairs.png"
    assert main(["viz", "pairs", "--recipe", "tiny", "--set", "train.epochs=1", "--workdir", str(workdir),
                 "--rows", "3", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "query images at positions" in printed
    quality = json.loads(printed.split("pair quality against ground truth: ")[1])
    assert 0 <= quality["same_category_given_both"] <= 1 and quality["pairs"] > 0
    with Image.open(out) as im:
        assert im.format == "PNG" and im.size[0] > 400
    assert main(["viz", "pairs", "--method", "byol", "--recipe", "tiny", "--workdir", str(workdir)]) == 2
    assert "no stage-2 correspondences" in capsys.readouterr().err


def test_grid_draws_only_images_with_pairs_and_checks_its_input(workdir, tmp_path):
    images = pretrain_images(pipeline.load_pretrain_config("orl", "tiny", []).data, workdir).paths[:6]
    n = len(images)
    boxes = [np.array([[0, 0, 20, 20], [10, 10, 30, 30]], np.float32) for _ in range(n)]
    knn = np.array([[(i + 1) % n] for i in range(n)], np.int64)
    pairs = [[np.array([[0, 1]], np.int64) if i in (2, 4) else np.zeros((0, 2), np.int64)] for i in range(n)]
    c = Correspondences(list(range(n)), [p.name for p in images], boxes, knn, pairs)
    assert correspondence_grid(c, images, tmp_path / "g.png", rows=5) == [2, 4]
    with pytest.raises(ValueError, match="rows must be >= 1"):
        correspondence_grid(c, images, tmp_path / "g.png", rows=0)
    with pytest.raises(ValueError, match="6 images"):
        correspondence_grid(c, images[:5], tmp_path / "g.png")
    empty = Correspondences(c.image_ids, c.file_names, boxes, knn, [[np.zeros((0, 2), np.int64)]] * n)
    with pytest.raises(ValueError, match="no RoI pairs"):
        correspondence_grid(empty, images, tmp_path / "g.png")


def test_run_records_carry_variant_and_epochs(built_copy, capsys):
    workdir, _ = built_copy
    assert main(["run", "--method", "orl", "--recipe", "tiny", "--set", "train.epochs=1",
                 "--workdir", str(workdir), "--full"]) == 0
    out = capsys.readouterr().out
    timings = json.loads(out.split("timings: ")[1].splitlines()[0])
    assert {"stage1", "stage2_s", "stage2_steps_s", "pretrain_s", "pretrain_reused", "eval_s"} <= set(timings)
    record = json.loads((workdir / "results" / "records.jsonl").read_text().splitlines()[0])
    assert record["method"] == "orl" and record["epochs"] == 1 and len(record["setup_hash"]) == 12
    assert record["variant"] == {"losses": ["intra", "inter"], "knn_k": 3, "pair_ratio": 0.1,
                                 "boxes": "selective_search"}


def test_ablation_recipes_are_evaluated_at_their_scale(tmp_path):
    assert pipeline.benchmark_recipe("default_5a_intra_only") == "default"
    assert pipeline.benchmark_recipe("paper") == "paper"
    with pytest.raises(ConfigError, match="--task-recipe"):
        pipeline.benchmark_recipe(str(tmp_path / "mine.yaml"))
