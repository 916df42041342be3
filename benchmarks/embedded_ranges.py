"""Do the embedded classification tasks separate methods? Their ranges and the targets, from records.

Per task (the three linear probes, semi-supervised 1% and 10%, kNN), at one recipe and its current
benchmark configuration: chance, random init, the supervised ceiling and every self-supervised row,
each the mean ± std over pretraining seeds 0..N-1 at each artifact's best layer (as the tables read
them). Then the targets an embedded task must meet to rank representations:
- each linear probe: supervised - random >= 20 top-1 points and >= 5x the larger of their two
  standard deviations; BYOL and MoCo v2 each above random by >= 2 of their own standard deviations;
- semi-supervised 1% and 10%: every self-supervised initialisation (SimCLR, MoCo v2, BYOL, ORL)
  above random init;
- kNN: BYOL above random init.
A target whose rows lack a seed's records is "not measured", never met.

    python benchmarks/embedded_ranges.py results/embedded/tables_default_records.jsonl --seeds 3 \\
        --out results/embedded/ranges_default
"""
from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path
from typing import Any

from orl_bench import plan
from orl_bench.data.sources import COCO_PLUS_SOURCES
from orl_bench.io import atomic_write_text, warn_skipped
from orl_bench.results.records import CHANCE, read_records
from orl_bench.results.report import best_per_artifact

PROBES = ("linear_imagenet", "linear_places205", "linear_inat18")
SEMI = ("semi_imagenet_1pct", "semi_imagenet_10pct")
TASKS = (*PROBES, *SEMI, "knn")
# (method, pretrained on COCO+): the floor, the ceiling, the paper's rows; COCO+ rows are shown, not judged
ROWS = (("random", False), ("supervised", False), ("simclr", False), ("mocov2", False), ("byol", False),
        ("orl", False), ("densecl", False), ("selfemd", False), ("byol", True), ("orl", True))
SELF_SUPERVISED = ("simclr", "mocov2", "byol", "orl")


def row_name(method: str, coco_plus: bool) -> str:
    return method + (" (COCO+)" if coco_plus else "")


def ranges(records: list[dict[str, Any]], recipe: str, seeds: int) -> dict[str, dict[str, Any]]:
    """task -> {"chance": value or None, row name: {"mean", "std", "n"} for the rows with records}."""
    out: dict[str, dict[str, Any]] = {}
    for task in TASKS:
        current = plan.task_recipe_hash(task, recipe, {})
        of_task = [r for r in records if r["task"] == task and r["metric"] == "top1" and r.get("recipe") == recipe
                   and r.get("task_config_hash") == current and r.get("seed") in range(seeds)]
        cell: dict[str, Any] = {}
        for method, coco_plus in ROWS:
            values = [r["value"] for r in best_per_artifact(
                [r for r in of_task if r["method"] == method
                 and (r.get("pretrain_data") in COCO_PLUS_SOURCES) == coco_plus])]
            if values:
                cell[row_name(method, coco_plus)] = {
                    "mean": statistics.fmean(values), "n": len(values),
                    "std": statistics.stdev(values) if len(values) > 1 else 0.0}
        datasets = {r["dataset"] for r in of_task}
        chance = [r["value"] for r in records if r["method"] == CHANCE and r["task"] == task
                  and r["metric"] == "top1" and r["dataset"] in datasets]
        out[task] = {"chance": chance[-1] if chance else None, "rows": cell}
    return out


def _ceiling(random: dict, supervised: dict) -> tuple[bool, str]:
    gap, spread = supervised["mean"] - random["mean"], max(supervised["std"], random["std"])
    ratio = f"{gap / spread:.1f}x" if spread else "no spread: n/a"
    return gap >= 20 and gap >= 5 * spread, f"{gap:+.1f} points, {ratio} the larger sd ({spread:.1f})"


def _above_by_its_sd(random: dict, row: dict) -> tuple[bool, str]:
    gap = row["mean"] - random["mean"]
    ratio = f"{gap / row['std']:.1f}" if row["std"] else "no spread: n/a"
    return gap >= 2 * row["std"], f"{gap:+.1f} points, {ratio} of its sd ({row['std']:.1f})"


