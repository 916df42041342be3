"""Preemption and time limits: Slurm's signal before a job's limit makes training save its state
and the job requeue itself; run again, it resumes, and the backbone is byte-identical to an
uninterrupted run's. So does the same command run again after `scancel` killed the job.

The tiny job trains for seconds, not for the minute of Slurm's shortest time limit: the tests freeze
its process (SIGSTOP) for the wait, which it cannot tell from a slow step. A requeued job waits
Slurm's credential lifetime (2 min) before it may start again; the tests start it at once."""
from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from orl_bench.cli import main
from orl_bench.engine import preemption, trainer
from orl_bench.engine.checkpoint import TRAIN_STATE, load_train_state
from orl_bench.engine.distributed import DistInfo
from tests.conftest import REPO, fresh_home, run_cli
from tests.slurm.test_launcher import cluster_env, manifest

PRETRAIN = ("pretrain", "--method", "byol", "--recipe", "tiny")  # 8 steps, a checkpoint every 2


@pytest.fixture(scope="module")
def uninterrupted_sha(tmp_path_factory, tiny_data) -> str:
    home = fresh_home(tmp_path_factory.mktemp("uninterrupted"), "home", tiny_data)
    done = run_cli(*PRETRAIN, "--workdir", str(home))
    assert done.returncode == 0, done.stderr[-3000:]
    return manifest(home)["backbone_sha256"]


def events(home: Path) -> list[str]:
    log = next((home / "artifacts").glob("byol-*/log.jsonl"))
    return [row["event"] for row in map(json.loads, log.read_text().splitlines()) if "event" in row]


def job_fields(cluster, job_id: str) -> dict[str, str]:
    shown = cluster.run("scontrol", "show", "job", "--oneliner", job_id).stdout
    return dict(re.findall(r"\b(JobState|Reason|Restarts|RunTime)=(\S+)", shown))


def run_seconds(job: dict[str, str]) -> int:
    days, _, clock = job["RunTime"].rpartition("-")
    hours, minutes, seconds = map(int, clock.split(":"))
    return ((int(days or 0) * 24 + hours) * 60 + minutes) * 60 + seconds


def training_started(home: Path) -> bool:
    return any((home / "artifacts").glob(f"byol-*/{TRAIN_STATE}"))


def job_process(home: Path) -> int:
    """The pid of the job's Python process (submitit's runner, not srun, whose arguments name it too)."""
    runner = [b"-u", b"-m", b"submitit.core._submit", str(home / "slurm").encode()]
    for proc in Path("/proc").glob("[0-9]*"):
        with contextlib.suppress(OSError):  # it just ended
            argv = (proc / "cmdline").read_bytes().split(b"\0")[:-1]
            if argv[1:] == runner and b"python" in argv[0].rpartition(b"/")[2]:
                return int(proc.name)
    raise AssertionError(f"no job process runs {' '.join(map(bytes.decode, runner))}")


def alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0] != "Z"
    except OSError:
        return False


def wait_for(ready, what: str, timeout_s: float = 300) -> None:
    deadline = time.monotonic() + timeout_s
    while not ready():
        assert time.monotonic() < deadline, f"no {what} within {timeout_s:g} s"
        time.sleep(0.1)


