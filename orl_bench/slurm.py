"""`--launcher slurm`: submit an orl-bench command to Slurm through submitit.

The job re-runs the same command (its arguments less the launcher options) in every task of the
allocation, one task per GPU on each node (one per node on CPU), with torch.distributed's
environment taken from Slurm's before the engine reads it, so the engine runs as under torchrun.
Option defaults come from a YAML file ($ORL_BENCH_SLURM_CONFIG, else ~/.config/orl-bench/slurm.yaml)
with the options' names as keys (`slurm:` a mapping of extra sbatch options); the command line wins.
"""
from __future__ import annotations

import argparse
import getpass
import json
import os
import re
import shlex
import shutil
import subprocess
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING

import submitit
import yaml

from orl_bench.config import ConfigError
from orl_bench.io import append_jsonl

if TYPE_CHECKING:  # a job imports this module before Slurm's signal is watched: nothing slow (torch) here
    from orl_bench.plan import Step

CONFIG_ENV = "ORL_BENCH_SLURM_CONFIG"
DEFAULT_CONFIG = Path("~/.config/orl-bench/slurm.yaml")

# The allocation's options: name -> (type, help). Their argparse default is None (= not given), so
# the config file's value applies unless the command line gives one.
RESOURCES: dict[str, tuple[type, str]] = {
    "partition": (str, "Slurm partition (default: the cluster's default partition)"),
    "nodes": (int, "nodes of the job (default 1)"),
    "gpus_per_node": (int, "GPUs per node, one process each (default 0: one CPU process per node)"),
    "cpus_per_task": (int, "CPU cores per process"),
    "mem": (str, "memory per node, e.g. 64G"),
    "time": (str, "time limit, e.g. 2:00:00 or 1-00:00:00 (default: the partition's)"),
    "account": (str, "account charged for the job"),
    "qos": (str, "quality of service"),
    "constraint": (str, "node features required, e.g. a100"),
}
AT_LEAST = {"nodes": 1, "gpus_per_node": 0, "cpus_per_task": 1}
# Every launcher option by its argparse dest: what the job's command line must not carry.
LAUNCHER_OPTIONS = {"launcher": "--launcher", "wait": "--wait", "slurm_extra": "--slurm",
                    **{name: f"--{name.replace('_', '-')}" for name in RESOURCES}}
FLAG_OPTIONS = {"--wait"}
VALUE_OPTIONS = set(LAUNCHER_OPTIONS.values()) - FLAG_OPTIONS

# Job states after which a job no longer runs (squeue/scontrol's names).
FINISHED_STATES = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "PREEMPTED", "OUT_OF_MEMORY",
                   "BOOT_FAIL", "DEADLINE"}
POLL_S = 2.0


def _last_line(text: str) -> str:
    """A Slurm command's error in one line: its last, which says why (the ones before say where)."""
    return (text.strip().splitlines() or ["(no message)"])[-1]


class SlurmError(RuntimeError):
    """Slurm refused or lost a job (sbatch failed, scontrol no longer knows it)."""


def add_launcher_args(p: argparse.ArgumentParser) -> None:
    group = p.add_argument_group("launcher", "where the command runs: here (under torchrun for several GPUs) or "
                                 f"as a Slurm job; defaults from ${CONFIG_ENV} or {DEFAULT_CONFIG}")
    group.add_argument("--launcher", choices=("local", "slurm"), default="local",
                       help="slurm: submit this same command as a Slurm job, print its id and log paths and return")
    for name, (kind, text) in RESOURCES.items():
        group.add_argument(LAUNCHER_OPTIONS[name], dest=name, type=kind, help=text)
    group.add_argument("--slurm", dest="slurm_extra", action="append", default=[], metavar="KEY[=VALUE]",
                       help="any other sbatch option, e.g. --slurm exclude=node7, or a flag: --slurm exclusive "
                       "(repeatable)")
    group.add_argument("--wait", action="store_true", help="block until the job ends; exit with its exit status")


def job_argv(argv: list[str]) -> list[str]:
    """`argv` less the launcher options, as given in full (`--nodes 2` or `--nodes=2`)."""
    out, skip_value = [], False
    for arg in argv:
        name = arg.partition("=")[0]
        if skip_value:
            skip_value = False
        elif arg in FLAG_OPTIONS or name in VALUE_OPTIONS:
            skip_value = arg in VALUE_OPTIONS  # `--nodes 2`, not `--nodes=2`
        else:
            out.append(arg)
    return out


