"""Facts recorded with every artifact and result: code revision, device, versions."""
from __future__ import annotations

import datetime as dt
import functools
import json
import platform
import subprocess
import time
from pathlib import Path
from typing import Any

import torch

from orl_bench.io import atomic_write_json


def now_iso() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


@functools.lru_cache(maxsize=1)
def git_revision() -> str:
    """The source tree's commit (suffixed `-dirty` with local changes), or `unknown`."""
    here = Path(__file__).resolve().parent
    try:
        rev = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True,
                             text=True, timeout=5, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here,
                               capture_output=True, text=True, timeout=5).stdout.strip()
        return rev + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def device_name(device: torch.device | None = None) -> str:
    if device is not None and device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu: {platform.processor() or platform.machine()} x{torch.get_num_threads()} threads"


def save_benchmark_record(path: Path, record: dict[str, Any], device: torch.device | None = None) -> dict[str, Any]:
    """Stamp a benchmark's result with the device, revision and time, write it atomically, print it."""
    record = {**record, "device": device_name(device), "git_revision": git_revision(),
              "time": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    atomic_write_json(Path(path), record)
    print(json.dumps(record, indent=2))
    return record
