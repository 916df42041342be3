"""The work behind `orl-bench table`: the rows a paper table needs at a scale, the runs still
missing from the record store, and the steps that make them; built here, in this process (or
under torchrun), or handed as a graph of jobs to a launcher (orl_bench/slurm.py). One plan for
both executors, so a cluster builds exactly what a local build would.

A run is one pretraining seed of a row with the tasks it still lacks records of, merged over
every table asked for, so an artifact is evaluated on all its tasks before the next is built.
"""
from __future__ import annotations

import json
import statistics
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from orl_bench import pipeline
from orl_bench.config import ConfigError, PretrainConfig, TaskConfig, config_hash
from orl_bench.data.sources import COCO_PLUS_SOURCES, CONTENT_KEYED_SOURCES
from orl_bench.engine.checkpoint import MANIFEST, is_complete, pretraining_seconds
from orl_bench.engine.distributed import DistInfo
from orl_bench.registry import METHODS, TASKS
from orl_bench.results.paper import PaperReference, PaperTable
from orl_bench.results.records import CHANCE
from orl_bench.results.tables import RowPlan, of_row, run_name

# --data NAME=PATH: the pretraining data of the COCO or the COCO+ rows, or the tasks that read the dataset
DATA_SOURCES = {"coco": ("pretrain", "coco"), "coco_plus": ("pretrain", "coco_plus"),
                "voc07": (("voc07_svm", "voc07_lowshot"), "voc2007"),
                "imagenet": (("linear_imagenet", "semi_imagenet_1pct", "semi_imagenet_10pct", "knn"), "imagenet"),
                "places205": (("linear_places205",), "places205"), "inat18": (("linear_inat18",), "inat18")}




def data_overrides(data: dict[str, str]) -> tuple[dict[str, list[str]], dict[str, list[str]]]:
    """--data NAME=PATH pairs -> (pretraining overrides of the COCO rows ("coco") and of the COCO+ rows
    ("coco_plus"), task -> task overrides). A COCO+ root holds train2017 too: without --data coco,
    the COCO rows read theirs there."""
    pre: dict[str, list[str]] = {}
    per_task: dict[str, list[str]] = {}
    for name, path in data.items():
        if name not in DATA_SOURCES:
            raise ConfigError(f"--data {name}=...: unknown dataset; expected one of {', '.join(DATA_SOURCES)}")
        target, source = DATA_SOURCES[name]
        sets = [f"data.source={source}", f"data.root={path}"]
        if target == "pretrain":
            pre[name] = sets
        else:
            for task in target:
                per_task.setdefault(task, []).extend(sets)
    if "coco_plus" in pre:
        pre.setdefault("coco", ["data.source=coco", f"data.root={data['coco_plus']}"])
    return pre, per_task


def pretraining_data(method: str, scale: str, coco_plus: bool,
                     pre_data: dict[str, list[str]]) -> tuple[str, ...] | None:
    """The overrides that select a row's pretraining images: the real data given by --data, else the
    scale's own; a COCO+ row of a scale that pretrains on the embedded scenes takes their COCO+
    setting (synth_plus). None: a COCO+ row without COCO+ images (real data, no --data coco_plus)."""
    if not coco_plus:
        return tuple(pre_data.get("coco", ()))
    if "coco_plus" in pre_data:
        return tuple(pre_data["coco_plus"])
    if not pre_data and pipeline.load_pretrain_config(method, scale, []).data.source == "synth":
        return ("data.source=synth_plus",)
    return None

def _label(ref: PaperReference, method: str) -> str:
    return ref.names.get("methods", {}).get(method, method)