def read_config(path: Path) -> dict:
    try:
        values = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"Slurm config {path} is not valid YAML: {e}") from e
    unknown = set(values) - {*RESOURCES, "slurm"} if isinstance(values, dict) else None
    if unknown is None or unknown:
        raise ConfigError(f"Slurm config {path}: expected a mapping with keys among {', '.join([*RESOURCES, 'slurm'])}"
                          + (f"; unknown: {', '.join(sorted(unknown))}" if unknown else ""))
    if not isinstance(values.get("time", ""), str):  # YAML reads 2:00:00 as 7200 (seconds); Slurm, minutes
        raise ConfigError(f"Slurm config {path}: quote the time limit, e.g. time: '2:00:00'")
    if not isinstance(values.get("slurm", {}), dict):
        raise ConfigError(f"Slurm config {path}: `slurm` is a mapping of sbatch options, e.g. {{exclusive: true}}")
    return values


def resolve(args: argparse.Namespace, environ: Mapping[str, str] = os.environ) -> tuple[dict, dict]:
    """(resources, extra sbatch options): the config file's, then the command line's, checked."""
    path = Path(environ.get(CONFIG_ENV) or DEFAULT_CONFIG).expanduser()
    if environ.get(CONFIG_ENV) and not path.is_file():
        raise ConfigError(f"${CONFIG_ENV} names {path}, which is not a file")
    config = read_config(path) if path.is_file() else {}
    extra = dict(config.pop("slurm", {}))
    for item in args.slurm_extra:
        key, sep, value = item.partition("=")
        if not key or (sep and not value):
            raise ConfigError(f"--slurm takes KEY=VALUE, or KEY for a flag (an sbatch option without its dashes), "
                              f"got '{item}'")
        extra[key] = value if sep else True  # submitit writes True as the bare flag
    resources = {}
    for name, (kind, _) in RESOURCES.items():
        value = getattr(args, name) if getattr(args, name) is not None else config.get(name)
        if value is None:
            continue
        try:
            resources[name] = kind(value)
        except ValueError:
            raise ConfigError(f"{name} in {path} takes {kind.__name__}, got '{value}'") from None
        if name in AT_LEAST and resources[name] < AT_LEAST[name]:
            raise ConfigError(f"{LAUNCHER_OPTIONS[name]} must be at least {AT_LEAST[name]}, got {resources[name]}")
    return resources, extra


def check_cluster(resources: dict) -> None:
    if shutil.which("sbatch") is None:
        raise ConfigError("--launcher slurm needs Slurm's commands (sbatch, sinfo, scontrol) on PATH; sbatch is not")
    partition = resources.get("partition")
    if partition:
        listed = subprocess.run(["sinfo", "-h", "-o", "%P"], capture_output=True, text=True, timeout=60)
        if listed.returncode != 0:
            raise SlurmError(f"sinfo failed: {_last_line(listed.stderr)}")
        known = [name.rstrip("*") for name in listed.stdout.split()]  # the default partition is starred
        if partition not in known:
            raise ConfigError(f"unknown Slurm partition '{partition}'; this cluster has: {', '.join(known)}")


def torch_distributed_env(slurm_env: Mapping[str, str]) -> dict[str, str]:
    """torchrun's variables for this Slurm task. The master is where the job step was launched from,
    the job's first node, which runs task 0; by address, as node names need not resolve. The port is
    derived from the job id, so every task of the job agrees on it without talking."""
    return {"MASTER_ADDR": slurm_env["SLURM_LAUNCH_NODE_IPADDR"],
            "MASTER_PORT": str(20000 + int(slurm_env["SLURM_JOB_ID"]) % 20000),
            "WORLD_SIZE": slurm_env["SLURM_NTASKS"], "RANK": slurm_env["SLURM_PROCID"],
            "LOCAL_RANK": slurm_env["SLURM_LOCALID"]}


