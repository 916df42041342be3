"""Every registered task, built in or a plugin, runs through `orl-bench run` on the tiny recipe:
records with a value and the pipeline's provenance, the task's chance row where it has one, and a
second run that reuses them."""
from __future__ import annotations

import json

import pytest

from orl_bench import pipeline
from orl_bench.config import config_hash
from orl_bench.data import synth_classify
from orl_bench.registry import TASKS
from orl_bench.results.records import REQUIRED, load_records
from orl_bench.tasks.classify import ClassificationTask
from tests.conftest import run_main


@pytest.mark.parametrize("task", TASKS.names())
def test_every_task_runs_on_the_tiny_recipe_and_is_reused(task, capsys, workdir):
    args = ("run", "--method", "byol", "--recipe", "tiny", "--task", task, "--workdir", str(workdir),
            "--set", "train.epochs=1", "--full")
    run_main(capsys, *args)
    records = [r for r in load_records(workdir) if r["task"] == task]
    byol = [r for r in records if r["method"] == "byol"]
    assert byol and all(set(REQUIRED) <= set(r) and isinstance(r["value"], float) for r in records)
    again = run_main(capsys, *args)
    assert json.loads(again.split("timings: ")[1].splitlines()[0])["eval_reused"] is True
    assert len([r for r in load_records(workdir) if r["task"] == task]) == len(records)


@pytest.mark.parametrize("task", TASKS.names())
def test_records_of_an_embedded_set_of_another_design_are_not_reused(task, monkeypatch):
    """The embedded classification sets' design lives in EmbeddedClassSpec's defaults, which no recipe
    spells out: the task hash carries the set's digest, so records of another generator version miss.
    Tasks whose config says it all keep the plain config hash (their stored records stay valid)."""
    cfg = pipeline.load_task_config(task, "default", [])
    now = pipeline.task_config_hash(cfg)
    monkeypatch.setattr(synth_classify, "CLASSIFY_VERSION", synth_classify.CLASSIFY_VERSION - 1)
    if isinstance(TASKS.get(task), type) and issubclass(TASKS.get(task), ClassificationTask):
        assert pipeline.task_config_hash(cfg) != now
    else:
        assert pipeline.task_config_hash(cfg) == now == config_hash(cfg)