def plan_rows(table: PaperTable, scale: str, ref: PaperReference, pre_data: dict[str, list[str]]) -> list[RowPlan]:
    rows = [RowPlan("Chance", CHANCE, None, {})]
    if table.kind == "main":
        for row in (*table.rows, *table.extra_rows):
            label, paper, coco_plus = row.label, dict(row.values), row.pretrain_data == "coco_plus"
            if row.method != pipeline.RANDOM and row.method not in METHODS.names():
                rows.append(RowPlan(label, row.method, None, paper, "not implemented in orl-bench"))
            elif (data := pretraining_data(row.method, scale, coco_plus, pre_data)) is None:
                rows.append(RowPlan(label, row.method, None, paper,
                                    "dataset absent: COCO+ is train2017 + unlabeled2017 (--data coco_plus=PATH)",
                                    coco_plus))
            else:
                rows.append(RowPlan(label, row.method, scale, paper, None, coco_plus, data))
        return rows
    letter = table.name.removeprefix("table")  # 5a .. 5e
    for method in dict.fromkeys(row.method for row in table.rows):
        folder = pipeline.recipe_folder(method)
        for recipe in [scale] + sorted(p.stem for p in folder.glob(f"{scale}_{letter}_*.yaml")):
            variant = pipeline.paper_variant(method, recipe)
            paper = {c.key: v for c in table.columns
                     if (v := ref.lookup(c.task, c.metric, method, k=c.k, **variant)) is not None}
            rows.append(RowPlan(f"{_label(ref, method)} [{recipe}]", method, recipe, paper,
                                data=pretraining_data(method, recipe, False, pre_data)))
    return rows


def table_tasks(table: PaperTable) -> list[str]:
    return sorted({c.task for c in table.columns})


def task_config(task: str, recipe: str, task_data: dict[str, list[str]]) -> TaskConfig:
    """The benchmark config the runs of pretraining recipe `recipe` are evaluated with."""
    return pipeline.load_task_config(task, pipeline.benchmark_recipe(recipe), task_data.get(task, []))


def task_recipe_hash(task: str, recipe: str, task_data: dict[str, list[str]]) -> str:
    return pipeline.task_config_hash(task_config(task, recipe, task_data))


def seeded(row: RowPlan, seed: int) -> list[str]:
    """The pretraining overrides of a row's run with `seed`."""
    return [*row.data, f"train.seed={seed}"]


@dataclass
class Built:
    """What a build did; a second run over unchanged inputs finds everything and builds nothing."""
    pretrained: int = 0
    evaluated: int = 0


@dataclass(frozen=True)
class Run:
    """One seed of a row's pretraining and the tasks it still lacks records of."""
    row: RowPlan
    seed: int
    tasks: tuple[str, ...]


def _stored(records: list[dict[str, Any]], row: RowPlan, seed: int, task: str, task_hash: str) -> bool:
    return any(r["task"] == task and of_row(r, row) and r.get("seed") == seed and r.get("task_config_hash") == task_hash
               for r in records)


def missing_runs(plans: list[tuple[PaperTable, list[RowPlan]]], seeds: int, records: list[dict[str, Any]],
                 task_data: dict[str, list[str]]) -> list[Run]:
    """Each row and seed of the tables in `plans` with tasks that have no records under the benchmark
    config that runs now, in the tables' order; a run that several tables share (the same method,
    recipe and data) appears once, with the tasks of all of them."""
    runs: dict[tuple, Run] = {}
    for table, rows in plans:
        tasks = table_tasks(table)
        for row in rows:
            for seed in range(seeds if row.recipe else 0):
                todo = [t for t in tasks
                        if not _stored(records, row, seed, t, task_recipe_hash(t, row.recipe, task_data))]
                key = (row.method, row.recipe, row.data, row.coco_plus, seed)
                if todo:
                    known = runs.get(key, Run(row, seed, ()))
                    runs[key] = Run(known.row, seed, (*known.tasks, *(t for t in todo if t not in known.tasks)))
    return list(runs.values())


def planned_configs(runs: list[Run], task_data: dict[str, list[str]]
                    ) -> tuple[list[tuple[PretrainConfig, list[str]]], list[TaskConfig]]:
    """What building `runs` runs: the pretraining config of each (method, recipe, data) with its
    overrides, and each benchmark config, once (seeds change neither's recipe nor data)."""
    pretraining: dict[tuple[str, str, tuple[str, ...]], tuple[PretrainConfig, list[str]]] = {}
    benchmarks: dict[tuple[str, str], TaskConfig] = {}
    for run in runs:
        row = run.row
        if (row.method, row.recipe, row.data) not in pretraining:
            overrides = seeded(row, run.seed)
            pretraining[row.method, row.recipe, row.data] = (
                pipeline.load_pretrain_config(row.method, row.recipe, overrides), overrides)
        for task in run.tasks:
            benchmark = (task, pipeline.benchmark_recipe(row.recipe))
            if benchmark not in benchmarks:
                benchmarks[benchmark] = task_config(task, row.recipe, task_data)
    return list(pretraining.values()), list(benchmarks.values())


