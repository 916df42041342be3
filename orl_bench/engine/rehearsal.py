"""The hooks a rehearsal (`orl-bench rehearse`, orl_bench/rehearse.py) reads the real code path through.

A rehearsal runs the same entry points as `run` and `table`; what differs is that every training
loop stops after a few steps. Each loop (pretraining, a benchmark's training epochs, Mask R-CNN's
iterations) opens a `section` and calls `step_done(images)` after every optimiser step, ending as
if its schedule had when it returns True. Other measured parts (ORL's stage 2, a benchmark as a
whole) open a section too. A section records its wall time, step times, images and peak memory
(CUDA: max allocated; CPU: the process's peak resident set, reset per section through
/proc/self/clear_refs), and the error that left it, if any.

Outside a rehearsal nothing is recorded: `section` yields a shared inert Section and `step_done`
returns False after one global lookup.
"""
from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import gc
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch


@dataclass
class Section:
    name: str
    depth: int = 0  # sections open around it
    started: float = field(default_factory=time.perf_counter)
    steps: int = 0
    images: int = 0
    step_ends: list[float] = field(default_factory=list)
    wall_s: float = 0.0
    base_bytes: int = 0  # in use when it started
    peak_bytes: int = 0
    error: str | None = None

    @property
    def grown_bytes(self) -> int:
        """What the section added at its peak over what was in use when it started: independent of
        what earlier sections left behind (on CPU the resident set only grows over a process's life)."""
        return max(0, self.peak_bytes - self.base_bytes)

    def seconds_per_step(self) -> float | None:
        """Steady-state seconds per step: the mean interval between step ends after the first
        (which carries the loader's start and one-off allocations); the first step's time when it
        is the only one."""
        if len(self.step_ends) >= 2:
            return (self.step_ends[-1] - self.step_ends[0]) / (len(self.step_ends) - 1)
        return self.step_ends[0] - self.started if self.step_ends else None


def one_line(error: BaseException, limit: int = 300) -> str:
    """`Type: first line of the message`, cut to `limit` characters."""
    text = str(error).strip().splitlines()
    line = f"{type(error).__name__}: {text[0] if text else ''}".strip()
    return line if len(line) <= limit else line[:limit - 3] + "..."


class Recorder:
    """The sections of one rehearsal: `steps` per training loop, peak memory on `device`."""

    def __init__(self, steps: int, device: torch.device):
        if steps < 1:
            raise ValueError(f"a rehearsal runs at least 1 step per loop, got {steps}")
        self.steps, self.device = steps, device
        self.open: list[Section] = []
        self.closed: list[Section] = []

    def _status(self, field_name: str) -> int:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(f"{field_name}:"):
                return int(line.split()[1]) * 1024
        return 0

    def peak(self) -> int:
        if self.device.type == "cuda":
            return torch.cuda.max_memory_allocated(self.device)
        return self._status("VmHWM")

    def reset_peak(self) -> int:
        """Fold the peak so far into every open section, then restart the measurement from what is
        in use now, which it returns. On CPU freed memory is first handed back to the system
        (glibc keeps it otherwise, and the resident set would not show a section's own growth)."""
        now = self.peak()
        for s in self.open:
            s.peak_bytes = max(s.peak_bytes, now)
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
            return torch.cuda.memory_allocated(self.device)
        gc.collect()
        _LIBC.malloc_trim(0)
        Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS (Linux >= 4.0)
        return self._status("VmRSS")

    def take(self) -> list[Section]:
        """The sections closed since the last call, in the order they closed."""
        out, self.closed = self.closed, []
        return out


_LIBC = ctypes.CDLL(ctypes.util.find_library("c"))
_recorder: Recorder | None = None
_INERT = Section("inert")


@contextlib.contextmanager
def recording(recorder: Recorder) -> Iterator[Recorder]:
    global _recorder
    previous, _recorder = _recorder, recorder
    try:
        yield recorder
    finally:
        _recorder = previous


@contextlib.contextmanager
def section(name: str, images: int = 0) -> Iterator[Section]:
    """A measured part of the chain; `images`: how many it processes when it has no steps (ORL's
    stage 2 embeds every pretraining image once), so a rehearsal can project its full time."""
    recorder = _recorder
    if recorder is None:
        yield _INERT
        return
    base = recorder.reset_peak()
    s = Section(name, images=images, depth=len(recorder.open), base_bytes=base)
    recorder.open.append(s)
    try:
        yield s
    except BaseException as e:
        s.error = one_line(e)
        raise
    finally:
        recorder.open.pop()
        s.wall_s = time.perf_counter() - s.started
        now = recorder.peak()
        for open_section in (*recorder.open, s):  # the enclosing sections' peaks include this one's
            open_section.peak_bytes = max(open_section.peak_bytes, now)
        recorder.closed.append(s)


def step_done(images: int) -> bool:
    """Called by a training loop after each optimiser step (`images`: the batch it took); True
    when a rehearsal's step budget for the innermost section is spent."""
    recorder = _recorder
    if recorder is None or not recorder.open:
        return False
    s = recorder.open[-1]
    s.steps, s.images = s.steps + 1, s.images + images
    s.step_ends.append(time.perf_counter())
    return s.steps >= recorder.steps


def spent() -> bool:
    """Whether the innermost section's step budget is spent (for an outer loop, e.g. over epochs)."""
    recorder = _recorder
    return recorder is not None and bool(recorder.open) and recorder.open[-1].steps >= recorder.steps
