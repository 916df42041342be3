"""Result records: one JSON object per line, append-only, written atomically.

Tables are computed from these records, never parsed from logs.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from orl_bench.io import append_jsonl, read_jsonl_lenient, warn_skipped

RECORDS_FILE = "records.jsonl"
CHANCE = "chance"  # method of a task's chance-level records: from the test labels, no backbone
REQUIRED = ("task", "metric", "value", "method", "artifact_sha256", "recipe", "dataset", "config_hash",
            "git_revision", "device", "wall_time_s", "timestamp")


def records_path(workdir: Path) -> Path:
    return Path(workdir) / "results" / RECORDS_FILE


def record_problem(obj: Any) -> str | None:
    """Why `obj` is not a result record (None if it is one)."""
    if not isinstance(obj, dict):
        return f"a JSON {type(obj).__name__}, not a record object"
    missing = [k for k in REQUIRED if k not in obj]
    return f"not a result record (lacks {missing})" if missing else None


def append_records(workdir: Path, records: list[dict[str, Any]]) -> None:
    for r in records:
        problem = record_problem(r)
        if problem:
            raise ValueError(f"refusing to store {r}: {problem}")
    append_jsonl(records_path(workdir), records)


def read_records(path: Path) -> tuple[list[dict[str, Any]], list[str]]:
    """The records of a JSON-lines file, and a `PATH:LINE: why` note for each damaged, truncated
    or foreign line skipped."""
    return read_jsonl_lenient(path, record_problem)


def load_records(workdir: Path) -> list[dict[str, Any]]:
    """The work directory's records; a damaged line is skipped with a warning naming it."""
    records, skipped = read_records(records_path(workdir))
    warn_skipped(skipped)
    return records
