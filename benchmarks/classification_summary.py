"""One line per benchmark task: each method's best-layer number beside chance, from a records file.

For every (task, method) the best record is taken: the one marked `best` where the task marks one
(linear probes: the best layer; semi-supervised with the grid: the best point), else the highest
value over layers (SVM, kNN); low-shot rows are read at one k (`--k`). A method with several
artifacts (seeds) shows their mean. Only each task's newest configuration is read.

    python benchmarks/classification_summary.py /tmp/cls/results/records.jsonl --out results/embedded/classification_seed0.md
"""
from __future__ import annotations

import argparse
from collections import defaultdict
from pathlib import Path

import numpy as np

from orl_bench.io import atomic_write_text
from orl_bench.results.records import read_records
from orl_bench.results.report import best_per_artifact

METHODS = ("chance", "random", "byol", "orl", "supervised")


def best_values(records: list[dict], k: int) -> dict[tuple[str, str], tuple[float, str]]:
    """(task, method) -> (mean over artifacts of the best value, the layers it came from)."""
    latest = {}  # task -> the config of its newest record: an earlier configuration is not mixed in
    for r in sorted(records, key=lambda r: r["timestamp"]):
        latest[r["task"]] = r["task_config_hash"]
    per_method: dict[tuple[str, str], list[dict]] = defaultdict(list)
    for r in records:
        if r["task_config_hash"] != latest[r["task"]] and r["method"] != "chance":  # chance: the data's, stored once
            continue
        if r["task"] == "voc07_lowshot" and r["method"] != "chance" and r.get("k") != k:
            continue
        per_method[r["task"], r["method"]].append(r)
    best = {key: best_per_artifact(rows) for key, rows in per_method.items()}
    return {key: (float(np.mean([r["value"] for r in rows])), "/".join(sorted({str(r["layer"]) for r in rows})))
            for key, rows in best.items()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("records", type=Path)
    p.add_argument("--k", type=int, default=32, help="the low-shot k to show")
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args()
    records, _ = read_records(args.records)
    values = best_values(records, args.k)
    tasks = sorted({task for task, _ in values})
    lines = ["| task | metric | " + " | ".join(METHODS) + " |", "|---|---|" + "---|" * len(METHODS)]
    for task in tasks:
        metric = next(r["metric"] for r in records if r["task"] == task)
        cells = [f"{values[task, m][0]:.2f} ({values[task, m][1]})" if (task, m) in values else "-" for m in METHODS]
        lines.append(f"| {task}{f' (k = {args.k})' if task == 'voc07_lowshot' else ''} | {metric} | "
                     + " | ".join(cells) + " |")
    text = "\n".join(lines) + "\n\nEach cell: the best layer's value (the layer in brackets); chance has none.\n"
    atomic_write_text(args.out, text)
    print(text)


if __name__ == "__main__":
    main()
