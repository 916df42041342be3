"""A throwaway Slurm cluster on this machine, for tests that submit real jobs.

`LocalSlurm(root, nodes=2)` writes a munge key and a slurm.conf under `root`, then starts its own
munged, one slurmctld and one slurmd per node (several nodes share this host, each on its own
port), all in the foreground as children of this process, and `stop()` ends exactly those. Child
commands (sbatch, srun, submitit) reach it through `env()`, which sets SLURM_CONF.

Plain Python (no pytest) so that a script can start the same cluster by hand to debug a test.
"""
from __future__ import annotations

import ctypes
import getpass
import os
import re
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

DAEMONS = ("munged", "slurmctld", "slurmd")
CLIENTS = ("sbatch", "srun", "sinfo", "squeue", "scancel", "scontrol", "sdiag")
_PR_SET_PDEATHSIG = 1


class SlurmStartError(RuntimeError):
    """The cluster did not come up; the message carries the daemons' log tails."""


def unavailable_reason() -> str | None:
    """Why a LocalSlurm cannot start here, or None when it can."""
    missing = [name for name in (*DAEMONS, *CLIENTS) if shutil.which(name) is None]
    if missing:
        return f"Slurm binaries not on PATH: {', '.join(missing)} (apt-get install slurm-wlm munge)"
    if os.geteuid() != 0:
        return "a local Slurm cluster needs root (slurmd starts jobs as their submitting user)"
    return None


def _free_port() -> int:
    # Ports of our own, so that a system Slurm or a second test session on this machine does not clash.
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _die_with_parent() -> None:
    # A test process killed outright (no teardown) must not leave daemons holding on.
    ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def _tail(path: Path, lines: int = 15) -> str:
    text = path.read_text(errors="replace").splitlines()[-lines:] if path.exists() else ["(no file)"]
    return f"--- {path.name}\n" + "\n".join(text)


