"""Rank-0 run logs: JSON lines (machine-readable), TensorBoard scalars, tqdm on a terminal, a progress
line every N seconds when output goes to a file (orl_bench/progress.py)."""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

from orl_bench.progress import Meter


class RunLogger:
    """Writes nothing on ranks other than 0."""

    def __init__(self, out_dir: Path, enabled: bool, total: int, initial: int = 0, label: str = "training"):
        self.enabled = enabled
        self._bar = self._tb = self._file = None
        self._meter = Meter(label, total, "steps", initial, enabled)
        if not enabled:
            return
        out_dir.mkdir(parents=True, exist_ok=True)
        self._file = open(out_dir / "log.jsonl", "a", buffering=1)
        from torch.utils.tensorboard import SummaryWriter  # imported lazily: slow to import
        self._tb = SummaryWriter(str(out_dir / "tensorboard"))
        if sys.stderr.isatty():
            from tqdm import tqdm
            self._bar = tqdm(total=total, initial=initial, unit="step", dynamic_ncols=True)

    def _write(self, row: dict[str, Any]) -> None:
        if self._file:
            self._file.write(json.dumps({"time": round(time.time(), 3), **row}) + "\n")

    def event(self, name: str, **fields: Any) -> None:
        self._write({"event": name, **fields})

    def scalars(self, step: int, group: str = "train", **values: Any) -> None:
        """A log.jsonl row and TensorBoard scalars `<group>/<name>`; rows of another group than
        train say which."""
        if not self.enabled:
            return
        values = {k: v for k, v in values.items() if v is not None}
        self._write({"step": step, **({} if group == "train" else {"group": group}), **values})
        for key, value in values.items():
            if isinstance(value, (int, float)):
                self._tb.add_scalar(f"{group}/{key}", value, step)
        if self._bar:
            self._bar.set_postfix(loss=f"{values.get('loss', float('nan')):.4f}")

    def tick(self) -> None:
        if self._bar:
            self._bar.update(1)
        self._meter.update()

    def close(self) -> None:
        for handle in (self._bar, self._tb, self._file):
            if handle:
                handle.close()
