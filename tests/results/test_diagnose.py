"""`orl-bench diagnose`: the chance levels and the two-view premise on hand-made cases, and the
command end to end on the tiny recipe."""
from __future__ import annotations

import json

import numpy as np
import pytest
from pycocotools import mask as mask_utils

from orl_bench import pipeline
from orl_bench.cli import main
from orl_bench.data.coco import CocoDataset
from orl_bench.data.views import ViewParams
from orl_bench.engine.checkpoint import read_manifest
from orl_bench.data.coco import category_matrix
from orl_bench.results.diagnose import chance_precision, knn_precision, view_premise
from orl_bench.results.records import CHANCE, append_records

TINY = ["--recipe", "tiny", "--set", "train.epochs=1"]


def toy_coco(tmp_path, sizes, annotations):
    """A COCO split of images with the given (width, height) and annotation dicts (ids filled in)."""
    (tmp_path / "train2017").mkdir()
    (tmp_path / "annotations").mkdir()
    images = [{"id": i + 1, "file_name": f"{i + 1}.jpg", "width": w, "height": h} for i, (w, h) in enumerate(sizes)]
    anns = [{"id": n + 1, "iscrowd": 0, **a} for n, a in enumerate(annotations)]
    (tmp_path / "annotations" / "instances_train2017.json").write_text(json.dumps(
        {"images": images, "annotations": anns, "categories": [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}]}))
    return CocoDataset(tmp_path)


def rle(mask):
    encoded = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": encoded["size"], "counts": encoded["counts"].decode("ascii")}


def test_knn_chance_is_the_share_of_other_images_sharing_a_category():
    labels = np.array([[1, 0, 0], [1, 1, 0], [0, 1, 0], [0, 0, 1], [0, 0, 0]], bool)
    # queries 0-3 (image 4 has no object): 1, 2, 1 and 0 of their 4 other images share a category
    assert chance_precision(labels) == pytest.approx((1 + 2 + 1 + 0) / 4 / 4)
    angles = np.radians([0, 8, 20, 90, 180])  # nearest: 0->1, 1->0, 2->1, 3->2 (no shared category)
    result = knn_precision(np.stack([np.cos(angles), np.sin(angles)], axis=1), labels, k=1)
    assert result == {"k": 1, "queries": 4, "precision": 0.75, "chance": 0.25}


def test_label_matrix_skips_crowd_regions(tmp_path):
    coco = toy_coco(tmp_path, [(10, 10)] * 3, [
        {"image_id": 1, "category_id": 2, "bbox": [0, 0, 5, 5]},
        {"image_id": 2, "category_id": 1, "bbox": [0, 0, 5, 5]},
        {"image_id": 2, "category_id": 2, "bbox": [0, 0, 5, 5], "iscrowd": 1}])
    assert category_matrix([coco]).tolist() == [[False, True], [True, False], [False, False]]


def test_one_object_covering_the_image_is_every_view_s_dominant_object(tmp_path):
    coco = toy_coco(tmp_path, [(40, 30), (40, 30)], [
        {"image_id": 1, "category_id": 1, "bbox": [0, 0, 40, 30], "segmentation": [[0, 0, 40, 0, 40, 30, 0, 30]]},
        {"image_id": 2, "category_id": 2, "bbox": [0, 0, 40, 30]}])  # no mask: its box stands in
    result = view_premise([coco], ViewParams(), n_images=10)
    assert result["images"] == 2 and result["views_without_object"] == 0 and result["pairs_both_on_objects"] == 1
    assert result["different_dominant_object"] == 0 and result["chance_different_object"] == 0
    assert result["area_source"] == "masks (1 of 2 objects from boxes: no segmentation)"


def test_whole_image_views_pick_the_largest_object_and_chance_weighs_objects_by_area(tmp_path):
    left, right = np.zeros((30, 30), bool), np.zeros((30, 30), bool)
    left[:, :20], right[:, 20:] = True, True
    coco = toy_coco(tmp_path, [(30, 30), (30, 30)], [  # image 2 holds no object
        {"image_id": 1, "category_id": 1, "bbox": [0, 0, 20, 30], "segmentation": rle(left)},
        {"image_id": 1, "category_id": 2, "bbox": [20, 0, 10, 30], "segmentation": rle(right)}])
    result = view_premise([coco], ViewParams(scale=(1.0, 1.0), ratio=(1.0, 1.0)), n_images=2)
    assert result["different_dominant_object"] == 0 and result["pairs_both_on_objects"] == 0.5
    assert result["views_without_object"] == 0.5 and result["chance_views_without_object"] == 0.5
    # two random object pixels: 1 - (2/3)^2 - (1/3)^2
    assert result["chance_different_object"] == result["chance_different_category"] == pytest.approx(4 / 9, abs=1e-4)


