"""`orl-bench table` (orl_bench/plan.py, orl_bench/results/tables.py): the rows a paper table needs at
a scale, cells from records (mean ± std over seeds at each artifact's best layer, stale configs left out, the
chance row of the same data), the written files, and a rebuild that builds nothing."""
from __future__ import annotations

from dataclasses import replace

import pytest

from orl_bench.config import ConfigError
from orl_bench import pipeline, plan
from orl_bench.engine.checkpoint import pretraining_seconds
from orl_bench.results import tables
from orl_bench.results.paper import Row, load_reference
from tests.conftest import run_main


@pytest.fixture(scope="module")
def ref():
    return load_reference()


def by_label(rows):
    return {row.label: row for row in rows}


def test_main_table_rows_say_why_they_cannot_be_built(ref):
    table = ref.table("table4")
    unknown = Row("simsiam", "coco", {"ap_bb": 38.0}, {}, "SimSiam (COCO)")
    rows = by_label(plan.plan_rows(replace(table, rows=(*table.rows, unknown)), "default", ref, {}))
    assert list(rows)[0] == "Chance"
    assert rows["BYOL (COCO)"].recipe == "default" and rows["BYOL (COCO)"].paper["ap_bb"] == 39.5
    assert rows["SimSiam (COCO)"].recipe is None and rows["SimSiam (COCO)"].missing == "not implemented in orl-bench"
    # real data at the paper's scale: COCO+ needs its own root
    paper = by_label(plan.plan_rows(table, "paper", ref, {}))
    assert paper["ORL (COCO+)"].recipe is None and paper["ORL (COCO+)"].missing.startswith("dataset absent: COCO+")
    with_coco = by_label(plan.plan_rows(table, "default", ref, plan.data_overrides({"coco": "/c"})[0]))
    assert with_coco["ORL (COCO+)"].missing.startswith("dataset absent")  # never the scenes beside real COCO


def test_tables_1_and_2_run_densecl_and_selfemd_beside_the_papers_rows_without_a_paper_number(ref):
    for number in "12":
        rows = by_label(plan.plan_rows(ref.table(f"table{number}"), "default", ref, {}))
        for label in ("DenseCL (COCO), not in this table of the paper", "Self-EMD (COCO), not in this table of the paper"):
            assert rows[label].recipe == "default" and rows[label].paper == {} and rows[label].missing is None
    table4 = by_label(plan.plan_rows(ref.table("table4"), "default", ref, {}))
    assert table4["DenseCL (COCO)"].paper["ap_mk"] == 35.7 and not any("not in this" in label for label in table4)


@pytest.mark.parametrize("scale", ["tiny", "default"])
def test_coco_plus_rows_pretrain_on_the_embedded_coco_plus_at_the_embedded_scales(ref, scale):
    for number in "1234":
        planned = plan.plan_rows(ref.table(f"table{number}"), scale, ref, {})
        assert not [row.label for row in planned if row.missing]
        rows = by_label(planned)
        for method in ("BYOL", "ORL"):
            coco, plus = rows[f"{method} (COCO)"], rows[f"{method} (COCO+)"]
            assert coco.recipe == plus.recipe == scale and not coco.coco_plus and plus.coco_plus
            assert coco.data == () and plus.data == ("data.source=synth_plus",)


def test_real_coco_plus_pretrains_the_coco_plus_rows_and_the_coco_rows_on_its_train2017(ref):
    pre, _ = plan.data_overrides({"coco_plus": "/cp"})
    rows = by_label(plan.plan_rows(ref.table("table4"), "paper", ref, pre))
    assert rows["ORL (COCO+)"].recipe == "paper" and rows["ORL (COCO+)"].missing is None
    assert rows["ORL (COCO+)"].data == ("data.source=coco_plus", "data.root=/cp")
    assert rows["ORL (COCO)"].data == ("data.source=coco", "data.root=/cp")
    pre, _ = plan.data_overrides({"coco": "/c", "coco_plus": "/cp"})
    both = by_label(plan.plan_rows(ref.table("table4"), "paper", ref, pre))
    assert both["ORL (COCO)"].data == ("data.source=coco", "data.root=/c")


def test_ablation_rows_are_the_scales_recipes_with_the_paper_number_of_their_settings(ref):
    rows = by_label(plan.plan_rows(ref.table("table5a"), "default", ref, {}))
    assert {label: row.paper.get("voc07") for label, row in rows.items() if row.recipe} == {
        "BYOL [default]": 84.5, "ORL [default]": 86.7, "ORL [default_5a_inter_only]": 85.9,
        "ORL [default_5a_intra_only]": 85.7}
    # 5(e): the scale's own epochs stand for the paper's 800 (BYOL default: 8 epochs)
    epochs = by_label(plan.plan_rows(ref.table("table5e"), "default", ref, {}))
    assert epochs["BYOL [default_5e_epochs4]"].paper == {"voc07": 83.7}  # 400
    assert epochs["BYOL [default_5e_epochs16]"].paper == {"voc07": 84.9}  # 1600


