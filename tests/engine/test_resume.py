"""kill -9 during pretraining, run the same command again: it resumes and ends with the same
weights as an uninterrupted run (CPU, deterministic mode), and with the same method state
(target network, MoCo's key queue); also with the views made on the device (train.augment), for
ORL's stage 3 too (its views and RoI patches)."""
import json
import random
import shutil
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
    """The method's trained artifact (not ORL's stage-2 folder, also named orl-*)."""
    return next((workdir / "artifacts").glob(f"{method}-*/config.yaml")).parent


@pytest.mark.parametrize("method,augment", [
    # the loader path's kill -9 resume is orl_bench.testing.check_method's, run for every method
    pytest.param("byol", "loader", marks=pytest.mark.slow), ("byol", "device"),
    pytest.param("mocov2", "loader", marks=pytest.mark.slow),
    # Stage 1, stage 2 and 24 steps of stage 3: minutes on a busy CPU.
    pytest.param("orl", "device", marks=[pytest.mark.slow, pytest.mark.timeout(1800)])])
def test_killed_run_resumes_to_the_uninterrupted_result(workdir, tmp_path, method, augment):
    reference_home = tmp_path / "reference"
    reference_home.mkdir()
    (reference_home / "data").symlink_to(workdir / "data")
    done = subprocess.run(pretrain_cmd(reference_home, method, augment), capture_output=True, text=True, cwd=REPO,
                          timeout=900)
    assert done.returncode == 0, done.stderr
    # ORL's earlier stages are the reference's, so the kill lands in stage 3 and it alone resumes.
    for earlier in (reference_home / "artifacts").iterdir():
        if earlier != artifact(reference_home, method):
            shutil.copytree(earlier, workdir / "artifacts" / earlier.name)

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

    resumed = subprocess.run(pretrain_cmd(workdir, method, augment), capture_output=True, text=True, cwd=REPO, timeout=900)
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