def test_diagnose_tiny_byol_end_to_end(capsys, workdir):
    args = ["diagnose", "--method", "byol", *TINY, "--workdir", str(workdir), "--images", "20"]
    assert main(args) == 2  # nothing trained yet: the error names the command that builds it
    assert f"run `orl-bench pretrain --method byol {' '.join(TINY)} --workdir {workdir}` first" in capsys.readouterr().err

    assert main(["pretrain", "--method", "byol", *TINY, "--workdir", str(workdir)]) == 0
    folder = next((workdir / "artifacts").glob("byol-*"))
    sha = read_manifest(folder)["backbone_sha256"]
    common = {"task": "voc07_svm", "metric": "mAP", "dataset": "toy-voc07", "recipe": "tiny", "config_hash": "-",
              "task_config_hash": "abc", "git_revision": "-", "device": "cpu", "wall_time_s": 0, "timestamp": "-"}
    append_records(workdir, [{**common, "method": "byol", "artifact_sha256": sha, "layer": "res5", "value": 30.0},
                             {**common, "method": "byol", "artifact_sha256": sha, "layer": "res4", "value": 25.0},
                             {**common, "method": CHANCE, "artifact_sha256": None, "layer": None, "value": 17.0}])
    capsys.readouterr()
    assert main(args) == 0
    out = capsys.readouterr().out
    report = json.loads((workdir / "diagnostics" / f"{folder.name}.json").read_text())
    assert (workdir / "diagnostics" / f"{folder.name}.md").read_text() in out

    images = pipeline.pretrain_images(pipeline.artifact_config(folder).data, workdir)
    knn = report["knn_precision"]
    assert knn["k"] == 10 and knn["queries"] == knn["images"] == len(images.paths) and 0 <= knn["precision"] <= 1
    assert knn["chance"] == round(chance_precision(category_matrix(images.coco)), 4)
    assert "no stage-2 correspondences" in report["pair_quality"]["not_applicable"]
    premise = report["view_premise"]
    assert premise["images"] == 20 and premise["area_source"] == "masks" and premise["crops_from"] == "the method's views"
    assert [(r["layer"], r["mAP"], r["chance"]) for r in report["svm_map"]["rows"]] == [("res4", 25.0, 17.0),
                                                                                        ("res5", 30.0, 17.0)]
    assert "| res5 | 30.00 | 17.00 |" in out

    assert main(["diagnose", "--artifact", str(folder), "--workdir", str(workdir), "--images", "20"]) == 0
    assert json.loads((workdir / "diagnostics" / f"{folder.name}.json").read_text()) == report
    assert main(["diagnose", "--artifact", str(folder), "--set", "train.epochs=2", "--workdir", str(workdir)]) == 2


@pytest.mark.slow
def test_diagnose_tiny_orl_chain_with_svm_layers(capsys, workdir):
    assert main(["pretrain", "--method", "orl", *TINY, "--workdir", str(workdir)]) == 0
    assert main(["diagnose", "--method", "orl", *TINY, "--workdir", str(workdir), "--images", "20",
                 "--eval-layers", "res4,res5"]) == 0
    folder = next(d for d in (workdir / "artifacts").glob("orl-*") if (d / "manifest.json").exists())
    report = json.loads((workdir / "diagnostics" / f"{folder.name}.json").read_text())
    assert report["knn_precision"]["k"] == 3  # the tiny recipe's stage-2 K
    [run] = report["pair_quality"]["runs"]
    assert run["knn_k"] == 3 and 0 <= run["same_category_given_both"] <= 1 and run["chance_same_category"] > 0
    rows = report["svm_map"]["rows"]
    assert [r["layer"] for r in rows] == ["res4", "res5"] and all(r["chance"] for r in rows)

    # its stage 1, the byol artifact: the same stage-2 pairs, and the embedding bank stage 2 stored
    assert main(["diagnose", "--method", "byol", *TINY, "--workdir", str(workdir), "--images", "20"]) == 0
    stage1 = json.loads(next((workdir / "diagnostics").glob("byol-*.json")).read_text())
    assert stage1["pair_quality"]["runs"] == [run]
    assert stage1["knn_precision"]["embedding"].endswith(run["stage2"])
