"""Result records: one JSON object per line, append-only, written atomically.

Tables are computed from these records, never parsed from logs.
"""
from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

from orl_bench.io import append_jsonl, read_jsonl

RECORDS_FILE = "records.jsonl"
CHANCE = "chance"  # method of a task's chance-level records: from the test labels, no backbone
REQUIRED = ("task", "metric", "value", "method", "artifact_sha256", "recipe", "dataset", "config_hash",
            "git_revision", "device", "wall_time_s", "timestamp")


def records_path(workdir: Path) -> Path:
    return Path(workdir) / "results" / RECORDS_FILE


def now_iso() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def append_records(workdir: Path, records: list[dict[str, Any]]) -> None:
    for r in records:
        missing = [k for k in REQUIRED if k not in r]
        if missing:
            raise ValueError(f"result record lacks required fields {missing}: {r}")
    append_jsonl(records_path(workdir), records)


def load_records(workdir: Path) -> list[dict[str, Any]]:
    return read_jsonl(records_path(workdir))
