"""How many intra-op threads the training process gives torch on CPU.

torch's default is one thread per core. Beside busy DataLoader workers (the views are made in
them) that oversubscribes the cores, and the model step and the augmentation slow each other
down far more than the lost parallelism costs: on the 2-core development machine, one thread
beside one worker trains BYOL's default recipe at 156 images/s against 91 with torch's default,
and ORL's stage 3 at 78 against 43 (results/perf/cpu_threads.json).
"""
from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

import torch


def cores_per_process() -> int:
    """The cores this process may use (its affinity mask), shared with the other ranks that
    torchrun started on this node."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, cores // max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1"))))


def training_threads(device: torch.device, loader_workers: int, requested: int = 0) -> int:
    """On CPU, `requested` threads if > 0, else the cores left after `loader_workers` (at least
    one). On an accelerator the model step does not run on these threads: torch's current count."""
    if device.type != "cpu":
        return torch.get_num_threads()
    return requested or max(1, cores_per_process() - loader_workers)


@contextlib.contextmanager
def torch_threads(n: int) -> Iterator[int]:
    """torch's intra-op thread count set to `n` inside the block, restored after it."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield n
    finally:
        torch.set_num_threads(before)
