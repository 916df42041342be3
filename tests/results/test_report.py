import json

import pytest

from orl_bench.results.paper import load_reference
from orl_bench.results.records import append_records, load_records, records_path
from orl_bench.results.report import at_a_glance, glance_markdown, summarize, to_csv, to_markdown


def record(value, seed, method="byol", **extra):
    return {"task": "voc07_svm", "metric": "mAP", "value": value, "method": method, "artifact_sha256": "s",
            "recipe": "default", "dataset": "synth", "config_hash": "h", "git_revision": "g", "device": "cpu",
            "wall_time_s": 1.0, "timestamp": "t", "layer": "res5", "seed": seed, **extra}


def test_seeds_are_aggregated_with_the_paper_number_beside(tmp_path):
    append_records(tmp_path, [record(30.0, 0), record(32.0, 1), record(34.0, 2), record(25.0, 0, "random")])
    rows = summarize(load_records(tmp_path), load_reference())
    byol = next(r for r in rows if r["method"] == "byol")
    assert byol["mean"] == pytest.approx(32.0) and byol["std"] == pytest.approx(2.0) and byol["n"] == 3
    assert byol["paper"] == 84.5 and byol["seeds"] == [0, 1, 2]
    assert next(r for r in rows if r["method"] == "random")["paper"] == 9.6
    assert "32.00 ± 2.00" in to_markdown(rows) and "84.5" in to_markdown(rows)
    assert to_csv(rows).splitlines()[0].startswith("task,metric,layer")


def test_a_coco_plus_run_stands_beside_the_papers_coco_plus_number():
    rows = summarize([record(30.0, 0, setup_hash="a"), record(33.0, 0, setup_hash="b", pretrain_data="synth_plus")],
                     load_reference())
    assert sorted((r["setup_hash"], r["paper"]) for r in rows) == [("a", 84.5), ("b", 87.0)]


def test_records_are_appended_all_or_none(tmp_path):
    append_records(tmp_path, [record(1.0, 0)])
    bad = record(2.0, 1)
    del bad["device"]
    with pytest.raises(ValueError, match="device"):
        append_records(tmp_path, [record(3.0, 2), bad])
    assert [json.loads(line)["value"] for line in records_path(tmp_path).read_text().splitlines()] == [1.0]


def test_seeds_of_one_setup_are_averaged_but_other_setups_and_epochs_are_not():
    rows = summarize([record(30.0, 0, setup_hash="a", epochs=8), record(32.0, 1, setup_hash="a", epochs=8),
                      record(20.0, 0, setup_hash="b", epochs=8),  # e.g. --set method.patch_size=48
                      record(40.0, 0, setup_hash="c", epochs=16)], load_reference())
    assert sorted((r["setup_hash"], r["n"], r["mean"]) for r in rows) == [("a", 2, 31.0), ("b", 1, 20.0),
                                                                          ("c", 1, 40.0)]
    table = [[cell.strip() for cell in line.split("|")[1:-1]] for line in to_markdown(rows).splitlines()[2:]]
    assert [(line[6], line[7], line[10]) for line in table] == [("8", "a", "31.00 ± 1.41"), ("8", "b", "20.00 ± 0.00"),
                                                               ("16", "c", "40.00 ± 0.00")]


def test_bar_chart_draws_one_bar_per_method_row_at_the_layer_and_skips_chance(tmp_path):
    from orl_bench.results.figures import result_bars
    append_records(tmp_path, [record(30.0, 0), record(32.0, 1), record(20.0, 0, "random"),
                              record(40.0, 0, "supervised"), record(10.0, None, "chance", layer=None),
                              record(25.0, 0, "byol", layer="res4")])
    rows = summarize(load_records(tmp_path), load_reference())
    out = tmp_path / "bars.png"
    assert result_bars(rows, out) == 3  # byol, random, supervised at res5; chance is the dashed line
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(ValueError, match="no report rows at layer conv1"):
        result_bars(rows, tmp_path / "none.png", layer="conv1")


def test_one_artifact_evaluated_twice_counts_as_one_seed(tmp_path):
    again = {**record(30.0, 0), "task_config_hash": "with-more-layers"}
    append_records(tmp_path, [record(30.0, 0), {**record(34.0, 1), "artifact_sha256": "t"}, again])
    byol = next(r for r in summarize(load_records(tmp_path), load_reference()) if r["method"] == "byol")
    assert byol["n"] == 2 and byol["mean"] == pytest.approx(32.0)


def test_learning_curves_draw_one_line_per_method_setting_with_levels_for_random_and_chance(tmp_path):
    from orl_bench.results.figures import learning_curves
    append_records(tmp_path, [record(30.0, 0, epochs=8, setup_hash="a"), record(32.0, 1, epochs=8, setup_hash="a"),
                              record(35.0, 0, epochs=16, setup_hash="b"),
                              record(31.0, 0, "orl", epochs=8, setup_hash="c", variant={"boxes": "gt"}),
                              record(29.0, 0, "orl", epochs=8, setup_hash="d", variant={"boxes": "ss"}),
                              record(20.0, 0, "random", epochs=0), record(10.0, None, "chance", layer=None)])
    rows = summarize(load_records(tmp_path), load_reference())
    out = tmp_path / "curves.png"
    assert learning_curves(rows, out) == 3  # byol (2 points), orl gt, orl ss; random and chance are levels
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(ValueError, match="no report rows with pretraining epochs at layer res4"):
        learning_curves(rows, tmp_path / "none.png", layer="res4")


