"""The paper's Tables 1-5 written from result records, beside the paper's numbers. What a table
needs and how the missing runs are built is orl_bench/plan.py; this module reads records and
artifacts' manifests and writes, knowing nothing of training or launching.

Rows, at one scale (`tiny`, `default`, `paper`), after a chance row:
- Tables 1-4: the paper's rows in its order; each implemented method at the scale's recipe, its
  COCO+ rows on the embedded scenes' COCO+ (`data.source: synth_plus`) or on real COCO+ (`--data
  coco_plus=PATH`). A row the project cannot build says why (a method without an implementation
  here; COCO+ without its images: real data without --data coco_plus).
- Table 5(x): for every method of the paper's table, the scale's recipe and the scale's
  ablation recipes of that table (`<scale>_5x_*.yaml`). The paper's number is the one of the same
  settings (`Method.variant`); for 5(e) epochs are read relative to the scale, the scale's own
  epochs standing for the paper's 800.
A cell is the mean and standard deviation over the seeds of the row's records for the column's
(task, metric, k) at each artifact's best layer (the record a task marks `best`, else the highest
value), from the benchmark config that runs now, so a stale config's records never mix in, and
pretrained on the row's data (the records' `pretrain_data`: a COCO row never reads a COCO+ run).
"""
from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from orl_bench.data.sources import COCO_PLUS_SOURCES
from orl_bench.engine.checkpoint import is_complete, pretraining_seconds
from orl_bench.io import atomic_write_text
from orl_bench.results.paper import PaperTable
from orl_bench.results.records import CHANCE
from orl_bench.results.report import best_per_artifact

TABLES = {"1": ("table1",), "2": ("table2",), "3": ("table3",), "4": ("table4",),
          "5": ("table5a", "table5b", "table5c", "table5d", "table5e")}
NOT_MEASURED = "not measured by this scale's benchmark recipe (e.g. a k its data cannot supply)"


@dataclass(frozen=True)
class RowPlan:
    label: str
    method: str
    recipe: str | None  # the pretraining recipe; None: nothing of ours to build (chance, `missing`)
    paper: dict[str, float]  # column key -> the paper's number for these settings
    missing: str | None = None  # why the row has no numbers of ours
    coco_plus: bool = False  # pretrains on COCO+ (train2017 + unlabeled2017): the paper's "(COCO+)" rows
    data: tuple[str, ...] = ()  # the pretraining overrides that select its images; none: the recipe's own


def of_row(record: dict[str, Any], row: RowPlan) -> bool:
    """Whether a record is of the row's runs: its method and recipe, pretrained on its data (COCO or
    COCO+; records from before `pretrain_data` was recorded are all COCO runs)."""
    return (record["method"] == row.method and record.get("recipe") == row.recipe
            and (record.get("pretrain_data") in COCO_PLUS_SOURCES) == row.coco_plus)


def run_name(row: RowPlan) -> str:
    return f"{row.method} [{row.recipe}]" + (" on COCO+" if row.coco_plus else "")


