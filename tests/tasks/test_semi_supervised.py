"""Semi-supervised fine-tuning (tasks/semi_supervised.py) through `orl-bench run`: killed after an
epoch, the rerun resumes and ends with the records of an uninterrupted run; the official grid
records every point and marks the best."""
from __future__ import annotations

from orl_bench.results.records import load_records
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