def test_low_shot_curves_draw_one_line_per_method_setting_over_k(tmp_path):
    from orl_bench.results.figures import low_shot_curves
    rows = [{**record(v + k, seed, method, epochs=8, setup_hash=method), "task": "voc07_lowshot", "k": k}
            for method, v in (("byol", 30.0), ("orl", 31.0)) for k in (1, 2, 16) for seed in (0, 1)]
    rows.append({**record(10.0, None, "chance", layer=None), "task": "voc07_lowshot"})
    summary = summarize(rows, load_reference())
    # k in numeric order (as text, 16 would come before 2)
    assert [(r["k"], r["n"]) for r in summary if r["method"] == "byol"] == [(1, 2), (2, 2), (16, 2)]
    out = tmp_path / "lowshot.png"
    assert low_shot_curves(summary, out) == 2 and out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(ValueError, match="no low-shot report rows"):
        low_shot_curves(summarize([record(30.0, 0)], load_reference()), tmp_path / "none.png")


def test_at_a_glance_puts_each_method_at_its_best_layer_beside_chance_random_and_paper():
    records = [record(30.0, 0), record(36.0, 0, layer="res4"), record(32.0, 1, artifact_sha256="t"),  # byol
               record(20.0, 0, "random", epochs=0), record(22.0, 0, "random", recipe="tiny", epochs=0, artifact_sha256="u"),
               record(13.0, None, "chance", layer=None, artifact_sha256=None),
               record(40.0, 0, "supervised"),
               {**record(25.0, 0), "task": "voc07_lowshot", "k": 4},  # chance is the data's, whatever the k
               {**record(11.0, None, "chance", layer=None, artifact_sha256=None), "task": "voc07_lowshot"}]
    lines = at_a_glance(records, load_reference()).set_index(["task", "method"])
    byol = lines.loc[("voc07_svm", "byol")]
    assert (byol["mean"], byol["n"], byol["chance"], byol["random"], byol["paper"]) == (34.0, 2, 13.0, 20.0, 84.5)
    assert lines.loc[("voc07_lowshot", "byol"), "chance"] == 11.0
    ablation = at_a_glance([record(31.0, 0, recipe="default_5e_epochs4", artifact_sha256="v"),
                            record(20.0, 0, "random", epochs=0)], load_reference())
    assert ablation.set_index("method").loc["byol", "random"] == 20.0  # the random init of its scale
    assert ("voc07_svm", "chance") not in lines.index  # a level beside the lines, not a line
    text = glance_markdown(at_a_glance(records, load_reference()))
    block = text.split("voc07_svm · mAP · synth")[1].splitlines()
    assert [line.split("|")[1].strip() for line in block[4:]] == ["random"] * 2 + ["byol", "supervised"]  # floor first
    assert [c.strip() for c in block[6].split("|")[1:-1]] == ["byol", "default", "34.00 ± 2.83", "2", "13.00",
                                                               "+14.00 (4.9 sd)", "84.5"]
    assert [c.strip() for c in block[7].split("|")[1:-1]][5] == "+20.00"  # one seed each: no spread to weigh it by
    assert max(map(len, text.splitlines())) <= 100  # fits a terminal
    plus = glance_markdown(at_a_glance(records + [record(38.0, 0, artifact_sha256="p", setup_hash="c",
                                                           pretrain_data="synth_plus")], load_reference()))
    assert "| byol (COCO+) | default       | 38.00 ± 0.00 |" in plus and "| byol         | default       | 34.00 ± 2.83 |" in plus


def test_report_reads_record_files_and_names_a_missing_one(tmp_path, capsys):
    from orl_bench.cli import main
    append_records(tmp_path, [record(30.0, 0, epochs=8), record(20.0, 0, "random", epochs=0)])
    assert main(["report", "--records", str(records_path(tmp_path)), "--curves", str(tmp_path / "c.png")]) == 0
    assert "30.00 ± 0.00" in capsys.readouterr().out and (tmp_path / "c.png").is_file()
    assert main(["report", "--records", str(records_path(tmp_path)), "--full", "--format", "csv"]) == 0
    assert capsys.readouterr().out.startswith("task,metric,layer,k,method")
    assert main(["report", "--records", str(tmp_path / "nope.jsonl")]) == 2
    assert "no such file" in capsys.readouterr().err
    (tmp_path / "broken.jsonl").write_text('{"task": "voc07_svm"\n')
    assert main(["report", "--records", str(tmp_path / "broken.jsonl")]) == 2
    assert "broken.jsonl is not a JSON-lines record file" in capsys.readouterr().err


def test_an_ablation_recipe_gets_the_paper_number_of_its_settings():
    rows = summarize([record(30.0, 0, recipe="default_5e_epochs4"), record(31.0, 0, "orl", recipe="default_5b_knn20"),
                      record(32.0, 0, recipe="default")], load_reference())
    assert {(r["method"], r["recipe"]): r["paper"] for r in rows} == {
        ("byol", "default_5e_epochs4"): 83.7,  # 4 of the default's 8 epochs: the paper's 400
        ("orl", "default_5b_knn20"): 87.0, ("byol", "default"): 84.5}