def record(method, value, seed=0, layer="res5", task="voc07_svm", metric="mAP", recipe="default", artifact=None,
           config="h", dataset="d", **extra):
    return {"task": task, "metric": metric, "value": value, "method": method, "seed": seed, "layer": layer,
            "recipe": recipe, "task_config_hash": config, "dataset": dataset,
            "artifact_sha256": artifact or f"{method}-{seed}".ljust(64, "0"), **extra}


def test_cells_average_seeds_at_the_best_layer_and_skip_stale_configs(ref):
    table = ref.table("table1")
    rows = [r for r in plan.plan_rows(table, "default", ref, {}) if r.method in ("chance", "byol", "orl")]
    records = [record("byol", 50.0, seed=0), record("byol", 55.0, seed=0, layer="res4"),  # best layer: 55
               record("byol", 45.0, seed=1),
               record("byol", 99.0, seed=2),  # beyond --seeds 2
               record("byol", 99.0, seed=0, config="stale", artifact="x" * 64),  # another benchmark config
               record("chance", 13.0, seed=None, layer=None, recipe=None, artifact=None, config="c") | {"artifact_sha256": None},
               record("chance", 77.0, seed=None, layer=None, recipe=None, dataset="other", config="c") | {"artifact_sha256": None}]
    hashes = {(c.task, "default"): "h" for c in table.columns}
    frame = tables.fill(table, rows, records, seeds=2, task_hash=hashes)
    voc = frame[frame["task"] == "voc07_svm"].set_index("row")
    assert voc.loc["BYOL (COCO)", "mean"] == pytest.approx(50.0) and voc.loc["BYOL (COCO)", "n"] == 2
    assert voc.loc["BYOL (COCO)", "std"] == pytest.approx(7.0711, abs=1e-4)
    assert voc.loc["BYOL (COCO)", "delta"] == pytest.approx(50.0 - 84.5)
    assert voc.loc["BYOL (COCO)", "layers"] == ["res4", "res5"]
    assert voc.loc["Chance", "mean"] == 13.0  # the chance of the data the rows were measured on
    assert voc.loc["ORL (COCO)", "status"] == "not run" and voc.loc["ORL (COCO+)", "status"] == "not run"
    wide = tables.pivot(frame, table)
    assert wide.loc["BYOL (COCO)", "VOC07"] == "50.00 ± 7.07 (84.5, -34.5)"
    assert wide.loc["ORL (COCO)", "VOC07"] == "- (86.7)"
    one_seed = tables.fill(table, rows, records[:2], seeds=2, task_hash=hashes)
    assert tables.pivot(one_seed, table).loc["BYOL (COCO)", "VOC07"] == "55.00 [1/2 seeds] (84.5, -29.5)"


def test_coco_and_coco_plus_runs_of_one_method_and_recipe_fill_their_own_rows(ref):
    table = ref.table("table1")
    rows = [r for r in plan.plan_rows(table, "default", ref, {}) if r.method == "byol"]
    records = [record("byol", 50.0),  # recorded before records named their pretraining data: a COCO run
               record("byol", 52.0, seed=1, pretrain_data="synth"),
               record("byol", 60.0, artifact="p" * 64, pretrain_data="synth_plus")]
    frame = tables.fill(table, rows, records, seeds=2, task_hash={(c.task, "default"): "h" for c in table.columns})
    voc = frame[frame["task"] == "voc07_svm"].set_index("row")
    assert voc.loc["BYOL (COCO)", "mean"] == 51.0 and voc.loc["BYOL (COCO)", "pretrain_data"] == ["synth"]
    assert voc.loc["BYOL (COCO+)", "mean"] == 60.0 and voc.loc["BYOL (COCO+)", "pretrain_data"] == ["synth_plus"]
    task_hash = plan.task_recipe_hash("voc07_svm", "default", {})
    stored = [{**r, "task_config_hash": task_hash} for r in records[:2]]
    voc_only = tuple(c for c in table.columns if c.task == "voc07_svm")
    todo = plan.missing_runs([(replace(table, columns=voc_only), rows)], 1, stored, {})
    assert [(run.row.label, run.seed, run.tasks) for run in todo] == [("BYOL (COCO+)", 0, ("voc07_svm",))]
    assert tables.run_name(todo[0].row) == "byol [default] on COCO+"