def build(runs: list[Run], workdir: Path, task_data: dict[str, list[str]], info: DistInfo,
          records: list[dict[str, Any]], dry_run: bool, say: Callable[[str], None]) -> Built:
    """Pretrain (or reuse) each run's artifact, then evaluate it on its tasks (or reuse its records);
    with `dry_run`, only say what is missing. In one process each artifact is evaluated before the
    next is built, so an interrupted build leaves whole rows. Under torchrun every process
    pretrains every run and runs the distributed tasks (Mask R-CNN) first; the others run on rank 0
    after them, so no process waits for another's single-process evaluation inside a collective."""
    built = Built()
    if dry_run:
        for run in runs:
            cfg = pipeline.load_pretrain_config(run.row.method, run.row.recipe, seeded(run.row, run.seed))
            stored = stored_artifact(cfg, workdir)
            say(f"would build: {run_name(run.row)} seed {run.seed}: "
                + (f"reuse {stored.name}" if stored else "pretrain (or reuse its artifact)")
                + f", then evaluate {', '.join(run.tasks)}; "
                + estimate(workdir, records, run.row, list(run.tasks), task_data, stored is None))
        return built
    for batch in [runs] if info.distributed else [[run] for run in runs]:
        pretrained = []
        for run in batch:
            overrides = seeded(run.row, run.seed)
            cfg = pipeline.load_pretrain_config(run.row.method, run.row.recipe, overrides)
            folder, timings = pipeline.ensure_pretrained(cfg, run.row.recipe, workdir, info, overrides)
            built.pretrained += not timings.get("pretrain_reused", False)
            pretrained.append((run, cfg, folder))
        for distributed in (True, False):
            if not (distributed or info.is_main):
                break
            for run, cfg, folder in pretrained:
                ref, extra = pipeline.artifact_ref(folder), pipeline.record_fields(cfg, folder)
                for task in (t for t in run.tasks if TASKS.get(t).distributed == distributed):
                    _, reused = pipeline.evaluate(task_config(task, run.row.recipe, task_data), ref, workdir,
                                                  info.device, extra, info)
                    built.evaluated += not reused
                    say(f"{'reused' if reused else 'evaluated'}: {run_name(run.row)} seed {run.seed} on {task}")
    return built


@dataclass(frozen=True)
class Step:
    """A unit of a plan for a scheduler: the orl-bench command that makes one artifact, the earlier
    stages' inputs of one, or one evaluation's records, and the steps it waits for."""
    key: str  # what it makes; the same in every plan of a work directory, so a queued step is found again
    argv: tuple[str, ...]
    after: tuple[str, ...] = ()
    # pretraining, a sharded stage, a distributed task: the launcher's whole allocation; else one process
    whole_allocation: bool = True


def _sets(overrides: list[str]) -> tuple[str, ...]:
    return tuple(arg for o in overrides for arg in ("--set", o))


