"""Named points where a test can kill the process as `kill -9` would, to prove resumes exact.

`ORL_BENCH_KILL_AT=<point>:<n>` makes the n-th pass through `fault_point("<point>")` in this
process send itself SIGKILL: no cleanup, no atexit, no flush, exactly what a crash, an OOM kill
or a pre-empted node does. Points sit just after a unit of work is safely on disk (a training
step, a stage-2 step, one image's proposals or RoI embeddings, one feature layer, one SVM
class), so a kill there leaves the state a real interruption would. Unset, a point costs one
cached lookup. Points: see POINTS.
"""
from __future__ import annotations

import functools
import os
import signal

ENV = "ORL_BENCH_KILL_AT"
POINTS = ("train.step",  # after an optimiser step (and its checkpoint, if one was due)
          "stage2.step",  # after each stage-2 step's file is written (embeddings, knn, boxes, pairs)
          "stage2.proposals",  # after one image's selective-search boxes are stored
          "stage2.roi",  # after one image's RoI embeddings are stored
          "features.layer",  # after one layer's features are cached
          "svm.class",  # after one class's SVM is trained, before the records are stored
          "eval.epoch",  # after an evaluation's training epoch is checkpointed (linear, semi-supervised)
          "detection.checkpoint")  # after a Mask R-CNN fine-tuning checkpoint is written


@functools.cache
def _target() -> tuple[str, int] | None:
    spec = os.environ.get(ENV)
    if not spec:
        return None
    point, _, n = spec.partition(":")
    if point not in POINTS or not n.isdigit() or int(n) < 1:
        raise ValueError(f"{ENV}={spec!r}: expected <point>:<n> with n >= 1 and point one of {', '.join(POINTS)}")
    return point, int(n)


_passes: dict[str, int] = {}


def kill_at(point: str, n: int) -> None:
    """Arm this process as `ORL_BENCH_KILL_AT=<point>:<n>` would, after it started (a forked child
    of a process that read the variable unset: orl_bench.testing's kill -9 check)."""
    os.environ[ENV] = f"{point}:{n}"
    _target.cache_clear()
    _target()  # a bad point or count fails here, not at the first pass
    _passes.pop(point, None)


def fault_point(point: str) -> None:
    target = _target()
    if target is None or target[0] != point:
        return
    _passes[point] = _passes.get(point, 0) + 1
    if _passes[point] == target[1]:
        os.kill(os.getpid(), signal.SIGKILL)
