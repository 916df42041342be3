"""Tables from result records, with the paper's number beside each row where one exists.

Two views of the same records:
- `at_a_glance` (the default of `orl-bench report`): one line per method setting and task cell
  (task, metric, k, dataset), at each artifact's best layer, beside the cell's chance level, the
  random-init value at the same scale and the paper's number; narrow enough for a terminal.
- `summarize` (`--full`): every grouping key. Records are grouped by (task, metric, layer, k,
  method, recipe, epochs, setup, dataset, variant), the setup being the pretraining config without
  its seed (so a `--set` override is its own row). A task's chance-level row comes first.
Seeds are aggregated as mean, std and count in both. Markdown for people, CSV for tools; the
formatting is pandas'.
"""
from __future__ import annotations

import statistics
from typing import Any

import pandas as pd

from orl_bench import pipeline
from orl_bench.data.sources import COCO_PLUS_SOURCES
from orl_bench.progress import duration
from orl_bench.results.paper import PaperReference
from orl_bench.results.records import CHANCE

GROUP_KEYS = ("task", "metric", "layer", "k", "method", "recipe", "epochs", "setup_hash", "dataset", "variant")
CELL_KEYS = ("task", "metric", "k", "dataset")  # what a value is compared within: chance and random are per cell


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
        # an ablation recipe's records carry the method's settings, not its epochs relative to the scale
        variant = pipeline.paper_variant(first["method"], first["recipe"]) \
            if pipeline.ABLATION_RECIPE.match(str(first.get("recipe"))) else first.get("variant", {})
        coco_plus = first.get("pretrain_data") in COCO_PLUS_SOURCES
        row.update({
            "coco_plus": coco_plus,
            "mean": statistics.fmean(values),
            "std": statistics.stdev(values) if len(values) > 1 else 0.0,
            "n": len(values),
            "seeds": sorted({r.get("seed") for r in items if r.get("seed") is not None}),
            "paper": paper.lookup(first["task"], first["metric"], first["method"], k=first.get("k"), **variant,
                                  pretrain_data="coco_plus" if coco_plus else "coco"),
        })
        rows.append(row)
    return rows


