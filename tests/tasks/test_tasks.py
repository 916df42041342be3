"""Every registered task, built in or a plugin, runs through `orl-bench run` on the tiny recipe:
records with a value and the pipeline's provenance, the task's chance row where it has one, and a
second run that reuses them."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from orl_bench import pipeline
from orl_bench.config import config_hash, to_dict
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


PARAM_DEFAULTS = Path(__file__).with_name("param_defaults.json")
BUILT_IN = [t for t in TASKS.names() if TASKS.source(t).startswith("orl_bench.")]  # plugins keep their own


def params_defaults(task: str) -> dict:
    """What a recipe that leaves a task's options alone runs with, as hashed if spelled out
    (`embedded` is keyed by the set's digest, Task.data_identity, and is left out here)."""
    defaults = to_dict(TASKS.get(task).Params(), for_hash=True)
    defaults.pop("embedded", None)
    return defaults


def write_params_defaults() -> None:
    """Rewrite the snapshot, once the change of a default is made safe (see the test below)."""
    PARAM_DEFAULTS.write_text(json.dumps({t: params_defaults(t) for t in BUILT_IN}, indent=1, sort_keys=True) + "\n")


@pytest.mark.parametrize("task", BUILT_IN)
def test_a_task_options_defaults_change_only_with_its_records_key(task):
    """A task's record key hashes its recipe as written, not the options it leaves to their defaults:
    a changed default, or a new option without `added_later`, would change results under an unchanged
    key, and stored records of the old behaviour would be reused as the new. To change one, spell
    the old value out in the recipes that keep it (or mark a new option `added_later(old behaviour)`),
    then rewrite the snapshot: python -c "from tests.tasks.test_tasks import write_params_defaults as w; w()"."""
    assert params_defaults(task) == json.loads(PARAM_DEFAULTS.read_text()).get(task), \
        f"{task}'s option defaults differ from {PARAM_DEFAULTS.name}"
