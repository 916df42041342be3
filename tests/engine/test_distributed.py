"""The same pretraining under torchrun with two gloo processes on CPU."""
import json
import subprocess
import sys

import pytest

from tests.conftest import REPO


@pytest.mark.slow
def test_torchrun_two_processes_pretrain(workdir):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "orl_bench.cli", "pretrain", "--method", "byol", "--recipe", "tiny", "--workdir", str(workdir),
           "--set", "train.epochs=1"]
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    manifest = json.loads(next((workdir / "artifacts").glob("byol-*/manifest.json")).read_text())
    assert manifest["world_size"] == 2 and manifest["global_batch"] == 16