def test_unknown_data_names_are_an_error_listing_the_known():
    with pytest.raises(ConfigError, match="--data cityscapes=...: unknown dataset; expected one of coco, coco_plus"):
        plan.data_overrides({"cityscapes": "/x"})
    pre, per_task = plan.data_overrides({"coco": "/c", "voc07": "/v"})
    assert pre == {"coco": ["data.source=coco", "data.root=/c"]}
    assert per_task["voc07_lowshot"] == ["data.source=voc2007", "data.root=/v"]


@pytest.mark.slow
def test_table_all_at_tiny_writes_every_table_and_a_second_run_builds_nothing(capsys, workdir, tmp_path):
    out, drawn = tmp_path / "tables", tmp_path / "figures"
    args = ("table", "all", "--recipe", "tiny", "--workdir", str(workdir), "--out", str(out), "--figures", str(drawn))
    first = run_main(capsys, *args)
    assert "built: 0 pretraining" not in first
    for n in "12345":
        for suffix in ("md", "csv", "tex"):
            assert (out / f"table{n}.{suffix}").is_file()
    assert "Table 5(e)" in (out / "table5.md").read_text() and "#### Provenance" in (out / "table1.md").read_text()
    said = {line.split(": ")[0].removeprefix("figure "): line for line in first.splitlines() if line.startswith("figure ")}
    names = ("table1_loss_curves", "figure3_pairs", "figure4_activations", "table2_lowshot", "table5e_schedule")
    assert sorted(said) == sorted(str(drawn / f"{name}.png") for name in names)
    assert not any("skipped" in line for line in said.values()), said
    assert all((drawn / f"{name}.png").read_bytes()[:4] == b"\x89PNG" for name in names)
    second = run_main(capsys, *args)
    assert "built: 0 pretraining run(s), 0 evaluation(s)" in second
    more_seeds = run_main(capsys, "table", "2", "--recipe", "tiny", "--seeds", "2", "--dry-run", "--workdir", str(workdir))
    assert "would build: byol [tiny] seed 1: pretrain (or reuse its artifact), then evaluate voc07_lowshot; " \
           "estimated pretraining ~" in more_seeds and "would build: byol [tiny] seed 0" not in more_seeds


def test_dry_run_plans_the_coco_plus_rows_on_the_embedded_coco_plus(capsys, workdir):
    said = run_main(capsys, "table", "1", "--recipe", "tiny", "--dry-run", "--workdir", str(workdir))
    for method in ("byol", "orl"):
        assert f"would build: {method} [tiny] seed 0: " in said and f"would build: {method} [tiny] on COCO+ seed 0: " in said
    assert "dataset absent" not in said and not (workdir / "artifacts").exists()


def test_table_needs_at_least_one_seed(capsys, workdir):
    from orl_bench.cli import main
    assert main(["table", "1", "--seeds", "0", "--workdir", str(workdir)]) == 2
    assert "--seeds is the number of pretraining seeds per row (0..N-1); expected >= 1, got 0" in capsys.readouterr().err
    assert not (workdir / "artifacts").exists()


def test_dry_run_names_the_artifact_a_single_stage_row_would_reuse(capsys, workdir):
    run_main(capsys, "pretrain", "--method", "random", "--recipe", "tiny", "--workdir", str(workdir))
    cfg = pipeline.load_pretrain_config("random", "tiny", ["train.seed=0"])
    assert plan.stored_artifact(cfg, workdir) == next((workdir / "artifacts").glob("random-*"))
    assert plan.stored_artifact(pipeline.load_pretrain_config("random", "tiny", ["train.seed=1"]), workdir) is None
    # a multi-stage method's key holds its earlier stages' outputs: unknown until they are built
    assert plan.stored_artifact(pipeline.load_pretrain_config("orl", "tiny", []), workdir) is None
    said = run_main(capsys, "table", "2", "--recipe", "tiny", "--seeds", "2", "--dry-run", "--workdir", str(workdir))
    assert "would build: random [tiny] seed 0: reuse random-" in said
    assert "would build: random [tiny] seed 1: pretrain (or reuse its artifact), then evaluate" in said


def test_pretraining_time_counts_the_stages_built_in_the_same_run(tmp_path):
    import json
    new, old = tmp_path / "orl-new", tmp_path / "byol-old"
    for folder in (new, old):
        folder.mkdir()
    (new / "manifest.json").write_text("{}")
    (new / "run.json").write_text(json.dumps({"train_wall_s_this_run": 10.0, "stages": {
        "stage1": {"data_s": 1.0, "pretrain_s": 5.0, "pretrain_reused": False},
        "stage2_s": 3.0, "stage2_steps_s": {"proposals": 2.0}}}))  # a breakdown of stage2_s, not counted again
    (old / "manifest.json").write_text(json.dumps({"train_wall_s_this_run": 7.5}))  # before run.json existed
    assert pretraining_seconds(new) == 19.0 and pretraining_seconds(old) == 7.5
    # and every record of the artifact carries it, for when the folder is gone; a folder copied
    # without its run.json has no time, not 0 s
    cfg = pipeline.load_pretrain_config("orl", "tiny", [])
    assert pipeline.record_fields(cfg, new)["pretraining_s"] == 19.0
    copied = tmp_path / "orl-copied"
    copied.mkdir()
    (copied / "manifest.json").write_text("{}")
    assert pretraining_seconds(copied) is None and "pretraining_s" not in pipeline.record_fields(cfg, copied)