def run_in_allocation(argv: list[str]) -> None:
    """The job's function, in every task: the command, as torchrun would have started it. Slurm's
    signal before the time limit (or `scancel --signal=USR2`) stops it: training saves its state
    and the job requeues itself, to resume from there (engine/preemption.py)."""
    os.environ.update(torch_distributed_env(os.environ))
    from orl_bench.engine import preemption
    # the signal submitit has sbatch send (--signal=USR2@90), watched before the CLI's slow imports;
    # replaces submitit's own handler, which would requeue without saving
    with preemption.watching(submitit.JobEnvironment.USR_SIG):
        from orl_bench.cli import main  # here: the CLI imports this module
        try:
            code = main(argv)
        except preemption.Preempted as stop:
            preemption.requeue_and_exit(str(stop), all_ranks=True)
    if code:
        raise SystemExit(code)  # the task's exit status, so Slurm's state says the job failed


def job_command(argv: list[str], parse: Callable[[list[str]], argparse.Namespace]) -> list[str]:
    """The command a job runs: `argv` less the launcher options, refused where one of them was given
    abbreviated (argparse takes `--part`; the job must not see it, nor submit itself again)."""
    command = job_argv(argv)
    rest = parse(command)
    given = [option for dest, option in LAUNCHER_OPTIONS.items()
             if getattr(rest, dest) not in (None, "local", False, [])]
    if given:
        raise ConfigError(f"spell the launcher options in full with --launcher slurm: {', '.join(given)} given "
                          "abbreviated")
    return command


def submit(args: argparse.Namespace, command: list[str], workdir: Path) -> int:
    """Submit `orl-bench COMMAND` (`job_command`) as a Slurm job; print its id and logs."""
    resources, extra = resolve(args)
    check_cluster(resources)
    job = _submit_one(workdir, command, resources, extra, f"orl-bench {shlex.join(command)}", [])
    print(f"submitted Slurm job {job.job_id}: orl-bench {shlex.join(command)}\n"
          f"logs: {job.paths.stdout} and {job.paths.stderr} (one pair per task: {job.job_id}_<task>_log.*)")
    return wait_for_job(job.job_id) if args.wait else 0


def job_state(job_id: str) -> tuple[str, int]:
    """(state, exit status) from scontrol (sacct needs accounting, which clusters may turn off)."""
    shown = subprocess.run(["scontrol", "show", "job", "--oneliner", job_id], capture_output=True, text=True,
                           timeout=60)
    state = re.search(r"\bJobState=(\S+)", shown.stdout)
    code = re.search(r"\bExitCode=(\d+):(\d+)", shown.stdout)
    if shown.returncode != 0 or not (state and code):
        raise SlurmError(f"scontrol no longer knows job {job_id}: {shown.stderr.strip() or shown.stdout.strip()}")
    status, signal = int(code[1]), int(code[2])
    return state[1], status or (128 + signal if signal else 0)


def wait_for_job(job_id: str) -> int:
    while (state := job_state(job_id))[0] not in FINISHED_STATES:
        time.sleep(POLL_S)
    name, status = state
    print(f"Slurm job {job_id} {name} (exit status {status})")
    return status or (0 if name == "COMPLETED" else 1)


# --- a plan's steps as a graph of jobs (`table --launcher slurm`) and the work directory's ledger ---

LEDGER = "jobs.jsonl"  # under <workdir>/slurm/: one line per submitted job, what `orl-bench jobs` reads


def ledger_path(workdir: Path) -> Path:
    return Path(workdir) / "slurm" / LEDGER


def read_ledger(workdir: Path) -> list[dict]:
    path = ledger_path(workdir)
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


def queued_jobs() -> dict[str, str]:
    """Job id -> state of this user's jobs that Slurm still holds (pending, running, requeued)."""
    if shutil.which("squeue") is None:
        raise ConfigError("Slurm's commands (squeue, scancel, scontrol) are not on PATH: run this where the jobs "
                          "were submitted, on a Slurm login node")
    listed = subprocess.run(["squeue", "-h", "-u", getpass.getuser(), "-o", "%i|%T"], capture_output=True, text=True,
                            timeout=60)
    if listed.returncode != 0:
        raise SlurmError(f"squeue failed: {_last_line(listed.stderr)}")
    return dict(line.split("|", 1) for line in listed.stdout.split())