def steps(runs: list[Run], workdir: Path, task_data: dict[str, list[str]]) -> list[Step]:
    """`runs` as steps, in an order where every step comes after those it waits for: each artifact not
    yet built (a multi-stage method's earlier stages, then its inputs, each a step of its own), then
    each missing evaluation as `orl-bench run`, which reuses the artifact and writes the same records
    as a local build. A step several runs share (an earlier stage) appears once. A multi-stage
    method's own artifact cannot be looked up before its inputs exist: its inputs and last stage are
    steps whenever one of its evaluations is missing, and reuse what is already built."""
    planned: dict[str, Step] = {}
    where = ("--workdir", str(Path(workdir).absolute()))

    def add(step: Step) -> str:
        planned.setdefault(step.key, step)
        return step.key

    for run in runs:
        row, overrides = run.row, seeded(run.row, run.seed)
        cfg = pipeline.load_pretrain_config(row.method, row.recipe, overrides)
        pretrain = ("pretrain", "--method", row.method, "--recipe", row.recipe, *_sets(overrides), *where)
        after: tuple[str, ...] = ()
        if pipeline.is_multistage(cfg):
            stages = tuple(
                add(Step(f"artifact {pipeline.artifact_dir(workdir, stage).name}",
                         ("pretrain", "--method", method, "--recipe", recipe,
                          *_sets(pipeline.stage_overrides(overrides)), *where)))
                for method, recipe in METHODS.get(row.method).earlier_stages(cfg)
                if stored_artifact(stage := pipeline.stage_config(method, recipe, overrides), workdir) is None)
            name = f"{row.method} config {config_hash(cfg)[:12]}"  # its folder's key holds its inputs' hashes
            inputs = add(Step(f"inputs of {name}", (*pretrain, "--inputs-only"), stages))
            after = (add(Step(f"artifact {name}", pretrain, (inputs,))),)
        elif stored_artifact(cfg, workdir) is None:
            after = (add(Step(f"artifact {pipeline.artifact_dir(workdir, cfg).name}", pretrain)),)
        for task in run.tasks:
            add(Step(f"records of {run_name(row)} seed {run.seed} on {task}",
                     ("run", "--method", row.method, "--recipe", row.recipe, "--task", task, *_sets(overrides),
                      *_sets([f"task.{o}" for o in task_data.get(task, [])]), *where),
                     after, TASKS.get(task).distributed))
    return list(planned.values())


def stored_artifact(cfg: PretrainConfig, workdir: Path) -> Path | None:
    """The complete artifact a single-stage run of `cfg` would reuse. None when there is none, or
    when it cannot be known without building: a multi-stage method's key holds its earlier stages'
    outputs, a folder source's its images."""
    if pipeline.is_multistage(cfg) or cfg.data.source in CONTENT_KEYED_SOURCES:
        return None
    folder = pipeline.artifact_dir(workdir, cfg)
    return folder if is_complete(folder) else None


def estimate(workdir: Path, records: list[dict[str, Any]], row: RowPlan, tasks: list[str],
             task_data: dict[str, list[str]], pretraining: bool = True) -> str:
    """A cost estimate from this work directory's history: the median wall time of earlier
    pretraining runs of the same method and recipe (a multi-stage method's last stage only;
    none if `pretraining` is false), and of earlier evaluations of the same benchmark recipe (any
    method), counting only those of the task's current configuration where there are any (a
    changed protocol, such as a learning-rate grid, can cost ten times the old one); `unknown`
    where there is none."""
    parts = [] if not pretraining else [_pretraining_estimate(workdir, records, row)]
    for task in tasks:
        runs = [r for r in _one_per_run(records) if r["task"] == task
                and r.get("recipe") and pipeline.benchmark_recipe(r["recipe"]) == pipeline.benchmark_recipe(row.recipe)]
        current = task_recipe_hash(task, row.recipe, task_data)
        seconds = [r["wall_time_s"] for r in [r for r in runs if r.get("task_config_hash") == current] or runs]
        parts.append(f"{task} ~{statistics.median(seconds):.0f} s" if seconds else f"{task} unknown")
    return "estimated " + ", ".join(parts)


def _pretraining_estimate(workdir: Path, records: list[dict[str, Any]], row: RowPlan) -> str:
    """From the artifacts of this work directory, else from the build times records carry (a work
    directory seeded with committed records has no artifacts)."""
    trained = [seconds for manifest in (Path(workdir) / "artifacts").glob(f"{row.method}-*/{MANIFEST}")
               if (facts := json.loads(manifest.read_text())).get("recipe") == row.recipe
               and (facts.get("data", {}).get("source") in COCO_PLUS_SOURCES) == row.coco_plus
               and (seconds := pretraining_seconds(manifest.parent)) is not None]
    if not trained:
        trained = list({r["artifact_sha256"]: r["pretraining_s"] for r in records
                        if "pretraining_s" in r and of_row(r, row)}.values())
    return f"pretraining ~{statistics.median(trained):.0f} s" if trained else "pretraining time unknown"


def _one_per_run(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One record per evaluation run (a run writes one record per layer or metric)."""
    return list({(r["task"], r["artifact_sha256"], r.get("task_config_hash"), r.get("timestamp")): r
                 for r in records}.values())