def test_the_provenance_takes_a_gone_artifacts_pretraining_time_from_its_records(ref, tmp_path):
    import json
    table = ref.table("table1")
    rows = [r for r in plan.plan_rows(table, "default", ref, {}) if r.method == "byol"]
    here = tmp_path / "artifacts" / "byol-here"
    here.mkdir(parents=True)
    (here / "manifest.json").write_text("{}")
    (here / "run.json").write_text(json.dumps({"train_wall_s_this_run": 7.0}))
    records = [record("byol", 50.0, seed=0) | {"artifact": "artifacts/byol-gone-0", "pretraining_s": 100.0},
               record("byol", 51.0, seed=1) | {"artifact": "artifacts/byol-gone-1"},  # from before records kept it
               record("byol", 52.0, seed=2) | {"artifact": "/elsewhere/artifacts/byol-here", "pretraining_s": 9.0},
               # an older record without the time, then a newer one of the same artifact with it
               record("byol", 40.0, seed=3, layer="res4") | {"artifact": "artifacts/byol-gone-3"},
               record("byol", 53.0, seed=3) | {"artifact": "artifacts/byol-gone-3", "pretraining_s": 1000.0}]
    frame = tables.fill(table, rows, records, seeds=4, task_hash={(c.task, "default"): "h" for c in table.columns})
    notes = tables.provenance([(table, frame)], records, "default", 4, {}, 1.0, tmp_path)
    # the folder found under this work directory is read first, then any record of a gone one; one
    # unknown, said so
    assert "- time: pretraining 1107 s (the artifacts' own builds; 1 of 4 unknown: no folder here, no " \
           "pretraining_s in their records), evaluation" in notes


def test_the_pretraining_estimate_reads_the_records_when_no_artifact_is_left(tmp_path):
    row = tables.RowPlan("BYOL", "byol", "tiny", {})

    def built(sha: str, seconds: float, source: str = "synth") -> dict:
        return {"method": "byol", "recipe": "tiny", "pretrain_data": source, "artifact_sha256": sha,
                "pretraining_s": seconds}
    records = [built("a", 10.0), built("a", 10.0), built("b", 30.0), built("c", 500.0, "synth_plus")]  # c: COCO+
    assert plan.estimate(tmp_path, records, row, [], {}) == "estimated pretraining ~20 s"
    assert plan.estimate(tmp_path, [], row, [], {}) == "estimated pretraining time unknown"


def test_a_metric_carried_as_a_field_fills_its_own_column(ref):
    table = ref.table("table3")
    rows = [r for r in plan.plan_rows(table, "default", ref, {}) if r.method in ("chance", "byol")]
    records = [record("byol", 30.0, task=task, metric="top1", layer=None, top5=60.0)
               for task in ("semi_imagenet_1pct", "semi_imagenet_10pct")]
    frame = tables.fill(table, rows, records, seeds=1, task_hash={(c.task, "default"): "h" for c in table.columns})
    cells = frame[frame["row"] == "BYOL (COCO)"].set_index(["task", "metric"])["mean"]
    assert cells[("semi_imagenet_1pct", "top1")] == 30.0 and cells[("semi_imagenet_1pct", "top5")] == 60.0


def test_the_time_estimate_counts_evaluations_of_the_tasks_current_configuration_first(tmp_path):
    row = tables.RowPlan("BYOL", "byol", "tiny", {})
    current = plan.task_recipe_hash("semi_imagenet_10pct", "tiny", {})

    def run(seconds: float, task_hash: str) -> dict:
        return {"task": "semi_imagenet_10pct", "recipe": "tiny", "wall_time_s": seconds, "artifact_sha256": str(seconds),
                "task_config_hash": task_hash, "timestamp": "t"}
    older = [run(20.0, "an-older-protocol"), run(30.0, "an-older-protocol")]
    said = plan.estimate(tmp_path, older + [run(250.0, current)], row, ["semi_imagenet_10pct"], {}, pretraining=False)
    assert said == "estimated semi_imagenet_10pct ~250 s"
    assert plan.estimate(tmp_path, older, row, ["semi_imagenet_10pct"], {}, pretraining=False) \
        == "estimated semi_imagenet_10pct ~25 s"  # none of the current configuration: any of the recipe's