def fill(table: PaperTable, rows: list[RowPlan], records: list[dict[str, Any]], seeds: int,
         task_hash: dict[tuple[str, str], str]) -> pd.DataFrame:
    """One line per (row, column): ours (mean, std, n), the paper's number, the delta, and why a
    cell is empty. `task_hash[(task, recipe)]` is the hash of the benchmark config to read. The
    chance row reads the chance records of the datasets the other rows were measured on. A
    column's metric is also read from the records that carry it as a field beside their own
    (classification records hold `top5` beside their top-1 `value`)."""
    records = [*records, *({**r, "metric": m, "value": r[m]} for m in {c.metric for c in table.columns}
                           for r in records if r["metric"] != m and isinstance(r.get(m), (int, float)))]
    chosen: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for row in rows:
        for c in table.columns:
            chosen[row.label, c.key] = best_per_artifact([
                r for r in records if r["task"] == c.task and r["metric"] == c.metric and of_row(r, row)
                and (c.k is None or r.get("k") == c.k)
                and r.get("seed") in range(seeds) and r.get("task_config_hash") == task_hash.get((c.task, row.recipe))])
    datasets = {(c.task, r["dataset"]) for (_, key), found in chosen.items() for c in table.columns if c.key == key
                for r in found}
    measured = {(label, c.task) for (label, key), found in chosen.items() for c in table.columns
                if c.key == key and found}
    lines = []
    for row in rows:
        for c in table.columns:
            best = chosen[row.label, c.key]
            if row.method == CHANCE:  # the data's level, stored once per dataset (any k)
                best = [r for r in records if r["method"] == CHANCE and r["task"] == c.task
                        and r["metric"] == c.metric and (c.task, r["dataset"]) in datasets][-1:]
            values = [r["value"] for r in best]
            mean = statistics.fmean(values) if values else None
            paper = row.paper.get(c.key)
            lines.append({"row": row.label, "method": row.method, "recipe": row.recipe, "coco_plus": row.coco_plus,
                          "column": c.label,
                          "task": c.task, "metric": c.metric, "k": c.k, "mean": mean,
                          "std": statistics.stdev(values) if len(values) > 1 else (0.0 if values else None),
                          "n": len(values), "seeds": seeds, "paper": paper,
                          "delta": None if mean is None or paper is None else mean - paper,
                          # a column the row's runs of this task left out (a k the benchmark recipe skips)
                          "status": row.missing or ("ok" if values else NOT_MEASURED if (row.label, c.task)
                                                    in measured else "not run"),
                          "datasets": sorted({r["dataset"] for r in best}),
                          "pretrain_data": sorted({r["pretrain_data"] for r in best if r.get("pretrain_data")}),
                          "artifacts": sorted({r["artifact_sha256"][:12] for r in best if r.get("artifact_sha256")}),
                          # the folders by seed, for the figures (logs, backbones, correspondences)
                          "artifact_dirs": [r["artifact"] for r in sorted(best, key=lambda r: r["seed"])
                                            if r.get("artifact")],
                          "epochs": next((r["epochs"] for r in best if r.get("epochs") is not None), None),
                          # the evaluation runs behind the cell, for the time in the provenance
                          "runs": sorted({(r["task"], r.get("artifact_sha256") or "", r.get("timestamp") or "",
                                           r.get("wall_time_s", 0.0)) for r in best if row.method != CHANCE}),
                          "layers": sorted({str(r["layer"]) for r in best if r.get("layer")})})
    return pd.DataFrame(lines)


def _cell(line: pd.Series) -> str:
    if line["status"] != "ok":
        ours = "-"
    else:
        ours = f"{line['mean']:.2f}" + (f" ± {line['std']:.2f}" if line["n"] > 1 else "")
        if line["method"] != CHANCE and line["n"] < line["seeds"]:  # fewer seeds than asked for
            ours += f" [{line['n']}/{line['seeds']} seeds]"
    paper = "" if pd.isna(line["paper"]) else f" ({line['paper']:.1f}"
    if paper:
        paper += f", {line['delta']:+.1f})" if not pd.isna(line["delta"]) else ")"
    return ours + paper


def pivot(frame: pd.DataFrame, table: PaperTable) -> pd.DataFrame:
    """Rows x columns of 'ours ± std (paper, delta)' strings, in the table's order."""
    cells = frame.assign(cell=frame.apply(_cell, axis=1))
    wide = cells.pivot(index="row", columns="column", values="cell")
    return wide.loc[list(dict.fromkeys(frame["row"])), [c.label for c in table.columns]]


def artifact_folder(recorded: str, workdir: Path) -> Path:
    """An artifact folder named in a record, or the same folder under this work directory (records
    keep the path they were written with; a work directory can move)."""
    path = Path(recorded)
    return path if path.is_dir() else Path(workdir) / "artifacts" / path.name