def _submit_one(workdir: Path, command: list[str], resources: dict, extra: dict, key: str,
                after: list[str]) -> submitit.Job:
    """Submit `orl-bench COMMAND` after the jobs `after`, and note it in the ledger as making `key`."""
    from orl_bench.provenance import now_iso  # imports torch: not at the top, which a job imports first
    resources = dict(resources)
    gpus = resources.pop("gpus_per_node", 0)
    executor = submitit.SlurmExecutor(folder=workdir.absolute() / "slurm")
    # time=None: the partition's limit rather than submitit's 5 minutes. requeue: the job requeues
    # itself when signalled (run_in_allocation), which clusters may refuse by default (JobRequeue=0).
    # A job whose dependency failed is cancelled (kill-on-invalid-dep), not left pending forever.
    dependency = {"dependency": "afterok:" + ":".join(after), "kill-on-invalid-dep": "yes"} if after else {}
    executor.update_parameters(**{"nodes": 1, "time": None, **resources}, ntasks_per_node=gpus or 1,
                               gpus_per_node=gpus or None, job_name=f"orl-bench-{command[0]}",
                               additional_parameters={"requeue": True, **extra, **dependency})
    try:
        job = executor.submit(run_in_allocation, command)
    except submitit.core.utils.FailedJobError as e:
        raise SlurmError(f"sbatch refused the job: {e}") from None
    append_jsonl(ledger_path(workdir), [{"job_id": job.job_id, "key": key, "command": command, "after": after,
                                         "submitted": now_iso(), "stdout": str(job.paths.stdout),
                                         "stderr": str(job.paths.stderr)}])
    return job


def one_process(resources: dict) -> dict:
    """A single-process step's share of the allocation: one task on one node, one GPU if there are any."""
    return {**resources, "nodes": 1, "gpus_per_node": min(resources.get("gpus_per_node", 0), 1)}


def submit_steps(args: argparse.Namespace, workdir: Path, steps: list[Step], last: list[str]) -> int:
    """Submit each step as a job, after (`afterok`) the jobs of the steps it waits for, then `orl-bench
    LAST` after all of them. A step whose job Slurm still holds (submitted from this work directory,
    pending or running) is not submitted again: its job is waited for instead."""
    resources, extra = resolve(args)
    check_cluster(resources)
    queued = queued_jobs()
    holding = {entry["key"]: entry["job_id"] for entry in read_ledger(workdir) if entry["job_id"] in queued}
    job_of: dict[str, str] = {}
    for step in steps:
        if step.key in holding:
            job_of[step.key] = holding[step.key]
            print(f"already queued: Slurm job {holding[step.key]} ({queued[holding[step.key]]}): {step.key}")
            continue
        job = _submit_one(workdir, list(step.argv), resources if step.whole_allocation else one_process(resources),
                          extra, step.key, [job_of[k] for k in step.after if k in job_of])
        job_of[step.key] = job.job_id
        print(f"submitted Slurm job {job.job_id}: {step.key}")
    if not job_of:
        return 0
    final = _submit_one(workdir, last, one_process({k: v for k, v in resources.items() if k != "gpus_per_node"}),
                        extra, "orl-bench " + " ".join(last[:2]), sorted(set(job_of.values()), key=int))
    print(f"submitted Slurm job {final.job_id}: orl-bench {shlex.join(last)} (after the {len(job_of)} above)\n"
          f"logs: {final.paths.stdout.parent}/<job id>_<task>_log.{{out,err}}; watch with: orl-bench jobs "
          f"--workdir {workdir}")
    return wait_for_job(final.job_id) if args.wait else 0


def job_states(entries: list[dict]) -> dict[str, str]:
    """Job id -> Slurm's state for each ledger entry: squeue's while it holds the job, scontrol's for a
    while after it ended (MinJobAge), then `ENDED` (Slurm no longer knows it; its log says how)."""
    queued, states = queued_jobs(), {}
    for entry in entries:
        job_id = entry["job_id"]
        if job_id in queued:
            states[job_id] = queued[job_id]
        else:
            try:
                states[job_id] = job_state(job_id)[0]
            except SlurmError:
                states[job_id] = "ENDED"
    return states


def cancel(entries: list[dict]) -> list[str]:
    """scancel the ledger's jobs that Slurm still holds; their ids."""
    queued = queued_jobs()
    ids = [entry["job_id"] for entry in entries if entry["job_id"] in queued]
    if ids:
        done = subprocess.run(["scancel", *ids], capture_output=True, text=True, timeout=60)
        if done.returncode != 0:
            raise SlurmError(f"scancel failed: {_last_line(done.stderr)}")
    return ids