def best_per_artifact(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One record per (method, artifact, seed): the one marked best, else the highest value (over layers).
    Give it the records of one task cell and one benchmark config."""
    by_artifact: dict[Any, list[dict[str, Any]]] = {}
    for r in records:
        by_artifact.setdefault((r["method"], r.get("artifact_sha256"), r.get("seed")), []).append(r)
    return [next((r for r in rows if r.get("best")), max(rows, key=lambda r: r["value"]))
            for rows in by_artifact.values()]


def _k(k: Any) -> int | None:
    return None if k is None or pd.isna(k) else int(k)  # pandas holds a missing k as NaN, never equal to itself


def _scale(recipe: Any) -> str:
    # the scale a recipe belongs to ('default_5a_intra_only' -> 'default'), as pipeline.benchmark_recipe reads it
    return str(recipe).split("_", 1)[0]


def at_a_glance(records: list[dict[str, Any]], paper: PaperReference) -> pd.DataFrame:
    """One line per (task cell, method setting): `value` (mean ± std over seeds at each
    artifact's best layer), `n`, and beside it the cell's `chance`, the `random` init at the same
    scale (an ablation recipe's is its scale's) and the `paper`'s number. Chance records are levels, not lines."""
    cells: dict[tuple, list[dict[str, Any]]] = {}
    for r in records:
        cells.setdefault(tuple(r.get(k) for k in (*CELL_KEYS, "task_config_hash")), []).append(r)
    best = [{**r, "layer": None} for found in cells.values() for r in best_per_artifact(found)]
    rows = pd.DataFrame(summarize(best, paper))
    if rows.empty:
        return rows
    # a task's chance level is one per dataset, whatever the k (low-shot) or the neighbours (kNN)
    chance = {(r.task, r.metric, r.dataset): r.mean for r in rows[rows["method"] == CHANCE].itertuples()}
    random = {(r.task, r.metric, _k(r.k), r.dataset, _scale(r.recipe)): (r.mean, r.std)
              for r in rows[rows["method"] == "random"].itertuples()}
    lines = rows[rows["method"] != CHANCE].reset_index(drop=True)
    lines["chance"] = [chance.get((r.task, r.metric, r.dataset)) for r in lines.itertuples()]
    floor = [random.get((r.task, r.metric, _k(r.k), r.dataset, _scale(r.recipe)), (None, None)) for r in lines.itertuples()]
    lines["random"], lines["random_std"] = [m for m, _ in floor], [s for _, s in floor]
    return lines


def above_random(mean: float, std: float, random: Any, random_std: Any) -> str:
    """How far a line lies above the random init: in points and, where seeds give a spread, in units
    of the larger of the two standard deviations (a margin within one is no separation)."""
    if random is None or pd.isna(random):
        return "-"
    spread = max(std, random_std)
    return f"{mean - random:+.2f}" + (f" ({(mean - random) / spread:.1f} sd)" if spread > 0 else "")


def _number(x: Any, digits: int = 2) -> str:
    return "-" if x is None or pd.isna(x) else f"{x:.{digits}f}"


def _text(x: Any) -> str:
    return "-" if x is None or (not isinstance(x, str) and pd.isna(x)) or x == "" else str(x)


def glance_markdown(lines: pd.DataFrame) -> str:
    """Per task cell a small table: method | recipe | value | n | chance | above random | paper (random first)."""
    blocks = []
    for (task, metric, k, dataset), part in lines.groupby(list(CELL_KEYS), sort=False, dropna=False):
        # the floor first, the ceiling last: random, the methods, supervised
        part = part.sort_values("method", key=lambda m: (m != "random").astype(int) + (m == "supervised"), kind="stable")
        # the recipe names a setting; a `--set` override of the same recipe shows its setup hash
        again = part.duplicated(["method", "coco_plus", "recipe", "epochs"], keep=False)
        shown = pd.DataFrame({
            "method": [m + (" (COCO+)" if plus else "") + (f" [{h[:8]}]" if twice else "") for m, plus, h, twice in
                       zip(part["method"], part["coco_plus"], part["setup_hash"].fillna("-"), again)],
            "recipe": [f"{r}, {int(e)} ep" if not pd.isna(e) else str(r) for r, e in zip(part["recipe"], part["epochs"])],
            "value": [f"{m:.2f} ± {s:.2f}" for m, s in zip(part["mean"], part["std"])],
            "n": part["n"].astype(int),
            "chance": part["chance"].map(_number),  # the random init's own line(s) come first
            "above random": ["-" if method == "random" else above_random(m, s, r, rs) for method, m, s, r, rs in
                             zip(part["method"], part["mean"], part["std"], part["random"], part["random_std"])],
            "paper": part["paper"].map(lambda p: _number(p, 1))})
        title = f"{task} · {metric}" + ("" if k is None or pd.isna(k) else f" · k={int(k)}") + f" · {dataset}"
        table = shown.to_markdown(index=False, disable_numparse=True, colalign=("left",) * 2 + ("right",) * 5)
        blocks.append(f"{title}\n\n{table}\n")
    return "\n".join(blocks)


def to_markdown(rows: list[dict[str, Any]]) -> str:
    frame = pd.DataFrame(rows, columns=[*GROUP_KEYS, "mean", "std", "n", "paper"])
    shown = pd.DataFrame({
        "task": frame["task"], "metric": frame["metric"], "layer": frame["layer"].map(_text),
        "k": frame["k"].map(lambda k: _number(k, 0)), "method": frame["method"], "recipe": frame["recipe"].map(_text),
        "epochs": frame["epochs"].map(lambda e: _number(e, 0)), "setup": frame["setup_hash"].map(lambda s: _text(s)[:8]),
        "dataset": frame["dataset"], "variant": frame["variant"].map(_text),
        "ours (mean ± std)": [f"{m:.2f} ± {s:.2f}" for m, s in zip(frame["mean"], frame["std"])],
        "n": frame["n"].astype(str), "paper (R50)": frame["paper"].map(lambda p: _number(p, 1))})
    return shown.to_markdown(index=False, disable_numparse=True) + "\n"


def to_csv(rows: list[dict[str, Any]]) -> str:
    frame = pd.DataFrame(rows, columns=[*GROUP_KEYS, "mean", "std", "n", "seeds", "paper"])
    frame["seeds"] = frame["seeds"].map(lambda s: " ".join(map(str, s)))
    return frame.to_csv(index=False)


REFERENCE_METHODS = ("random", "byol")  # what a run's number is read against, when the store has them
SCALES = ("tiny", "default", "paper")


def _reference_records(stored: list[dict[str, Any]], first: dict[str, Any], method: str) -> list[dict[str, Any]]:
    """The stored records of `method` at the run's scale, task config and (but for random init, which
    sees no images) pretraining data."""
    plus = first.get("pretrain_data") in COCO_PLUS_SOURCES
    return [r for r in stored if r["method"] == method and r["task"] == first["task"]
            and r.get("task_config_hash") == first.get("task_config_hash") and _scale(r.get("recipe")) == _scale(
                first.get("recipe")) and (method == "random" or (r.get("pretrain_data") in COCO_PLUS_SOURCES) == plus)]


def _level(records: list[dict[str, Any]]) -> str:
    """Mean over artifacts at each one's best layer, with the seed count when there are several."""
    best = [r["value"] for r in best_per_artifact(records)]
    return "-" if not best else f"{statistics.fmean(best):.2f}" + (f" (n={len(best)})" if len(best) > 1 else "")


def run_glance(run: list[dict[str, Any]], stored: list[dict[str, Any]], paper: PaperReference) -> str:
    """What `orl-bench run` prints: per task cell of the run's records, the method at its best layer
    and at res5, beside the cell's chance level, random init and BYOL of the same scale from the
    store (and how to build them when it lacks them), and the paper's number; lines of at most 100
    columns."""
    mine = [r for r in run if r["method"] != CHANCE]
    first = mine[0]
    method, task = first["method"], first["task"]
    references = {m: _reference_records(stored, first, m) for m in REFERENCE_METHODS if m != method}
    lines = []
    cells: dict[tuple, list[dict[str, Any]]] = {}
    for r in mine:
        cells.setdefault((r["metric"], r.get("k"), r["dataset"]), []).append(r)
    for (metric, k, dataset), found in cells.items():
        best = best_per_artifact(found)[0]
        res5 = next((r["value"] for r in found if r.get("layer") == "res5"), None)
        in_cell = [r for r in run if r["method"] == CHANCE and r["metric"] == metric and r["dataset"] == dataset]
        line = {"cell": metric + ("" if k is None else f" k={k}"),
                method: f"{best['value']:.2f}" + (f" ({best['layer']})" if best.get("layer") else ""),
                "res5": _number(res5)}
        line.update({m: _level([r for r in refs if r["metric"] == metric and r.get("k") == k
                                and r["dataset"] == dataset]) for m, refs in references.items()})
        line["chance"] = _number(in_cell[-1]["value"] if in_cell else None)
        line["paper"] = _number(summarize([best], paper)[0]["paper"], 1)
        lines.append(line)
    seed = "" if first.get("seed") is None else f", seed {first['seed']}"
    title = f"{method} [{first.get('recipe')}{seed}] on {task} ({first['dataset']}), best layer and res5:"
    table = pd.DataFrame(lines).to_markdown(index=False, disable_numparse=True)
    notes = []
    missing = [m for m, refs in references.items() if not refs]
    if missing and _scale(first.get("recipe")) in SCALES:
        notes.append(f"not stored yet, to read {method} against ({', '.join(missing)}):")
        notes += [f"  orl-bench run --method {m} --recipe {_scale(first.get('recipe'))} --task {task}" for m in missing]
    return "\n".join([title, "", table, *([""] + notes if notes else [])]) + "\n"


def timings_line(timings: dict[str, Any]) -> str:
    """`run`'s stage times on one line: 'data 41 s · stage 1 1 min 36 s · ... · total 14 min 17 s'."""
    def part(name: str, seconds: Any, reused: Any = False) -> str:
        return f"{name} reused" if reused else f"{name} {duration(seconds or 0)}"
    stage1 = timings.get("stage1")
    parts = [part("data", timings["data_s"])] if "data_s" in timings else []
    if isinstance(stage1, dict):
        parts += [part("stage 1", stage1.get("pretrain_s"), stage1.get("pretrain_reused")),
                  part("stage 2", timings.get("stage2_s"), timings.get("stage2_reused"))]
    if "pretrain_s" in timings:
        parts.append(part("stage 3" if isinstance(stage1, dict) else "pretraining", timings["pretrain_s"],
                          timings.get("pretrain_reused")))
    parts.append("evaluation: stored records" if timings.get("eval_reused") else part("evaluation", timings["eval_s"]))
    return "time: " + " · ".join(parts) + f" · total {duration(timings['total_s'])}"