def provenance(parts: list[tuple[PaperTable, pd.DataFrame]], records: list[dict[str, Any]], scale: str, seeds: int,
               data: dict[str, str], seconds: float, workdir: Path) -> str:
    """Where a table's numbers come from, as Markdown bullets."""
    frame = pd.concat([f for _, f in parts])
    artifacts = sorted({a for found in frame["artifacts"] for a in found})
    runs = {run for found in frame["runs"] for run in found}  # a run fills several cells (layers, k, metrics)
    keys = {run[:3] for run in runs}
    used = [r for r in records if (r["task"], r.get("artifact_sha256") or "", r.get("timestamp") or "") in keys]
    # each artifact's build time: from its folder, else from any of its records (the folder may be
    # gone, and records written before they kept the time lack it)
    built: dict[str, float | None] = {}
    for r in used:
        sha = r.get("artifact_sha256")
        if sha and sha not in built:
            folder = artifact_folder(r["artifact"], workdir) if r.get("artifact") else None
            built[sha] = pretraining_seconds(folder) if folder and is_complete(folder) else None
        if sha and built[sha] is None:
            built[sha] = r.get("pretraining_s")
    unknown = sum(s is None for s in built.values())
    protocols = sorted({str(r.get("protocol")) for r in used if r.get("protocol")})
    solvers = sorted({r["svm_solver"] for r in used if r.get("svm_solver")})
    lines = [f"- recipe: `{scale}` (pretraining and benchmarks), seeds {list(range(seeds))}",
             f"- data: {', '.join(f'{k}={v}' for k, v in data.items()) or 'the embedded scenes'}; pretrained on "
             + (", ".join(f"`{d}`" for d in sorted({d for found in frame["pretrain_data"] for d in found})) or "-")
             + "; datasets " + ", ".join(f"`{d}`" for d in sorted({d for found in frame["datasets"] for d in found})),
             f"- artifacts (sha256, first 12): {', '.join(artifacts) or 'none'}",
             f"- protocols: {'; '.join(protocols) or '-'}" + (f"; SVM solver {', '.join(solvers)}" if solvers else ""),
             f"- devices: {', '.join(sorted({str(r.get('device')) for r in used})) or '-'}",
             f"- time: pretraining {sum(s for s in built.values() if s is not None):.0f} s (the artifacts' own builds"
             + (f"; {unknown} of {len(built)} unknown: no folder here, no pretraining_s in their records"
                if unknown else "")
             + f"), evaluation {sum(wall for *_, wall in runs):.0f} s (the records); "
             f"this command: {seconds:.0f} s; written {time.strftime('%Y-%m-%d %H:%M %Z')}"]
    return "\n".join(lines) + "\n"


def write_table(number: str, parts: list[tuple[PaperTable, pd.DataFrame]], out: Path, notes: str) -> list[Path]:
    """results/tables/table{N}.md, .csv (one line per cell) and .tex."""
    md, tex = [], []
    for table, frame in parts:
        wide = pivot(frame, table)
        md += [f"### {table.title}\n", wide.to_markdown(), "\n"]
        missing = frame[frame["status"].str.startswith(("not implemented", "dataset", "no "))]
        md += [f"- {row}: {why}" for row, why in dict(zip(missing["row"], missing["status"])).items()]
        md += [f"- {column}: {NOT_MEASURED}" for column in dict.fromkeys(frame[frame["status"] == NOT_MEASURED]["column"])]
        md.append("")
        tex.append(wide.to_latex(caption=table.title, label=table.name, escape=True))
    md += ["Each cell: ours, mean ± std over seeds (paper's number, ours - paper); `-`: not run or missing.\n",
           "#### Provenance\n", notes]
    paths = [out / f"table{number}.md", out / f"table{number}.csv", out / f"table{number}.tex"]
    csv = pd.concat([frame.assign(table=table.name) for table, frame in parts]).to_csv(index=False)
    for path, text in zip(paths, ("\n".join(md), csv, "\n".join(tex))):
        atomic_write_text(path, text)
    return paths