@pytest.mark.slow  # 40-60 s, most of it Slurm's own timing (CI runs it: -m slow tests/slurm)
def test_cancelled_job_then_the_same_command_resumes_to_the_uninterrupted_backbone(
        slurm_cluster, tmp_path, tiny_data, uninterrupted_sha):
    home, env = fresh_home(tmp_path, "job", tiny_data), cluster_env(slurm_cluster, tmp_path)
    submitted = run_cli(*PRETRAIN, "--workdir", str(home), "--launcher", "slurm", env=env)
    job_id = re.search(r"submitted Slurm job (\d+)", submitted.stdout)[1]
    wait_for(lambda: training_started(home), "train state")
    pid = job_process(home)
    # scancel: SIGTERM (which submitit ignores), SIGKILL 5 s later. Held still meanwhile, the tiny job
    # is killed mid-training as a long one would be.
    os.kill(pid, signal.SIGSTOP)
    slurm_cluster.run("scancel", job_id)
    while alive(pid):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGSTOP)  # again after the SIGCONT that Slurm sends before SIGTERM
        time.sleep(0.01)
    wait_for(lambda: job_fields(slurm_cluster, job_id)["JobState"] == "CANCELLED", "CANCELLED state")
    assert not list((home / "artifacts").glob("byol-*/manifest.json"))

    done = run_cli(*PRETRAIN, "--workdir", str(home), "--launcher", "slurm", "--wait", env=env, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "resume" in events(home)
    assert manifest(home)["backbone_sha256"] == uninterrupted_sha


@pytest.mark.slow  # 40-60 s, most of it Slurm's own timing (CI runs it: -m slow tests/slurm)
def test_job_at_its_time_limit_requeues_itself_and_completes(slurm_cluster, tmp_path, tiny_data,
                                                             uninterrupted_sha):
    home, env = fresh_home(tmp_path, "job", tiny_data), cluster_env(slurm_cluster, tmp_path)
    # USR2 10 s before a 1-minute limit: slurmctld looks every 30 s and sends it up to 30 s early,
    # so 20 to 50 s after the start
    waiting = subprocess.Popen([sys.executable, "-m", "orl_bench.cli", *PRETRAIN, "--workdir", str(home),
                                "--launcher", "slurm", "--wait", "--time", "1", "--slurm", "signal=USR2@10"],
                               cwd=REPO, env={**os.environ, **env}, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True)
    wait_for(lambda: list((home / "slurm").glob("*_submission.sh")), "submitted job")
    job_id = next((home / "slurm").glob("*_submission.sh")).name.split("_")[0]
    # Held still from its first checkpoint on, the job's training outlasts the limit. Slurm's signal
    # comes with a SIGCONT; one 52 s after the start as well, in case the signal came just before the hold.
    held, released, deadline = None, False, time.monotonic() + 540
    while waiting.poll() is None:
        assert time.monotonic() < deadline, "the job did not end within 9 minutes"
        job = job_fields(slurm_cluster, job_id)
        if held is None and job["JobState"] == "RUNNING" and training_started(home) and "preempted" not in events(home):
            held = job_process(home)
            os.kill(held, signal.SIGSTOP)
        elif held and not released and run_seconds(job) >= 52:
            with contextlib.suppress(ProcessLookupError):
                os.kill(held, signal.SIGCONT)
            released = True
        if job["JobState"] == "PENDING" and job["Reason"] == "BeginTime":  # requeued: no 2-min wait
            slurm_cluster.run("scontrol", "update", f"JobId={job_id}", "StartTime=now")
        time.sleep(0.2)
    out, err = waiting.communicate()
    assert waiting.returncode == 0, out[-3000:] + err[-3000:]
    assert f"Slurm job {job_id} COMPLETED (exit status 0)" in out
    assert int(job_fields(slurm_cluster, job_id)["Restarts"]) >= 1
    assert {"preempted", "resume"} <= set(events(home))
    log = (home / "slurm" / f"{job_id}_0_log.err").read_text()
    assert f"Slurm job {job_id} is requeued and resumes when it runs again" in log
    assert manifest(home)["backbone_sha256"] == uninterrupted_sha


# Without Slurm: the trainer's hook, the signal outside training, the ranks' agreement.

@pytest.fixture
def watched(monkeypatch):
    """This process takes SIGUSR2 as a Slurm job does; the module's state and the handler are restored after."""
    for name in ("_watching", "_listening", "_requested"):
        monkeypatch.setattr(preemption, name, False)
    previous = signal.getsignal(signal.SIGUSR2)
    with preemption.watching("USR2"):
        yield
    assert signal.getsignal(signal.SIGUSR2) == signal.SIG_IGN  # a late signal must not kill a finished job
    signal.signal(signal.SIGUSR2, previous)


def test_signal_in_training_saves_that_step_and_the_rerun_resumes_to_the_same_backbone(
        watched, monkeypatch, tmp_path, tiny_data, uninterrupted_sha):
    home = fresh_home(tmp_path, "home", tiny_data)
    steps = iter(range(1, 9))

    def signal_after_step_3(point: str) -> None:
        if point == "train.step" and next(steps) == 3:
            os.kill(os.getpid(), signal.SIGUSR2)

    monkeypatch.setattr(trainer, "fault_point", signal_after_step_3)
    with pytest.raises(preemption.Preempted) as stopped:  # not a user error: the job requeues on it
        main([*PRETRAIN, "--workdir", str(home)])
    assert stopped.value.step == 3
    folder = next((home / "artifacts").glob("byol-*"))
    assert load_train_state(folder / TRAIN_STATE)["step"] == 3 and not (folder / "manifest.json").exists()

    monkeypatch.setattr(preemption, "_requested", False)  # the requeued job's new process
    assert main([*PRETRAIN, "--workdir", str(home)]) == 0
    assert events(home) == ["preempted", "resume"]
    assert manifest(home)["backbone_sha256"] == uninterrupted_sha


def test_signal_outside_training_requeues_at_once_from_rank_0(watched, monkeypatch, tmp_path):
    calls = tmp_path / "scontrol_calls"
    (tmp_path / "scontrol").write_text(f'#!/bin/sh\necho "$@" >> {calls}\n')
    (tmp_path / "scontrol").chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}:{os.environ['PATH']}")
    monkeypatch.setenv("SLURM_JOB_ID", "42")
    one_process = DistInfo(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))

    monkeypatch.setenv("SLURM_PROCID", "1")
    os.kill(os.getpid(), signal.SIGUSR2)
    time.sleep(0.01)
    assert not calls.exists()  # another rank goes on until the job stops; rank 0 requeues it
    assert preemption.requested(one_process)

    monkeypatch.setattr(preemption, "_requested", False)
    monkeypatch.setenv("SLURM_PROCID", "0")
    with pytest.raises(SystemExit, match="outside training .*Slurm job 42 is requeued"):
        os.kill(os.getpid(), signal.SIGUSR2)
        time.sleep(5)
    assert calls.read_text() == "requeue 42\n"

    monkeypatch.setattr(preemption, "_requested", False)
    with pytest.raises(SystemExit, match="after training"):
        with preemption.listening():  # a signal the loop did not look at before it ended
            os.kill(os.getpid(), signal.SIGUSR2)
            time.sleep(0.01)


AGREE = """
import torch.distributed

from orl_bench.engine import preemption
from orl_bench.engine.distributed import init_distributed

info = init_distributed()
preemption._watching = True
answers = []
for signalled_rank in (None, 1):
    preemption._requested = info.rank == signalled_rank
    answers.append(preemption.requested(info))
assert answers == [False, True], (info.rank, answers)
# gloo's threads must be gone before the interpreter exits (else: "terminate called", SIGABRT)
torch.distributed.barrier()
torch.distributed.destroy_process_group()
"""


def test_ranks_agree_to_stop_when_one_of_them_was_signalled(tmp_path):
    script = tmp_path / "agree.py"
    script.write_text(AGREE)
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           str(script)], capture_output=True, text=True, cwd=REPO, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    assert done.returncode == 0, done.stderr[-3000:]
