"""`table --launcher slurm` on the local two-node cluster: the table's missing work as a graph of jobs
(ORL's stages chained, each evaluation after its artifact, the table written by a last job) makes the
cells a local build makes; a second call submits nothing; `orl-bench jobs` lists and cancels them."""
from __future__ import annotations

import json
import re
from pathlib import Path

import pandas as pd
import pytest

from tests.conftest import fresh_home, run_cli
from tests.slurm.test_launcher import cluster_env

def table_args(home: Path, number: str = "1") -> tuple[str, ...]:
    return ("table", number, "--recipe", "tiny", "--workdir", str(home), "--out", str(home / "tables"), "--figures",
            str(home / "figures"))


def ledger(home: Path) -> list[dict]:
    return [json.loads(line) for line in (home / "slurm" / "jobs.jsonl").read_text().splitlines()]


def cells(home: Path) -> pd.DataFrame:
    frame = pd.read_csv(home / "tables" / "table1.csv")
    return frame.set_index(["row", "column"])[["mean", "std", "n", "status"]].sort_index()


@pytest.mark.slow
@pytest.mark.timeout(4800)
def test_table_graph_makes_the_local_builds_cells_and_a_second_call_submits_nothing(slurm_cluster, tmp_path,
                                                                                     tiny_data):
    local, job = fresh_home(tmp_path, "local", tiny_data), fresh_home(tmp_path, "job", tiny_data)
    done = run_cli(*table_args(local), timeout=1800)
    assert done.returncode == 0, done.stderr[-3000:]
    env = cluster_env(slurm_cluster, tmp_path)
    # a time limit a job of this graph cannot reach on a busy 2-core host (4 jobs share its cores)
    Path(env["ORL_BENCH_SLURM_CONFIG"]).write_text(f"partition: {slurm_cluster.partition}\ntime: '2:00:00'\n")
    done = run_cli(*table_args(job), "--launcher", "slurm", "--wait", env=env, timeout=3000)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    pd.testing.assert_frame_equal(cells(job), cells(local))
    entries = ledger(job)
    by_key = {entry["key"]: entry for entry in entries}
    # ORL's stages are jobs of their own, chained: stage 1 (BYOL), its inputs (stage 2), stage 3
    inputs = next(e for key, e in by_key.items() if key.startswith("inputs of orl config"))
    stage3 = by_key[inputs["key"].replace("inputs of", "artifact")]
    assert stage3["after"] == [inputs["job_id"]] and inputs["command"][-1] == "--inputs-only"
    assert all(by_key[k]["after"] for k in by_key if k.startswith("records of orl"))
    assert entries[-1]["command"][:2] == ["table", "1"] and "--no-build" in entries[-1]["command"]
    again = run_cli(*table_args(job), "--launcher", "slurm", env=env, timeout=600)
    assert again.returncode == 0 and "submitted" not in again.stdout, again.stdout[-3000:]
    assert len(ledger(job)) == len(entries)
    listed = run_cli("jobs", "--workdir", str(job), env=env)
    assert listed.returncode == 0 and f"{entries[-1]['job_id']}" in listed.stdout and "logs: " in listed.stdout


@pytest.mark.slow  # ~35 s: a whole table's graph submitted twice (CI runs it: -m slow tests/slurm)
def test_queued_steps_are_not_submitted_again_and_jobs_cancels_them(slurm_cluster, tmp_path, workdir):
    env = cluster_env(slurm_cluster, tmp_path)
    # held: queued but never started, so the graph stays queued while the second call plans; Table 2
    # (one task) is the smallest graph with every kind of step
    first = run_cli(*table_args(workdir, "2"), "--launcher", "slurm", "--slurm", "hold", env=env)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    submitted = re.findall(r"submitted Slurm job (\d+)", first.stdout)
    assert len(submitted) == len(ledger(workdir)) > 10
    second = run_cli(*table_args(workdir, "2"), "--launcher", "slurm", "--slurm", "hold", env=env)
    assert second.returncode == 0, second.stderr[-3000:]
    # every step is already queued: only the table's own last job is new, after the queued ones
    assert re.findall(r"submitted Slurm job (\d+)", second.stdout) == [ledger(workdir)[-1]["job_id"]]
    assert second.stdout.count("already queued: ") == len(submitted) - 1
    listed = run_cli("jobs", "--workdir", str(workdir), env=env)
    assert listed.stdout.count("PENDING") == len(submitted) + 1
    cancelled = run_cli("jobs", "--workdir", str(workdir), "--cancel", env=env)
    assert f"cancelled {len(submitted) + 1} job(s)" in cancelled.stdout, cancelled.stdout + cancelled.stderr
    assert slurm_cluster.run("squeue", "--noheader").stdout == ""


def test_dry_run_lists_the_graph_and_submits_nothing(slurm_cluster, tmp_path, workdir):
    said = run_cli(*table_args(workdir), "--launcher", "slurm", "--dry-run", env=cluster_env(slurm_cluster, tmp_path))
    assert said.returncode == 0, said.stderr[-3000:]
    lines = said.stdout.splitlines()
    assert any(re.fullmatch(r"would submit: records of orl \[tiny\] seed 0 on voc07_svm \(after artifact orl config "
                            r"[0-9a-f]{12}\)", line) for line in lines), lines
    assert not (workdir / "slurm").exists() and slurm_cluster.run("squeue", "--noheader").stdout == ""
