"""The throughput benchmarks run on both view paths and report each figure they promise, so a lent
GPU's short lease is not spent on a broken script."""
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "perf" / "pretrain_throughput.py"


def load_script():
    spec = importlib.util.spec_from_file_location("pretrain_throughput", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("augment", ["loader", "device"])
def test_throughput_reports_every_figure_of_its_view_path(workdir, augment):
    result = load_script().measure("byol", "tiny", [f"train.augment={augment}", "train.num_workers=0"],
                                   steps=1, warmup=0, workdir=str(workdir))
    figures = result["images_per_s"]
    expected = {"data_only", "model_only", "end_to_end"} | ({"device_views_only"} if augment == "device" else set())
    assert set(figures) == expected
    assert all(v > 0 for v in figures.values())
    assert result["augment"] == augment
    assert ("peak_gpu_memory_gib" in result) == torch.cuda.is_available()


def test_peer_comparison_writes_both_sides_with_their_ratio(workdir, tmp_path):
    out = tmp_path / "peer.json"
    done = subprocess.run([sys.executable, str(SCRIPT.parent / "peer_lightly.py"), "--recipe", "tiny", "--methods", "byol",
                           "--set", "train.num_workers=0", "--steps", "1", "--warmup", "0",
                           "--workdir", str(workdir), "--out", str(out)], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    byol = json.loads(out.read_text())["images_per_s"]["byol"]
    ours, theirs = byol["orl_bench_augment_loader"]["end_to_end"], byol["lightly"]["end_to_end"]
    assert ours > 0 and theirs > 0
    assert byol["orl_bench_loader_over_lightly"] == pytest.approx(ours / theirs, rel=1e-2)
    assert "orl_bench_augment_device" in byol
    # lightly at orl-bench's thread count says how much of a CPU gap is the thread policy; not run on a GPU
    assert ("lightly_with_orl_bench_threads" in byol) != torch.cuda.is_available()
