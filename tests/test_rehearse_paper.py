"""The paper recipe rehearsed, one registered method or task per test: ResNet-50, 224 px views, the
paper's heads, optimisers, ORL's stage-2 thresholds, the 8192- and 9216-d SVM features, Mask R-CNN
at 800-1333 px, at batch 2 for one step on generated 240 x 320 images (smaller than COCO's, so the
default test run stays in budget; every size the recipe sets is its own). The slowest entries run
with -m slow; `orl-bench rehearse --recipe paper` runs them all (results/rehearsal/paper_cpu.md)."""
from __future__ import annotations

import json

import pytest
import torch

from orl_bench import cli, pipeline, rehearse
from orl_bench.engine.distributed import DistInfo
from orl_bench.registry import METHODS, TASKS

SIZE = "240x320"
ARGS = ["--recipe", "paper", "--steps", "1", "--batch", "2", "--image-size", SIZE, "--no-extrapolate"]
# The entries over 25 s on 2 cores (ORL's three stages and UniVIP with selective search, Mask R-CNN
# at 800-1333 px, kNN and iNat18's long-tailed set over more images), and two whose code path a
# default entry shares (the low-shot SVMs: voc07_svm's features; the 10% subset: the 1% one): -m slow.
SLOW = {"orl", "univip", "coco_maskrcnn", "knn", "linear_inat18", "voc07_lowshot", "semi_imagenet_10pct"}


def marked(names: list[str]) -> list:
    return [pytest.param(n, marks=pytest.mark.slow) if n in SLOW else n for n in names]


@pytest.fixture(scope="session")
def paper_data(tmp_path_factory):
    """Every source the paper recipes read, generated once (what `rehearse` writes under its data/)."""
    home = tmp_path_factory.mktemp("paper_home")
    height, width = map(int, SIZE.split("x"))
    runner = rehearse.Rehearsal(rehearse.Plan("paper", batch=2, image_size=(height, width), extrapolate=False), home,
                                DistInfo(0, 1, 0, torch.device("cpu")))
    runner.generate()
    return runner.root / "data"


def rehearse_paper(tmp_path, paper_data, *args: str) -> dict:
    home = tmp_path / "home"
    (home / "rehearsal" / "paper").mkdir(parents=True)
    (home / "rehearsal" / "paper" / "data").symlink_to(paper_data, target_is_directory=True)
    status = cli.main(["rehearse", *ARGS, *args, "--workdir", str(home)])
    report = json.loads((home / "rehearsal" / "paper" / "rehearsal.json").read_text())
    failed = [(r["name"], r["stage"], r["error"]) for r in report["rows"] if r["status"] != "ok"]
    assert status == 0 and not failed, failed
    return report


@pytest.mark.parametrize("method", marked([*METHODS.names(), pipeline.RANDOM]))
def test_every_method_runs_at_the_paper_recipe(method, tmp_path, paper_data):
    report = rehearse_paper(tmp_path, paper_data, "--methods", method, "--tasks")
    trained = [r for r in report["rows"] if r["steps"]]
    assert method == pipeline.RANDOM or trained and all(r["steps"] == 1 for r in trained)


@pytest.mark.parametrize("task", marked(TASKS.names()))
def test_every_task_runs_at_the_paper_recipe(task, tmp_path, paper_data):
    report = rehearse_paper(tmp_path, paper_data, "--methods", pipeline.RANDOM, "--tasks", task)
    (evaluate,) = [r for r in report["rows"] if r["stage"] == "evaluate"]
    for layer, dims in (evaluate["feature_dims"] or {}).items():  # ResNet-50 at 224 px: the protocol's table
        assert dims["dim"] == dims["protocol"], layer
