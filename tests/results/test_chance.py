"""The chance row of VOC-style tasks: its formula by hand, its place in the report, and its
record (one per task and dataset) after a tiny `orl-bench run`."""
import json

import numpy as np
import pytest

from orl_bench import pipeline
from orl_bench.data.sources import voc07
from orl_bench.results.paper import load_reference
from orl_bench.results.records import records_path
from orl_bench.results.report import summarize, to_markdown
from orl_bench.tasks.svm import chance_ap, voc_ap
from tests.conftest import run_main

# 5 images x 3 classes; -1 (difficult only) rows are dropped per class.
LABELS = np.array([[1, 0, 1],
                   [0, -1, -1],
                   [1, 1, -1],
                   [0, 0, 0],
                   [-1, 0, 1]])


def test_chance_ap_by_hand():
    # class 0: rows 0-3 -> 2 of 4; class 1: rows 0, 2-4 -> 1 of 4; class 2: rows 0, 3, 4 -> 2 of 3
    np.testing.assert_allclose(chance_ap(LABELS), [0.5, 0.25, 2 / 3])
    assert 100 * chance_ap(LABELS).mean() == pytest.approx(47.2222, abs=1e-4)  # (0.5 + 0.25 + 2/3) / 3
    with pytest.raises(ValueError, match=r"classes \[1\] have no positive"):
        chance_ap(np.array([[1, 0], [0, -1]]))


def test_chance_is_the_ap_of_random_scores():
    rng = np.random.default_rng(0)
    labels = np.where(rng.random(20000) < 0.1, 1, 0)
    labels[:500] = -1
    assert voc_ap(rng.random(labels.size), labels) == pytest.approx(chance_ap(labels[:, None])[0], abs=0.01)


def record(method, value, layer="res5", seed=0, task="voc07_svm"):
    return {"task": task, "metric": "mAP", "value": value, "method": method, "layer": layer, "seed": seed,
            "recipe": "tiny", "dataset": "synth"}


def test_report_puts_the_chance_row_first_in_its_task_and_counts_no_seed():
    records = [record("byol", 30.0), record("byol", 32.0, seed=1), record("byol", 31.0, layer="res5_gap"),
               record("random", 20.0), record("chance", 12.5, layer=None, seed=None),
               record("byol", 20.0, task="voc07_lowshot"),
               record("chance", 10.0, layer=None, seed=None, task="voc07_lowshot")]
    rows = summarize(records, load_reference())
    assert [(r["task"], r["method"]) for r in rows] == [
        ("voc07_lowshot", "chance"), ("voc07_lowshot", "byol"), ("voc07_svm", "chance"),
        ("voc07_svm", "byol"), ("voc07_svm", "random"), ("voc07_svm", "byol")]  # then by layer (res5_gap)
    chance = rows[2]
    assert chance["n"] == 1 and chance["seeds"] == [] and chance["paper"] is None
    chance_line = next(line for line in to_markdown(rows).splitlines() if "voc07_svm" in line and "chance" in line)
    assert [c.strip() for c in chance_line.split("|")[1:-1]] == [
        "voc07_svm", "mAP", "-", "-", "chance", "tiny", "-", "-", "synth", "-", "12.50 ± 0.00", "1", "-"]


def test_tiny_run_records_the_test_split_chance_once_per_dataset(capsys, workdir):
    base = ("run", "--method", "random", "--task", "voc07_svm", "--recipe", "tiny", "--workdir", str(workdir))
    first = run_main(capsys, *base)
    table = lambda out: [line for line in out.splitlines() if line.startswith("|")]  # noqa: E731
    assert table(run_main(capsys, *base)) == table(first) and "| chance" in first  # reused, chance included
    run_main(capsys, *base, "--seed", "1")  # another backbone on the same dataset
    records = [json.loads(line) for line in records_path(workdir).read_text().splitlines()]
    chance = [r for r in records if r["method"] == "chance"]
    assert len(chance) == 1 and len(records) == 5  # 2 backbones x 2 layers, one chance
    assert chance[0]["artifact_sha256"] is None and chance[0]["seed"] is None and chance[0]["layer"] is None
    assert chance[0]["dataset"] == records[0]["dataset"]

    test = voc07(pipeline.load_task_config("voc07_svm", "tiny", []).data, workdir, "test")[0].labels
    expected = 100 * np.mean([(y[y != -1] == 1).mean() for y in test.T])  # positive rate per class
    assert chance[0]["value"] == pytest.approx(expected, abs=1e-4)

    report = run_main(capsys, "report", "--workdir", str(workdir), "--full")
    lines = [[c.strip() for c in line.split("|")[1:-1]] for line in report.splitlines() if line.startswith("| voc07_svm ")]
    assert lines[0][4] == "chance" and sum(line[4] == "chance" for line in lines) == 1
    assert float(lines[0][10].split(" ± ")[0]) == pytest.approx(expected, abs=0.005)
    glance = run_main(capsys, "report", "--workdir", str(workdir))
    assert all(float(line.split("|")[5]) == pytest.approx(expected, abs=0.005)  # the chance column
               for line in glance.splitlines() if line.startswith("| random"))
