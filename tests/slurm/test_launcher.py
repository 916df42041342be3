"""`--launcher slurm` on the local two-node cluster: a job trains the backbone a local run trains (one
process) and, over two nodes, the one torchrun trains with two processes; bad options submit nothing."""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from orl_bench.engine.checkpoint import read_manifest
from tests.conftest import REPO, fresh_home, run_cli

PRETRAIN = ("pretrain", "--method", "byol", "--recipe", "tiny", "--set", "train.epochs=1")


def cluster_env(slurm_cluster, tmp_path: Path) -> dict[str, str]:
    """The cluster's SLURM_CONF and a config file of our own (a user's own must not change the test)."""
    config = tmp_path / "slurm.yaml"
    config.write_text(f"partition: {slurm_cluster.partition}\ntime: '10'\n")
    return {"SLURM_CONF": str(slurm_cluster.conf), "ORL_BENCH_SLURM_CONFIG": str(config)}


def manifest(home: Path) -> dict:
    return read_manifest(next((home / "artifacts").glob("byol-*/manifest.json")).parent)


def submit_and_wait(home: Path, env: dict[str, str], *extra: str) -> str:
    """Submit PRETRAIN EXTRA with --wait; returns the job id after checking it completed with its logs in place."""
    done = run_cli(*PRETRAIN, *extra, "--workdir", str(home), "--launcher", "slurm", "--wait", env=env, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    job_id = re.search(r"submitted Slurm job (\d+)", done.stdout)[1]
    assert f"Slurm job {job_id} COMPLETED (exit status 0)" in done.stdout
    assert "artifact: " in (home / "slurm" / f"{job_id}_0_log.out").read_text()
    return job_id


def test_job_trains_the_local_runs_backbone(slurm_cluster, tmp_path, tiny_data):
    local, job = fresh_home(tmp_path, "local", tiny_data), fresh_home(tmp_path, "job", tiny_data)
    done = run_cli(*PRETRAIN, "--workdir", str(local))
    assert done.returncode == 0, done.stderr[-3000:]
    submit_and_wait(job, cluster_env(slurm_cluster, tmp_path))
    assert manifest(job)["backbone_sha256"] == manifest(local)["backbone_sha256"]


def test_two_node_job_trains_torchruns_backbone(slurm_cluster, tmp_path, tiny_data):
    torchrun, job = fresh_home(tmp_path, "torchrun", tiny_data), fresh_home(tmp_path, "job", tiny_data)
    # The thread count changes CPU float sums. torchrun's two processes split this host's cores; the
    # cluster's two nodes are this same host, each task seeing all its cores: both runs get one thread.
    one_thread = ("--set", "train.cpu_threads=1")
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           "-m", "orl_bench.cli", *PRETRAIN, *one_thread, "--workdir", str(torchrun)],
                          capture_output=True, text=True, cwd=REPO, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    job_id = submit_and_wait(job, cluster_env(slurm_cluster, tmp_path), *one_thread, "--nodes", "2")
    assert (job / "slurm" / f"{job_id}_1_log.out").is_file()  # the second task's, on the second node
    assert manifest(job)["world_size"] == 2
    assert manifest(job)["backbone_sha256"] == manifest(torchrun)["backbone_sha256"]


@pytest.mark.parametrize("bad, says", [
    (("--nodes", "0"), "--nodes must be at least 1, got 0"),
    (("--partition", "gpu-nowhere"), "unknown Slurm partition 'gpu-nowhere'; this cluster has: debug"),
    (("--method", "no-such-method"), "no-such-method"),  # the command's own preflight, before submitting
])
def test_bad_option_is_one_line_and_submits_nothing(slurm_cluster, tmp_path, workdir, bad, says):
    done = run_cli(*PRETRAIN, "--workdir", str(workdir), "--launcher", "slurm", *bad,
                   env=cluster_env(slurm_cluster, tmp_path))
    assert done.returncode == 2, done.stdout + done.stderr
    assert done.stderr.count("\n") == 1 and done.stderr.startswith("orl-bench: error: ") and says in done.stderr
    assert slurm_cluster.run("squeue", "--noheader").stdout == ""
    assert not (workdir / "slurm").exists()


def test_wait_returns_a_failed_jobs_status(slurm_cluster, tmp_path, workdir):
    # killed (SIGKILL) at its first training step inside the job
    env = {**cluster_env(slurm_cluster, tmp_path), "ORL_BENCH_KILL_AT": "train.step:1"}
    done = run_cli(*PRETRAIN, "--workdir", str(workdir), "--launcher", "slurm", "--wait", env=env, timeout=600)
    job_id = re.search(r"submitted Slurm job (\d+)", done.stdout)[1]
    assert done.returncode == 128 + 9, done.stdout[-3000:] + done.stderr[-3000:]
    assert f"Slurm job {job_id} FAILED (exit status 137)" in done.stdout
