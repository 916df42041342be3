"""Semi-supervised fine-tuning (tasks/semi_supervised.py) through `orl-bench run`: killed after an
epoch, the rerun resumes and ends with the records of an uninterrupted run; the official grid
records every point and marks the best."""
from __future__ import annotations

import pytest

from orl_bench.config import ConfigError
from orl_bench.results.records import load_records
from orl_bench.tasks.semi_supervised import SemiParams
from tests.conftest import run_cli, run_main, straight_then_killed

RUN = ["run", "--method", "random", "--recipe", "tiny", "--task", "semi_imagenet_10pct", "--set",
       "task.params.epochs=3", "--set", "task.params.milestones=[2]"]
SAME = ("value", "top5", "final_train_loss", "backbone_lr", "head_lr")


def _rows(home):
    return [{k: r[k] for k in SAME} for r in load_records(home) if r["method"] == "random"]


def test_killed_fine_tuning_resumes_to_the_uninterrupted_result(tmp_path, tiny_data):
    straight, killed = straight_then_killed(RUN, "eval.epoch:2", tmp_path, tiny_data)
    assert list((killed / "evals").rglob("state.pt"))  # two epochs are on disk
    resumed = run_cli(*RUN, "--workdir", str(killed))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert _rows(killed) == _rows(straight) and _rows(straight)


def test_the_official_grid_records_every_point_and_the_best(capsys, workdir):
    run_main(capsys, *RUN[:-4], "--set", "task.params.epochs=1", "--set", "task.params.milestones=[1]",
             "--set", "task.params.grid=true", "--workdir", str(workdir))
    rows = [r for r in load_records(workdir) if r["method"] == "random"]
    assert sorted((r["backbone_lr"], r["head_lr"] / r["backbone_lr"]) for r in rows) == sorted(
        (lr, m) for lr in (0.001, 0.01, 0.1) for m in (1.0, 10.0, 100.0))
    best = [r for r in rows if r["best"]]
    assert len(best) == 1 and best[0]["value"] == max(r["value"] for r in rows)


def test_the_grid_chosen_on_a_held_out_part_is_retrained_on_the_subset_and_tested_once(capsys, workdir):
    run_main(capsys, *RUN[:-4], "--set", "task.params.epochs=1", "--set", "task.params.milestones=[1]",
             "--set", "task.params.grid=true", "--set", "task.params.select_on=held_out",
             "--set", "task.params.embedded.train_per_class=20", "--workdir", str(workdir))
    rows = [r for r in load_records(workdir) if r["method"] == "random" and "held-out" in r["protocol"]]
    held, tested = [r for r in rows if r["metric"] == "held_out_top1"], [r for r in rows if r["metric"] == "top1"]
    classes = tested[0]["images"]["val"] // 2
    assert len(held) == 9 and all(r["images"] == {"train": classes, "held_out": classes} for r in held)
    chosen = [r for r in held if r["best"]]
    assert len(chosen) == 1 and chosen[0]["value"] == max(r["value"] for r in held)
    assert len(tested) == 1 and tested[0]["best"] and tested[0]["images"] == {"train": 2 * classes, "val": 2 * classes}
    assert (tested[0]["backbone_lr"], tested[0]["head_lr"]) == (chosen[0]["backbone_lr"], chosen[0]["head_lr"])


def test_the_1pct_grid_is_chosen_on_the_10pct_held_out_part_and_trained_on_the_1pct_images(capsys, workdir):
    run = [a.replace("semi_imagenet_10pct", "semi_imagenet_1pct") for a in RUN[:-4]]
    run_main(capsys, *run, "--set", "task.params.epochs=1", "--set", "task.params.milestones=[1]",
             "--set", "task.params.grid=true", "--set", "task.params.select_on=held_out",
             "--set", "task.params.held_out_subset=10percent",
             "--set", "task.params.embedded.train_per_class=20", "--workdir", str(workdir))
    rows = [r for r in load_records(workdir) if r["method"] == "random"]
    held, tested = [r for r in rows if r["metric"] == "held_out_top1"], [r for r in rows if r["metric"] == "top1"]
    classes = tested[0]["images"]["val"] // 2
    # 10% of 20 = 2 per class: one to fit, one held out; the 1% subset: one image per class
    assert len(held) == 9 and all(r["images"] == {"train": classes, "held_out": classes} for r in held)
    assert len(tested) == 1 and tested[0]["images"]["train"] == classes and tested[0]["subset"] == "1percent"
    assert "of the 10percent subset, trained on the 1percent subset" in tested[0]["protocol"]
    chosen = [r for r in held if r["best"]]
    assert (tested[0]["backbone_lr"], tested[0]["head_lr"]) == (chosen[0]["backbone_lr"], chosen[0]["head_lr"])


def test_held_out_selection_needs_two_labelled_images_per_class(workdir):
    result = run_cli(*RUN, "--set", "task.params.grid=true", "--set", "task.params.select_on=held_out",
                     "--workdir", str(workdir))
    assert result.returncode == 2 and "expected at least 2" in result.stderr, result.stderr[-2000:]
    assert not list(workdir.rglob("state.pt")) and not (workdir / "artifacts").exists()


def test_a_held_out_subset_without_held_out_selection_is_refused():
    with pytest.raises(ValueError, match="needs grid=true and select_on=held_out, got grid=False"):
        SemiParams(held_out_subset="10percent")
    with pytest.raises(ConfigError, match=r"held_out_subset.*null or one of \('1percent', '10percent'\)"):
        SemiParams(grid=True, select_on="held_out", held_out_subset="5percent")
