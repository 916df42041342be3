"""kill -9 during pretraining, run the same command again: it resumes and ends with the same
weights as an uninterrupted run (CPU, deterministic mode), and with the same method state
(target network, MoCo's key queue); also with the views made on the device (train.augment)."""
import json
import random
import signal
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file

from orl_bench.engine.checkpoint import TRAIN_STATE, load_train_state
from tests.conftest import REPO

ARGS = ["pretrain", "--recipe", "tiny", "--set", "train.epochs=6",
        "--set", "train.deterministic=true", "--set", "train.checkpoint_every_steps=2"]


def pretrain_cmd(workdir, method, augment):
    return [sys.executable, "-m", "orl_bench.cli", *ARGS, "--method", method, "--workdir", str(workdir),
            "--set", f"train.augment={augment}"]


def artifact(workdir, method):
    return next((workdir / "artifacts").glob(f"{method}-*"))


@pytest.mark.parametrize("method,augment", [("byol", "loader"), ("byol", "device"),
                                            pytest.param("mocov2", "loader", marks=pytest.mark.slow)])
def test_killed_run_resumes_to_the_uninterrupted_result(workdir, tmp_path, method, augment):
    reference_home = tmp_path / "reference"
    reference_home.mkdir()
    (reference_home / "data").symlink_to(workdir / "data")
    done = subprocess.run(pretrain_cmd(reference_home, method, augment), capture_output=True, text=True, cwd=REPO,
                          timeout=300)
    assert done.returncode == 0, done.stderr

    kill_at = random.Random().randint(3, 10)  # of 24 steps (6 epochs x 4): a wide margin under load
    proc = subprocess.Popen(pretrain_cmd(workdir, method, augment), cwd=REPO, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    log = None
    while time.time() < deadline and proc.poll() is None:
        logs = list((workdir / "artifacts").glob(f"{method}-*/log.jsonl"))
        if logs:
            log = logs[0]
            steps = [json.loads(line).get("step", 0) for line in log.read_text().splitlines() if line.strip()]
            if steps and max(steps) >= kill_at:
                proc.send_signal(signal.SIGKILL)
                break
        time.sleep(0.01)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    assert not (artifact(workdir, method) / "manifest.json").exists()

    resumed = subprocess.run(pretrain_cmd(workdir, method, augment), capture_output=True, text=True, cwd=REPO, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    events = [json.loads(line) for line in log.read_text().splitlines()]
    assert any(e.get("event") == "resume" for e in events)
    a = load_file(str(artifact(workdir, method) / "backbone.safetensors"))
    b = load_file(str(artifact(reference_home, method) / "backbone.safetensors"))
    assert a.keys() == b.keys()
    for key in a:
        assert (a[key] == b[key]).all(), f"{key} differs after resume (killed at step {kill_at})"
    # the whole method state: BYOL's target network, MoCo's key encoder, queue and its pointer
    a, b = (load_train_state(artifact(home, method) / TRAIN_STATE)["model"] for home in (workdir, reference_home))
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), f"method state {key} differs after resume (killed at step {kill_at})"
