"""The figures `orl-bench table` draws beside its tables, from the same cells and artifacts.

- Table 1: `table1_loss_curves.png`, the training loss of every row's runs (a multi-stage
  method's last stage), from the artifacts' `log.jsonl`; `figure3_pairs.png`, ORL's stage-2 RoI
  pairs (seed 0); `figure4_activations.png`, the last-stage activation maps of random init, BYOL
  and ORL (seed 0) over the same pretraining scenes, with the share of activation inside the
  objects' boxes.
- Table 2: `table2_lowshot.png`, mAP against k with a band of 1 std over seeds.
- Table 5(e): `table5e_schedule.png`, VOC07 mAP against pretraining epochs per method.
A figure whose inputs are absent (no ORL row run, no boxes in the data) is skipped with the reason.
"""
from __future__ import annotations

import json
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from orl_bench import pipeline
from orl_bench.data.images import read_rgb
from orl_bench.engine.checkpoint import load_backbone, read_manifest
from orl_bench.methods.orl.correspondence import Correspondences
from orl_bench.results import figures
from orl_bench.results.paper import PaperTable
from orl_bench.results.records import CHANCE
from orl_bench.results.tables import artifact_folder

ACTIVATION_METHODS = ("random", "byol", "orl")  # Figure 4: the floor, then the paper's pair
FIGURE_IMAGES = 6  # scenes (rows) in Figures 3 and 4
BEST = "best layer"  # a table cell is each artifact's best layer


def _report_rows(frame: pd.DataFrame) -> list[dict[str, Any]]:
    """Table cells as the report's rows (what figures.low_shot_curves and learning_curves draw):
    the best layer stands for the layer; one chance row per (task, metric)."""
    rows, chance_seen = [], set()
    for line in frame[frame["status"] == "ok"].itertuples():
        if line.method == CHANCE:
            if (line.task, line.metric) in chance_seen:
                continue  # the data's level is the same in every k column
            chance_seen.add((line.task, line.metric))
        rows.append({"task": line.task, "metric": line.metric, "dataset": line.datasets[0], "layer": BEST,
                     "k": None if line.method == CHANCE or pd.isna(line.k) else int(line.k),
                     "method": line.method, "recipe": line.recipe, "variant": "",
                     "epochs": None if line.epochs is None or pd.isna(line.epochs) else int(line.epochs),
                     "mean": line.mean, "std": line.std, "n": line.n})
    return rows


def _seed0(frame: pd.DataFrame, method: str, workdir: Path) -> Path | None:
    """The first seed's artifact of the method's COCO row at the table's scale (the paper's figures
    are of COCO runs), if it was run."""
    for line in frame[(frame["method"] == method) & ~frame["coco_plus"] & (frame["status"] == "ok")].itertuples():
        if line.artifact_dirs:
            return artifact_folder(line.artifact_dirs[0], workdir)
    return None


def loss_curves(frame: pd.DataFrame, workdir: Path, out: Path) -> str:
    runs: dict[str, list[tuple[int, list[dict]]]] = {}
    for line in frame[(frame["status"] == "ok") & (frame["method"] != CHANCE)].drop_duplicates("row").itertuples():
        for seed, recorded in enumerate(line.artifact_dirs):
            folder = artifact_folder(recorded, workdir)
            log = folder / "log.jsonl"
            if log.is_file():
                title = f"{line.method} [{line.recipe}]" + (" on COCO+" if line.coco_plus else "") + (
                    " (last stage)" if read_manifest(folder).get("stages") else "")
                runs.setdefault(title, []).append((seed, [json.loads(x) for x in log.read_text().splitlines() if x]))
    return f"{figures.loss_curves(runs, out)} runs' training loss"


def _pretraining_scenes(folder: Path, workdir: Path):
    return pipeline.pretrain_images(pipeline.artifact_config(folder).data, workdir)


def correspondence_pairs(frame: pd.DataFrame, workdir: Path, out: Path) -> str:
    folder = _seed0(frame, "orl", workdir)
    if folder is None:
        return "skipped: the ORL row was not run"
    recorded = Path(read_manifest(folder)["inputs"]["correspondences"]["path"])
    path = recorded if recorded.is_file() else Path(workdir) / "artifacts" / recorded.parent.name / recorded.name
    images = _pretraining_scenes(folder, workdir)
    queries = figures.correspondence_grid(Correspondences.load(path, n_images=len(images.paths)), images.paths, out,
                                          rows=FIGURE_IMAGES)
    return f"ORL seed 0's pairs for query images {queries}"


def activations(frame: pd.DataFrame, workdir: Path, out: Path) -> str:
    folders = {m: f for m in ACTIVATION_METHODS if (f := _seed0(frame, m, workdir)) is not None}
    if not {"byol", "orl"} <= set(folders):
        return "skipped: needs the BYOL and ORL rows run"
    scenes = _pretraining_scenes(folders["orl"], workdir).coco
    if not scenes or not scenes[0].categories:
        return "skipped: the pretraining data has no object boxes to compare the maps with"
    split = scenes[0]
    chosen = sorted(random.Random(0).sample(range(len(split)), min(FIGURE_IMAGES, len(split))))
    shares = figures.activation_maps({m: load_backbone(f)[0] for m, f in folders.items()},
                                     [np.asarray(read_rgb(split.images[i].path)) for i in chosen],
                                     [split.boxes(i) for i in chosen], out)
    return "activation mass inside the boxes: " + ", ".join(f"{k} {100 * v:.0f}%" for k, v in shares.items())


def low_shot(frame: pd.DataFrame, workdir: Path, out: Path) -> str:
    return f"{figures.low_shot_curves(_report_rows(frame), out, layer=BEST)} lines over k"


def schedule(frame: pd.DataFrame, workdir: Path, out: Path) -> str:
    return f"{figures.learning_curves(_report_rows(frame), out, layer=BEST)} lines over epochs"


FIGURES: dict[str, list[tuple[str, Callable[[pd.DataFrame, Path, Path], str]]]] = {
    "table1": [("table1_loss_curves.png", loss_curves), ("figure3_pairs.png", correspondence_pairs),
               ("figure4_activations.png", activations)],
    "table2": [("table2_lowshot.png", low_shot)],
    "table5e": [("table5e_schedule.png", schedule)],
}


def draw(parts: list[tuple[PaperTable, pd.DataFrame]], workdir: Path, out: Path) -> list[str]:
    """Draw the figures of these tables into `out`; one line per figure: its path and what it
    shows, or why it was skipped. A figure without a single cell to draw is skipped, not an error."""
    said = []
    for table, frame in parts:
        for name, draw_one in FIGURES.get(table.name, []):
            try:
                said.append(f"{out / name}: {draw_one(frame, Path(workdir), out / name)}")
            except figures.NothingToDraw as e:
                said.append(f"{out / name}: skipped: {e}")
    return said