def _above(random: dict, row: dict) -> tuple[bool, str]:
    return row["mean"] > random["mean"], f"{row['mean'] - random['mean']:+.1f} points"


def targets(found: dict[str, dict[str, Any]], seeds: int) -> list[dict[str, Any]]:
    """Each target: what it asks, what the records give, and whether it holds (None: not measured,
    or not at every seed yet)."""
    wanted = [(task, "supervised - random >= 20 and >= 5 sd", ("random", "supervised"), _ceiling) for task in PROBES]
    wanted += [(task, f"{m} - random >= 2 of {m}'s sd", ("random", m), _above_by_its_sd)
               for task in PROBES for m in ("byol", "mocov2")]
    wanted += [(task, f"{m} > random", ("random", m), _above) for task in SEMI for m in SELF_SUPERVISED]
    wanted.append(("knn", "byol > random", ("random", "byol"), _above))
    checks = []
    for task, asks, names, holds in wanted:
        rows = found[task]["rows"]
        missing = [f"{n} ({rows[n]['n'] if n in rows else 0} of {seeds} seeds)" for n in names
                   if n not in rows or rows[n]["n"] < seeds]
        ok, said = (None, f"not yet: {', '.join(missing)}") if missing else holds(*(rows[n] for n in names))
        checks.append({"task": task, "target": asks, "measured": said, "holds": ok})
    return checks


def to_markdown(found: dict[str, dict[str, Any]], checks: list[dict[str, Any]], recipe: str, seeds: int) -> str:
    names = [row_name(m, p) for m, p in ROWS]
    lines = [f"Recipe `{recipe}`, pretraining seeds 0-{seeds - 1}: top-1, mean ± std at each artifact's best "
             f"layer (fewer than {seeds} seeds marked).\n",
             "| task | chance | " + " | ".join(names) + " |", "|---|---|" + "---|" * len(names)]
    for task, cell in found.items():
        shown = [f"{r['mean']:.1f} ± {r['std']:.1f}" + (f" [n={r['n']}]" if r["n"] < seeds else "")
                 if (r := cell["rows"].get(name)) else "-" for name in names]
        chance = "-" if cell["chance"] is None else f"{cell['chance']:.1f}"
        lines.append(f"| {task} | {chance} | " + " | ".join(shown) + " |")
    lines += ["", "| task | target | measured | holds |", "|---|---|---|---|"]
    verdict = {True: "yes", False: "**no**", None: "not measured"}
    lines += [f"| {c['task']} | {c['target']} | {c['measured']} | {verdict[c['holds']]} |" for c in checks]
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("records", type=Path, nargs="+", help="JSON-lines record files (e.g. the committed ones)")
    p.add_argument("--recipe", default="default", help="the pretraining and benchmark recipe whose runs to read")
    p.add_argument("--seeds", type=int, default=3, help="pretraining seeds 0..N-1 per row")
    p.add_argument("--out", type=Path, help="also write OUT.md and OUT.json")
    args = p.parse_args()
    if args.seeds < 1:
        p.error(f"--seeds is the number of pretraining seeds per row (0..N-1); expected >= 1, got {args.seeds}")
    records = []
    for f in args.records:
        if not f.is_file():
            p.error(f"{f}: no such file; expected a JSON-lines record file")
        found, skipped = read_records(f)
        if not found:
            p.error(f"{f} holds no result record; expected a JSON-lines record file")
        warn_skipped(skipped)
        records += found
    found = ranges(records, args.recipe, args.seeds)
    checks = targets(found, args.seeds)
    text = to_markdown(found, checks, args.recipe, args.seeds)
    print(text, end="")
    if args.out:
        atomic_write_text(args.out.with_suffix(".md"), text)
        atomic_write_text(args.out.with_suffix(".json"), json.dumps(
            {"recipe": args.recipe, "seeds": args.seeds, "ranges": found, "targets": checks}, indent=1) + "\n")


if __name__ == "__main__":
    main()