class LocalSlurm:
    def __init__(self, root: Path | str, nodes: int = 1, cpus_per_node: int = 2, memory_mb_per_node: int = 2048,
                 partition: str = "debug", start_timeout_s: float = 30.0):
        self.root = Path(root)
        self.node_names = [f"node{i}" for i in range(1, nodes + 1)]
        self.cpus_per_node = cpus_per_node
        self.memory_mb_per_node = memory_mb_per_node
        self.partition = partition
        self.start_timeout_s = start_timeout_s
        self.conf = self.root / "slurm.conf"
        self.logs = self.root / "log"
        self.munge_socket = self.root / "munge" / "munge.socket"
        self._daemons: dict[str, subprocess.Popen] = {}  # by name, in start order

    def env(self) -> dict[str, str]:
        """The environment for child commands that talk to this cluster."""
        return {**os.environ, "SLURM_CONF": str(self.conf)}

    def run(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
        """A Slurm client command against this cluster; a failure raises with its output."""
        done = subprocess.run(args, env=self.env(), capture_output=True, text=True, timeout=timeout)
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(args)} exited {done.returncode}:\n{done.stdout}{done.stderr}")
        return done

    def start(self) -> LocalSlurm:
        for sub in ("munge", "state", "spool", "run", "log"):
            (self.root / sub).mkdir(parents=True, exist_ok=True, mode=0o700)
        for node in self.node_names:
            (self.root / "spool" / node).mkdir(exist_ok=True)
        self._write_munge_key()
        self.conf.write_text(self._slurm_conf())
        deadline = time.monotonic() + self.start_timeout_s
        try:
            self._start_munged(deadline)
            self._spawn("slurmctld", "slurmctld", "-D", "-f", str(self.conf))
            for node in self.node_names:
                self._spawn(f"slurmd-{node}", "slurmd", "-D", "-N", node, "-f", str(self.conf))
            self._wait_for(self._nodes_idle, f"nodes {', '.join(self.node_names)} to be idle in sinfo", deadline)
            # slurmctld starts batch jobs only from its first scheduling cycle on, some 3 s after it starts:
            # a job submitted before then would wait for it, and `sbatch --wait` polls 2 s, then 8 s later.
            self._wait_for(self._scheduler_has_run, "slurmctld's first scheduling cycle", deadline)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Cancel this cluster's jobs, then end the daemons this object started, newest first."""
        controller = self._daemons.get("slurmctld")
        if controller is not None and controller.poll() is None:
            self._cancel_jobs()
        for daemon in reversed(self._daemons.values()):
            if daemon.poll() is None:
                daemon.terminate()
        for daemon in reversed(self._daemons.values()):
            try:
                daemon.wait(timeout=10)
            except subprocess.TimeoutExpired:
                daemon.kill()
                daemon.wait()
        self._daemons.clear()

    def __enter__(self) -> LocalSlurm:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def _write_munge_key(self) -> None:
        key = self.root / "munge" / "munge.key"
        if not key.exists():  # munged refuses a key that others can read
            fd = os.open(key, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as f:
                f.write(os.urandom(128))

    def _slurm_conf(self) -> str:
        node_lines = "\n".join(
            f"NodeName={node} NodeHostname=localhost NodeAddr=127.0.0.1 Port={_free_port()} "
            f"CPUs={self.cpus_per_node} RealMemory={self.memory_mb_per_node} State=UNKNOWN"
            for node in self.node_names)
        return f"""\
ClusterName=orlbench
SlurmctldHost=localhost
SlurmctldPort={_free_port()}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={self.munge_socket}
StateSaveLocation={self.root}/state
SlurmdSpoolDir={self.root}/spool/%n
SlurmctldPidFile={self.root}/run/slurmctld.pid
SlurmdPidFile={self.root}/run/slurmd-%n.pid
SlurmctldLogFile={self.logs}/slurmctld.log
SlurmdLogFile={self.logs}/slurmd-%n.log
# No cgroups: works in containers and on hosts whose cgroup tree Slurm may not touch.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SwitchType=switch/none
MpiDefault=none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SchedulerType=sched/builtin
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU_Memory
# Without a default, a job without --mem takes a whole node's memory and jobs queue behind it.
DefMemPerCPU={self.memory_mb_per_node // self.cpus_per_node}
# The nodes are declared, not probed: any CPU count and memory on any machine.
SlurmdParameters=config_overrides
ReturnToService=2
JobRequeue=1
# Cancelled and timed-out jobs get SIGKILL 5 s after SIGTERM (not 30), so tests end quickly.
KillWait=5
MailProg=/bin/true
# Start batch jobs at once, not up to 3 s later (a throughput setting for big clusters).
SchedulerParameters=batch_sched_delay=0
{node_lines}
PartitionName={self.partition} Nodes=ALL Default=YES MaxTime=INFINITE State=UP
"""

    def _spawn(self, name: str, *cmd: str) -> None:
        # NAME.out keeps what a daemon prints before its own log opens (a bad slurm.conf, say).
        with open(self.logs / f"{name}.out", "wb") as out:
            self._daemons[name] = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=self.env(),
                                                   preexec_fn=_die_with_parent)

    def _start_munged(self, deadline: float) -> None:
        munge = self.root / "munge"
        # A private munged (own socket, key, seed) so a system munged, if any, is neither used nor disturbed.
        # --force: munged otherwise wants every folder above its socket searchable by all users, which a
        # private temp folder (pytest's are 0700) is not; only root's jobs use this socket.
        self._spawn("munged", "munged", "--foreground", "--force", f"--socket={self.munge_socket}",
                    f"--key-file={munge}/munge.key", f"--seed-file={munge}/munged.seed",
                    f"--pid-file={munge}/munged.pid", f"--log-file={self.logs}/munged.log")
        self._wait_for(self.munge_socket.exists, "munged to open its socket", deadline)

    def _nodes_idle(self) -> bool:
        listed = subprocess.run(["sinfo", "--noheader", "--Node", "--format=%N %t"], env=self.env(),
                                capture_output=True, text=True, timeout=10)
        if listed.returncode != 0:  # slurmctld not listening yet
            return False
        states = dict(line.split(maxsplit=1) for line in listed.stdout.splitlines())
        return all(states.get(node) == "idle" for node in self.node_names)

    def _scheduler_has_run(self) -> bool:
        stats = subprocess.run(["sdiag"], env=self.env(), capture_output=True, text=True, timeout=10).stdout
        cycles = re.search(r"Main schedule statistics.*?Total cycles:\s*(\d+)", stats, re.S)
        return cycles is not None and int(cycles[1]) > 0

    def _wait_for(self, ready: Callable[[], bool], what: str, deadline: float) -> None:
        while not ready():
            exited = [name for name, daemon in self._daemons.items() if daemon.poll() is not None]
            if exited or time.monotonic() > deadline:
                reason = f"exited: {', '.join(exited)}" if exited else f"not within {self.start_timeout_s:g} s"
                raise SlurmStartError(f"waiting for {what}: {reason}\n{self._log_tails()}")
            time.sleep(0.2)

    def _cancel_jobs(self) -> None:
        # Jobs left running would keep their slurmstepd processes alive after the daemons end.
        subprocess.run(["scancel", f"--user={getpass.getuser()}"], env=self.env(), capture_output=True, timeout=10)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            queued = subprocess.run(["squeue", "--noheader", "--format=%i"], env=self.env(), capture_output=True,
                                    text=True, timeout=10)
            if queued.returncode != 0 or not queued.stdout.strip():
                return
            time.sleep(0.2)

    def _log_tails(self) -> str:
        return "\n".join(_tail(path) for path in sorted(self.logs.iterdir()))
