"""kNN monitoring during pretraining (train.monitor_every_epochs): rows in log.jsonl and TensorBoard,
and an artifact identical to one trained without it."""
from __future__ import annotations

import json

import torch

from orl_bench import pipeline
from orl_bench.tasks.knn import knn_monitor
from tests.conftest import content_files, run_main


def test_monitor_logs_knn_every_epoch_without_changing_the_artifact(capsys, tmp_path, tiny_data):
    homes = []
    for name, extra in (("plain", []), ("monitored", ["--set", "train.monitor_every_epochs=1"])):
        home = tmp_path / name
        home.mkdir()
        (home / "data").symlink_to(tiny_data, target_is_directory=True)
        run_main(capsys, "pretrain", "--method", "byol", "--recipe", "tiny", "--set", "train.epochs=2",
                 "--workdir", str(home), *extra)
        homes.append(home)
    plain, monitored = homes
    log = next((monitored / "artifacts").glob("byol-*/log.jsonl"))
    rows = [json.loads(line) for line in log.read_text().splitlines()]
    monitor = [r for r in rows if r.get("group") == "monitor"]
    assert [r["epoch"] for r in monitor] == [1, 2]
    assert all(0 <= r["knn_top1"] <= r["knn_top5"] <= 100 for r in monitor)
    assert list((log.parent / "tensorboard").iterdir())
    # config.yaml spells out the resolved config, the (volatile) monitor setting included; the
    # weights, train state and manifest must be the same bytes.
    trained = lambda home: {f: h for f, h in content_files(home).items() if not f.endswith("config.yaml")}  # noqa: E731
    assert trained(monitored) == trained(plain) and any(f.endswith(".safetensors") for f in trained(plain))


def test_monitor_accepts_the_embedded_coco_plus(workdir):
    data = pipeline.load_pretrain_config("byol", "tiny", ["data.source=synth_plus"]).data
    assert callable(knn_monitor(data, workdir, torch.device("cpu")))  # the scenes' look, not a refusal
