"""Stop cleanly when Slurm asks a job to: before its time limit (`--signal`) or on preemption.

In a Slurm job, `watching(name)` turns that signal into a request. A training loop run inside
`listening()` asks `requested(info)` at each step boundary; the ranks agree on the answer, so
they all stop after the same step, where the loop saves its train state and raises `Preempted`;
the job then requeues itself (`requeue_and_exit`) and, run again, the same command resumes from
that state. A signal that comes while no loop listens (stage 2, an evaluation, data generation:
work that is on disk as it goes, safe to kill) requeues the job at once. Outside Slurm nothing is
watched and `requested` costs nothing.
"""
from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from collections.abc import Iterator
from typing import TYPE_CHECKING, NoReturn

if TYPE_CHECKING:
    from orl_bench.engine.distributed import DistInfo

# torch is imported where it is used: a job imports this module, to watch for the signal, before
# the seconds that importing torch takes

_watching = False
_listening = False
_requested = False


class Preempted(Exception):
    """The training loop saved its train state after `step` and stopped, as the job was asked to."""

    def __init__(self, step: int):
        super().__init__(f"preempted after step {step}, its train state saved")
        self.step = step


@contextlib.contextmanager
def watching(name: str) -> Iterator[None]:
    """Take the signal `name` (as sbatch spells it: USR2) as a stop request inside the block. After
    it, with the work done or stopped, the signal is ignored: at exit Python would restore its
    default action, which kills, and a job that ends as the signal comes would fail."""
    global _watching
    signum = signal.Signals[f"SIG{name}"]
    signal.signal(signum, _on_signal)
    _watching = True
    try:
        yield
    finally:
        signal.signal(signum, signal.SIG_IGN)
        _watching = False


@contextlib.contextmanager
def listening() -> Iterator[None]:
    """Mark a loop that calls `requested` at each step boundary, so a signal waits for it."""
    global _listening
    outer, _listening = _listening, True
    try:
        yield
    finally:
        _listening = outer
    if _requested and not outer:  # came after the loop's last look: nothing listens any more
        _stop_outside_training("after training")


def requested(info: DistInfo) -> bool:
    """Whether to stop after this step: on every rank alike, as all must checkpoint together."""
    if not _watching:
        return False
    if not info.distributed:
        return _requested
    import torch
    import torch.distributed as dist
    flag = torch.tensor([int(_requested)], device=info.device)
    dist.all_reduce(flag, op=dist.ReduceOp.MAX)
    return bool(flag.item())


def _on_signal(signum: int, frame: object) -> None:
    global _requested
    if _requested:  # a second signal (a preemption after the time-limit warning) asks nothing new
        return
    _requested = True
    if not _listening:
        _stop_outside_training(f"outside training ({signal.Signals(signum).name})")


def _stop_outside_training(when: str) -> None:
    # Outside a training loop the work on disk is what a kill would leave: requeue now. Only rank 0
    # requeues and exits; the others go on until Slurm stops the job for its requeue, rather than
    # end a collective that rank 0 may still be in.
    if os.environ.get("SLURM_PROCID", "0") == "0":
        requeue_and_exit(f"stopped by Slurm's signal {when}")


def requeue_and_exit(why: str, all_ranks: bool = False) -> NoReturn:
    """Rank 0 requeues this Slurm job (`scontrol requeue`), then the process exits. With `all_ranks`
    (every rank calls this together) the others wait for the requeue before they exit: a cluster
    that ends a job at a task's failure (KillOnBadExit) must not end it before it is requeued."""
    job, rank_0 = os.environ["SLURM_JOB_ID"], os.environ.get("SLURM_PROCID", "0") == "0"
    failed = None
    if rank_0:
        done = subprocess.run(["scontrol", "requeue", job], capture_output=True, text=True, timeout=60)
        failed = done.returncode and (done.stderr.strip() or f"exit status {done.returncode}")
    if all_ranks:
        import torch.distributed as dist
        if dist.is_initialized():
            dist.barrier()
    if failed:
        raise SystemExit(f"orl-bench: error: {why}, but `scontrol requeue {job}` failed ({failed}); run the same "
                         "command again to resume")
    raise SystemExit(f"orl-bench: {why}; " + (f"Slurm job {job} is requeued and resumes when it runs again" if rank_0
                                               else f"rank 0 requeues Slurm job {job}"))
