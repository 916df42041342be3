"""Progress where stdout is not a terminal (a batch job, CI, `| tee`): a line when a stage starts and
ends, and every ORL_BENCH_PROGRESS_S seconds (default 30) inside a long one, with the work done, the
rate and the time left. A terminal gets tqdm's bars (training) instead and none of these lines.
Rank 0 only: the callers pass `enabled`.
"""
from __future__ import annotations

import contextlib
import os
import sys
import time
from collections.abc import Iterator

EVERY_ENV = "ORL_BENCH_PROGRESS_S"


def to_file() -> bool:
    return not sys.stdout.isatty()


def duration(seconds: float) -> str:
    minutes, rest = divmod(round(seconds), 60)
    return f"{rest} s" if not minutes else f"{minutes} min {rest:02d} s"


def say(line: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {line}", flush=True)


@contextlib.contextmanager
def stage(name: str, enabled: bool = True) -> Iterator[None]:
    """'<name>: started' and '<name>: done in ...' lines around a stage."""
    if not (enabled and to_file()):
        yield
        return
    t0 = time.perf_counter()
    say(f"{name}: started")
    yield
    say(f"{name}: done in {duration(time.perf_counter() - t0)}")


class Meter:
    """Counts units of a long stage and says, at most every N seconds, how far it is."""

    def __init__(self, what: str, total: int, unit: str, initial: int = 0, enabled: bool = True):
        self.what, self.total, self.unit, self.done = what, total, unit, initial
        self.enabled = enabled and to_file() and total > initial
        self.every = float(os.environ.get(EVERY_ENV, "30"))
        self._start, self._initial = time.perf_counter(), initial
        self._last = self._start

    def update(self, n: int = 1) -> None:
        self.done += n
        now = time.perf_counter()
        if not self.enabled or now - self._last < self.every:
            return
        self._last = now
        rate = (self.done - self._initial) / max(now - self._start, 1e-9)
        left = (self.total - self.done) / rate if rate else float("inf")
        say(f"{self.what}: {self.done}/{self.total} {self.unit} ({100 * self.done / self.total:.0f}%), "
            f"{rate:.3g} {self.unit}/s, about {duration(left) if left != float('inf') else '?'} left")
