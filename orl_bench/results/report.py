"""Tables from result records, with the paper's number beside each row where one exists.

Records are grouped by (task, metric, layer, k, method, recipe, epochs, setup, dataset, variant), the
setup being the pretraining config without its seed (so a `--set` override is its own row); seeds
are aggregated as mean, std and count. A task's chance-level row comes first, the floor its
methods are read against. Markdown for people, CSV for tools.
"""
from __future__ import annotations

import csv
import io
import statistics
from typing import Any

from orl_bench.results.paper import PaperReference
from orl_bench.results.records import CHANCE

GROUP_KEYS = ("task", "metric", "layer", "k", "method", "recipe", "epochs", "setup_hash", "dataset", "variant")


def _variant(record: dict[str, Any]) -> str:
    return ",".join(f"{k}={'+'.join(map(str, v)) if isinstance(v, list) else v}"
                    for k, v in sorted(record.get("variant", {}).items()))


def _order(key: tuple) -> tuple:
    row = dict(zip(GROUP_KEYS, key))
    # numbers (k, epochs) in numeric order, so k = 2 comes before k = 16
    return str(row["task"]), row["method"] != CHANCE, tuple(
        (0, x, "") if isinstance(x, (int, float)) else (1, 0, str(x)) for x in key)


def summarize(records: list[dict[str, Any]], paper: PaperReference) -> list[dict[str, Any]]:
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for r in records:
        key = tuple(_variant(r) if k == "variant" else r.get(k) for k in GROUP_KEYS)
        groups.setdefault(key, []).append(r)
    # One backbone evaluated again (e.g. with more layers) is still one seed: the latest record counts.
    groups = {key: list({(r.get("artifact_sha256"), r.get("seed")): r for r in items}.values())
              for key, items in groups.items()}
    rows = []
    for key, items in sorted(groups.items(), key=lambda kv: _order(kv[0])):
        values = [r["value"] for r in items]
        row = dict(zip(GROUP_KEYS, key))
        first = items[0]
        row.update({
            "mean": statistics.fmean(values),
            "std": statistics.stdev(values) if len(values) > 1 else 0.0,
            "n": len(values),
            "seeds": sorted({r.get("seed") for r in items if r.get("seed") is not None}),
            "paper": paper.lookup(first["task"], first["metric"], first["method"], k=first.get("k"),
                                  **first.get("variant", {})),
        })
        rows.append(row)
    return rows


def to_markdown(rows: list[dict[str, Any]]) -> str:
    header = ["task", "metric", "layer", "k", "method", "recipe", "epochs", "setup", "dataset", "variant",
              "ours (mean ± std)", "n", "paper (COCO, R50)"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in rows:
        paper = "-" if r["paper"] is None else f"{r['paper']:.1f}"
        cells = [r["task"], r["metric"], r["layer"] or "-", r["k"] if r["k"] is not None else "-", r["method"],
                 r["recipe"], "-" if r["epochs"] is None else r["epochs"], (r["setup_hash"] or "-")[:8], r["dataset"], r["variant"] or "-", f"{r['mean']:.2f} ± {r['std']:.2f}", r["n"], paper]
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    return "\n".join(lines) + "\n"


def to_csv(rows: list[dict[str, Any]]) -> str:
    out = io.StringIO()
    fields = list(GROUP_KEYS) + ["mean", "std", "n", "seeds", "paper"]
    writer = csv.DictWriter(out, fieldnames=fields)
    writer.writeheader()
    for r in rows:
        writer.writerow({**r, "seeds": " ".join(map(str, r["seeds"]))})
    return out.getvalue()
