"""`orl-bench run` end to end on the tiny recipe: the chain, the printed table, reuse, report."""
import json

from orl_bench.results.records import records_path
from tests.conftest import run_cli, run_main


def test_run_prints_the_map_and_a_second_run_reuses_everything(capsys, workdir):
    args = ("run", "--method", "byol", "--task", "voc07_svm", "--recipe", "tiny", "--workdir", str(workdir), "--full")
    first = run_main(capsys, *args)
    rows = [[c.strip() for c in line.split("|")[1:-1]] for line in first.splitlines() if line.startswith("| voc07_svm ")]
    res5 = next(row for row in rows if row[2] == "res5")
    assert res5[4] == "byol" and res5[-1] == "84.5"  # ours, with the paper's BYOL beside
    timings = json.loads(first.split("timings: ")[1].splitlines()[0])
    assert timings["pretrain_reused"] is False and timings["eval_reused"] is False
    n_records = len(records_path(workdir).read_text().splitlines())

    own = workdir / "this_run.jsonl"
    second = run_main(capsys, *args, "--records-out", str(own))
    timings = json.loads(second.split("timings: ")[1].splitlines()[0])
    assert timings["pretrain_reused"] is True and timings["eval_reused"] is True
    assert len(records_path(workdir).read_text().splitlines()) == n_records
    table = lambda out: [line for line in out.splitlines() if line.startswith("|")]
    assert table(first) == table(second)
    # --records-out gets the run's records even when they were already stored: the BYOL row and chance
    stored = [json.loads(line) for line in records_path(workdir).read_text().splitlines()]
    mine = [json.loads(line) for line in own.read_text().splitlines()]
    assert {r["method"] for r in mine} == {"byol", "chance"} and all(r in stored for r in mine)
    assert sum(r["method"] == "byol" for r in mine) == sum(r["method"] == "byol" for r in stored)  # every layer


def test_seeds_give_separate_artifacts_and_the_report_aggregates_them(capsys, workdir):
    for seed in ("0", "1"):
        run_main(capsys, "run", "--method", "random", "--task", "voc07_svm", "--recipe", "tiny", "--seed", seed,
            "--workdir", str(workdir))
    records = [json.loads(line) for line in records_path(workdir).read_text().splitlines()]
    runs = [r for r in records if r["method"] != "chance"]  # the chance record belongs to no backbone
    assert len({r["artifact_sha256"] for r in runs}) == 2 and {r["seed"] for r in runs} == {0, 1}
    for r in records:
        for field in ("task", "metric", "value", "method", "artifact_sha256", "recipe", "dataset", "layer",
                      "protocol", "config_hash", "task_config_hash", "git_revision", "device", "wall_time_s",
                      "timestamp", "seed"):
            assert field in r, field
    report = run_main(capsys, "report", "--workdir", str(workdir)).split("voc07_svm · mAP")[1]
    random = next([c.strip() for c in line.split("|")[1:-1]] for line in report.splitlines() if line.startswith("| random"))
    assert random[1].startswith("tiny") and random[3] == "2" and random[-1] == "9.6"  # two seeds, the paper's number


def test_export_writes_a_torchvision_state_dict(capsys, workdir, tmp_path):
    import torch
    import torchvision
    run_main(capsys, "pretrain", "--method", "random", "--recipe", "tiny", "--workdir", str(workdir))
    artifact = next((workdir / "artifacts").glob("random-*"))
    run_main(capsys, "export", str(artifact), "--out", str(tmp_path / "r18.pth"))
    state = torch.load(tmp_path / "r18.pth", weights_only=True)
    reference = {k: v.shape for k, v in torchvision.models.resnet18(width_per_group=64).state_dict().items()
                 if not k.startswith("fc.")}
    assert set(state) == set(reference)  # torchvision key names (the tiny recipe is 1/8 width)


def test_run_prints_the_glance_and_times_in_100_columns_with_progress_lines_in_a_file(tmp_path, workdir):
    # stdout a pipe, as in a batch job: a line per stage and, every 0 s here, inside training
    args = ("run", "--task", "voc07_svm", "--recipe", "tiny", "--workdir", str(workdir))
    env = {"ORL_BENCH_PROGRESS_S": "0"}
    alone = run_cli(*args, "--method", "byol", env=env)
    assert alone.returncode == 0, alone.stderr[-3000:]
    assert "not stored yet, to read byol against (random):\n" \
           "  orl-bench run --method random --recipe tiny --task voc07_svm" in alone.stdout
    for said in ("pretraining byol-", "training byol: 1/", "evaluating byol on voc07_svm: done in ", "features: "):
        assert said in alone.stdout, said
    assert run_cli(*args, "--method", "random").returncode == 0
    beside = run_cli(*args, "--method", "byol", env=env)
    # but the line naming the record store, as long as the work directory's path
    assert all(len(line) <= 100 for line in beside.stdout.splitlines() if str(workdir) not in line), beside.stdout
    table = [line for line in beside.stdout.splitlines() if line.startswith("|")]
    header, row = ([c.strip() for c in line.split("|")[1:-1]] for line in (table[0], table[2]))
    assert header == ["cell", "byol", "res5", "random", "chance", "paper"], header
    cells = dict(zip(header, row))
    stored = [json.loads(line) for line in records_path(workdir).read_text().splitlines()]
    random_best = max(r["value"] for r in stored if r["method"] == "random")
    assert cells["random"] == f"{random_best:.2f}" and cells["paper"] == "84.5"
    byol_res5 = next(r["value"] for r in stored if r["method"] == "byol" and r["layer"] == "res5")
    assert cells["res5"] == f"{byol_res5:.2f}" and "not stored yet" not in beside.stdout
    assert beside.stdout.count("time: ") == 1 and "pretraining reused · evaluation: stored records" in beside.stdout
