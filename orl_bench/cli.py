"""`orl-bench`: pretrain SSL methods, evaluate them on the paper's benchmarks, report tables.

Everything a command writes goes under the work directory (--workdir, else $ORL_BENCH_HOME,
else ./orl_bench_home): generated data, artifacts, feature caches, result records.
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import time
from pathlib import Path

import torch

from orl_bench import pipeline, plan, preflight, rehearse, slurm
from orl_bench.config import (RECIPE_KINDS, ConfigError, DataConfig, PretrainConfig, TaskConfig, apply_overrides,
                              dump_yaml, find_recipe, from_dict, load_yaml_recipe, recipe_root)
from orl_bench.data.images import DatasetLayoutError
from orl_bench.data.sources import SYNTH_SOURCES
from orl_bench.engine.checkpoint import CheckpointError, load_backbone, read_manifest
from orl_bench.engine.checkpoint_formats import FORMATS as CHECKPOINT_FORMATS
from orl_bench.engine.checkpoint_formats import describe, load_checkpoint, summary
from orl_bench.engine.distributed import init_distributed
from orl_bench.engine.export import FORMATS, export
from orl_bench.engine.trainer import TrainingDiverged
from orl_bench.methods.orl.correspondence import Correspondences
from orl_bench.methods.orl.pair_quality import pair_quality
from orl_bench.models.backbones import ARCHS
from orl_bench.io import atomic_write_text, warn_skipped
from orl_bench.registry import METHODS, TASKS, RegistryError
from orl_bench.results import diagnose, table_figures, tables
from orl_bench.results.figures import correspondence_grid, learning_curves, low_shot_curves, result_bars
from orl_bench.results.records import load_records, read_records, records_path
from orl_bench.results.report import (at_a_glance, glance_markdown, run_glance, summarize, timings_line, to_csv,
                                      to_markdown)

# Errors answered with one line and exit status 2: bad input, a failing disk (OSError: unreadable,
# missing or wrong-kind paths, a full disk; what was written before stays whole) and a diverged
# training run (its last checkpoint stays whole), and Slurm refusing or losing a submitted job.
USER_ERRORS = (ConfigError, RegistryError, DatasetLayoutError, CheckpointError, OSError, ValueError,
               TrainingDiverged, slurm.SlurmError)


def workdir_of(args: argparse.Namespace) -> Path:
    workdir = Path(args.workdir or os.environ.get("ORL_BENCH_HOME") or "orl_bench_home").expanduser()
    if workdir.exists() and not workdir.is_dir():
        raise ConfigError(f"work directory {workdir} is a file; expected a folder (--workdir or $ORL_BENCH_HOME)")
    return workdir


def add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--recipe", default="default",
                   help="scale preset (tiny: tests, default: the embedded laptop run, paper: ResNet-50 on COCO) "
                        "or a path to your own YAML recipe")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a recipe value, e.g. --set optim.lr=0.3 (repeatable); in `run`, keys starting "
                        "with task. go to the benchmark recipe")
    p.add_argument("--workdir", help="where data, artifacts, features and records go (default $ORL_BENCH_HOME "
                                     "or ./orl_bench_home)")


def seed_overrides(args: argparse.Namespace) -> list[str]:
    return args.overrides + ([f"train.seed={args.seed}"] if args.seed is not None else [])


def check_run(args: argparse.Namespace) -> tuple[list[str], TaskConfig, PretrainConfig | None]:
    """`run`'s configs, checked before hours of training (and before a Slurm job is submitted):
    (pretraining overrides, benchmark config, pretraining config or None with --checkpoint)."""
    if args.records_out and Path(args.records_out).is_dir():
        raise ConfigError(f"--records-out {args.records_out} is a directory; expected a file path for the "
                          "run's records (JSON lines)")
    workdir = workdir_of(args)
    pre_over, task_over = pipeline.split_overrides(seed_overrides(args))
    task_cfg = pipeline.load_task_config(args.task, args.task_recipe or pipeline.benchmark_recipe(args.recipe),
                                         task_over)
    cfg = None if args.checkpoint else pipeline.load_pretrain_config(args.method, args.recipe, pre_over)
    pipeline.paper_reference()  # a plugin's paper numbers, printed at the end: a bad file is refused now
    preflight.check(workdir, [(cfg, pre_over)] if cfg else [], [task_cfg],
                    [("work directory", workdir)]
                    + ([("--records-out folder", Path(args.records_out).parent)] if args.records_out else []))
    return pre_over, task_cfg, cfg


def cmd_run(args: argparse.Namespace) -> int:
    info = init_distributed()
    workdir, (pre_over, task_cfg, cfg) = workdir_of(args), check_run(args)
    t0 = time.perf_counter()
    if args.checkpoint:
        ref, ckpt = pipeline.checkpoint_ref(Path(args.checkpoint), args.arch, args.width, args.label)
        extra, timings = {"config_hash": ref.sha256, "checkpoint_format": ckpt.format.name, "seed": None}, {}
        if info.is_main:
            print(summary(ckpt))
    else:
        folder, timings = pipeline.ensure_pretrained(cfg, args.recipe, workdir, info, pre_over)
        if not (info.is_main or TASKS.get(args.task).distributed):
            return 0
        ref = pipeline.artifact_ref(folder)
        extra = pipeline.record_fields(cfg, folder)
    t_eval = time.perf_counter()
    records, reused = pipeline.evaluate(task_cfg, ref, workdir, info.device, extra, info)
    if not info.is_main:
        return 0
    timings.update({"eval_s": round(time.perf_counter() - t_eval, 2), "eval_reused": reused,
                    "total_s": round(time.perf_counter() - t0, 2)})
    if args.full:
        print(to_markdown(summarize(records, pipeline.paper_reference())))
        print("timings: " + json.dumps(timings))
    else:
        print(run_glance(records, load_records(workdir), pipeline.paper_reference()))
        print(timings_line(timings))
    print(f"records {'already stored' if reused else 'appended'} in {records_path(workdir)}")
    if args.records_out:
        atomic_write_text(Path(args.records_out), "".join(json.dumps(r, sort_keys=True) + "\n" for r in records))
    return 0


def check_pretrain(args: argparse.Namespace) -> None:
    """What a Slurm job of `pretrain` would fail on at once: the recipe, its data, the work directory."""
    overrides, workdir = seed_overrides(args), workdir_of(args)
    preflight.check(workdir, [(pipeline.load_pretrain_config(args.method, args.recipe, overrides), overrides)],
                    writes=[("work directory", workdir)])


def cmd_pretrain(args: argparse.Namespace) -> int:
    info = init_distributed()
    overrides = seed_overrides(args)
    cfg = pipeline.load_pretrain_config(args.method, args.recipe, overrides)
    if args.inputs_only:
        if not pipeline.is_multistage(cfg):
            raise ConfigError(f"--inputs-only: method '{args.method}' trains from its images alone; it has no "
                              "earlier stages to build")
        inputs, timings = pipeline.build_inputs(cfg, workdir_of(args), info, overrides)
        if info.is_main:
            print("".join(f"input {name}: {path}\n" for name, path in inputs.items())
                  + f"timings: {json.dumps(timings)}")
        return 0
    folder, timings = pipeline.ensure_pretrained(cfg, args.recipe, workdir_of(args), info, overrides)
    if info.is_main:
        print(f"artifact: {folder}\ntimings: {json.dumps(timings)}")
    return 0


def check_eval(args: argparse.Namespace) -> TaskConfig:
    """`eval`'s benchmark config, checked with the backbone given (one, and an artifact's manifest)."""
    overrides = [o[len("task."):] if o.startswith("task.") else o for o in args.overrides]
    task_cfg = pipeline.load_task_config(args.task, args.recipe, overrides)
    if bool(args.artifact) == bool(args.checkpoint):
        raise ConfigError("give exactly one of --artifact DIR (an orl-bench artifact) or --checkpoint FILE")
    if args.artifact:
        read_manifest(Path(args.artifact))  # a mistyped folder fails here, not in a queued job
    return task_cfg


def cmd_eval(args: argparse.Namespace) -> int:
    workdir, info = workdir_of(args), init_distributed()
    if not (info.is_main or TASKS.get(args.task).distributed):
        return 0
    task_cfg = check_eval(args)
    if args.artifact:
        ref = pipeline.artifact_ref(Path(args.artifact))
        extra = pipeline.record_fields(pipeline.artifact_config(Path(args.artifact)), Path(args.artifact))
    else:
        ref, ckpt = pipeline.checkpoint_ref(Path(args.checkpoint), args.arch, args.width, args.label)
        extra = {"config_hash": ref.sha256, "checkpoint_format": ckpt.format.name}
        if info.is_main:
            print(summary(ckpt))
    records, reused = pipeline.evaluate(task_cfg, ref, workdir, info.device, extra, info)
    if not info.is_main:
        return 0
    if reused:
        print("(stored records for this backbone and task config; delete them from the record store to recompute)")
    print(to_markdown(summarize(records, pipeline.paper_reference())))
    return 0


def cmd_table(args: argparse.Namespace) -> int:
    workdir, info = workdir_of(args), init_distributed()
    if args.seeds < 1:
        raise ConfigError(f"--seeds is the number of pretraining seeds per row (0..N-1); expected >= 1, got {args.seeds}")
    pairs = [item.partition("=") for item in args.data]
    if any(not sep or not value for _, sep, value in pairs):
        raise ConfigError(f"--data takes NAME=PATH pairs, got {args.data}")
    data = {name: value for name, _, value in pairs}
    pre_data, task_data = plan.data_overrides(data)
    ref, t0 = pipeline.paper_reference(), time.perf_counter()
    numbers = list(tables.TABLES) if "all" in args.number else list(dict.fromkeys(args.number))
    plans_of = {n: [(t, plan.plan_rows(t, args.recipe, ref, pre_data)) for t in map(ref.table, tables.TABLES[n])]
                for n in numbers}
    runs = [] if args.no_build else plan.missing_runs([p for plans in plans_of.values() for p in plans], args.seeds,
                                                      load_records(workdir), task_data)
    # checked before anything is built or submitted: what the build runs (nothing with --no-build) and
    # the folders written (none in a dry run)
    pretraining, benchmarks = plan.planned_configs(runs, task_data)
    writes = [] if args.dry_run else [("--out", Path(args.out)), ("--figures", Path(args.figures))]
    if not (args.dry_run or args.no_build):
        writes.append(("work directory", workdir))
    preflight.check(workdir, pretraining, benchmarks, writes)
    if args.launcher == "slurm" and runs:
        steps = plan.steps(runs, workdir, task_data)
        if args.dry_run:
            for step in steps:
                print(f"would submit: {step.key}" + (f" (after {'; '.join(step.after)})" if step.after else ""))
            return 0
        # the tables are written by a last job, after every step's, from the records they made
        return slurm.submit_steps(args, workdir, steps, [*args.job_command, "--no-build"])
    built = plan.build(runs, workdir, task_data, info, load_records(workdir), args.dry_run, print)
    if args.dry_run or not info.is_main:
        return 0
    records = load_records(workdir)
    for number in numbers:
        parts = []
        for table, rows in plans_of[number]:
            hashes = {(c.task, row.recipe): plan.task_recipe_hash(c.task, row.recipe, task_data)
                      for row in rows if row.recipe for c in table.columns}
            parts.append((table, tables.fill(table, rows, records, args.seeds, hashes)))
        notes = tables.provenance(parts, records, args.recipe, args.seeds, data, time.perf_counter() - t0, workdir)
        paths = tables.write_table(number, parts, Path(args.out), notes)
        print(paths[0].read_text())
        print("wrote " + ", ".join(map(str, paths)))
        for line in table_figures.draw(parts, workdir, Path(args.figures)):
            print(f"figure {line}")
    print(f"built: {built.pretrained} pretraining run(s), {built.evaluated} evaluation(s) "
          f"in {time.perf_counter() - t0:.0f} s")
    return 0


def cmd_jobs(args: argparse.Namespace) -> int:
    workdir = workdir_of(args)
    entries = slurm.read_ledger(workdir)
    if not entries:
        print(f"no Slurm jobs were submitted from {workdir} ({slurm.ledger_path(workdir)} is absent)")
        return 0
    if args.cancel:
        cancelled = slurm.cancel(entries)
        print(f"cancelled {len(cancelled)} job(s)" + (f": {', '.join(cancelled)}" if cancelled else
                                                      " (none was pending or running)"))
        return 0
    states = slurm.job_states(entries)
    for entry in entries:
        print(f"{entry['job_id']:>8}  {states[entry['job_id']]:<10}  {entry['key']}\n"
              f"{'':>8}  logs: {entry['stdout']} {entry['stderr']}")
    return 0


def cmd_rehearse(args: argparse.Namespace) -> int:
    info = init_distributed()
    if info.distributed:
        raise ConfigError("rehearse runs in one process (it measures one device); start it without torchrun")
    height, sep, width = args.image_size.partition("x")
    if not (sep and height.isdigit() and width.isdigit()):
        raise ConfigError(f"--image-size takes HEIGHTxWIDTH in pixels, e.g. 480x640; got '{args.image_size}'")
    workdir = workdir_of(args)
    preflight.check(workdir, writes=[("work directory", workdir)]
                    + ([("--out folder", Path(args.out).parent)] if args.out else []))  # not after the whole run
    plan = rehearse.Plan(args.recipe, args.methods and tuple(args.methods),
                         None if args.tasks is None else tuple(args.tasks), args.steps, args.batch,
                         args.gpus, (int(height), int(width)), tuple(args.overrides), args.extrapolate)
    runner = rehearse.Rehearsal(plan, workdir, info)
    report = runner.run()
    paths = rehearse.write(report, runner.root / "rehearsal")
    if args.out:
        paths += rehearse.write(report, Path(args.out))
    print(rehearse.to_markdown(report), end="")
    print(f"{report['failed']} failed; wrote " + ", ".join(map(str, paths)))
    return 1 if report["failed"] else 0


def cmd_report(args: argparse.Namespace) -> int:
    sources = [Path(f) for f in args.records] if args.records else [records_path(workdir_of(args))]
    for f in sources if args.records else ():
        if not f.is_file():
            raise ConfigError(f"--records {f}: {'is a directory' if f.is_dir() else 'no such file'}; expected a "
                              "JSON-lines record file")
    records = []
    for f in sources:
        found, skipped = read_records(f)
        if skipped and not found:
            raise ConfigError(f"{f} is not a JSON-lines record file (no line of it is a result record; "
                              f"line {skipped[0].removeprefix(f'{f}:')})")
        warn_skipped(skipped)
        records += found
    if not records:
        print(f"no records in {', '.join(map(str, sources))}", file=sys.stderr)
        return 1
    if args.task:
        tasks = sorted({r["task"] for r in records})
        records = [r for r in records if r["task"] == args.task]
        if not records:
            raise ConfigError(f"no records of task '{args.task}' in {', '.join(map(str, sources))}; "
                              f"they hold tasks: {', '.join(tasks)}")
    rows = summarize(records, pipeline.paper_reference())
    if args.full:
        text = to_csv(rows) if args.format == "csv" else to_markdown(rows)
    else:
        glance = at_a_glance(records, pipeline.paper_reference())
        text = glance.to_csv(index=False) if args.format == "csv" else glance_markdown(glance)
    if args.out:
        atomic_write_text(Path(args.out), text)
    print(text, end="")
    if args.figure:
        result_bars(rows, Path(args.figure), args.layer)
        print(f"wrote {args.figure}")
    if args.curves:
        learning_curves(rows, Path(args.curves), args.layer)
        print(f"wrote {args.curves}")
    if args.lowshot:
        low_shot_curves(rows, Path(args.lowshot), args.layer)
        print(f"wrote {args.lowshot}")
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    if args.what == "methods":
        for name in METHODS.names():
            print(f"{name:16s} {METHODS.source(name)}")
        print(f"{pipeline.RANDOM:16s} (built in: the recipe's randomly initialised backbone)")
    elif args.what == "tasks":
        for name in TASKS.names():
            print(f"{name:16s} {TASKS.source(name)}")
    else:
        for kind in RECIPE_KINDS:
            for path in sorted(recipe_root(kind).glob("*/*.yaml")):
                if path.parent.name.startswith("_"):  # shared bases (_data, _scales), not recipes
                    continue
                print(f"{kind}/{path.parent.name}/{path.stem}")
        for name in METHODS.names():  # plugins from other packages ship their own recipes
            folder = METHODS.get(name).recipes_dir
            for path in sorted(folder.glob("*.yaml")) if folder else ():
                print(f"pretrain/{name}/{path.stem} ({folder})")
    return 0


def cmd_data(args: argparse.Namespace) -> int:
    data = apply_overrides(load_yaml_recipe(find_recipe("pretrain", "byol", args.recipe)), args.overrides)
    cfg = from_dict(DataConfig, data.get("data", {}), "data")
    if cfg.source not in SYNTH_SOURCES:
        raise ConfigError(f"`data synth` generates the embedded scenes (data.source {' or '.join(SYNTH_SOURCES)}); "
                          f"the recipe's data.source is {cfg.source}")
    t0 = time.perf_counter()
    root = pipeline.pretrain_images(cfg, workdir_of(args))
    print(f"embedded scenes ready: {len(root.paths)} pretraining images ({root.key}) in "
          f"{time.perf_counter() - t0:.1f}s\n{dump_yaml(cfg.synth)}")
    return 0


def cmd_viz(args: argparse.Namespace) -> int:
    workdir, info = workdir_of(args), init_distributed()
    overrides = seed_overrides(args)
    cfg = pipeline.load_pretrain_config(args.method, args.recipe, overrides)
    images = pipeline.pretrain_images(cfg.data, workdir)
    inputs, _ = pipeline.build_inputs(cfg, workdir, info, overrides, images)
    if "correspondences" not in inputs:
        raise ConfigError(f"method '{args.method}' has no stage-2 correspondences to draw (try --method orl)")
    path = inputs["correspondences"]
    out = Path(args.out or workdir / "figures" / f"pairs-{path.parent.name}.png")
    c = Correspondences.load(path, n_images=len(images.paths))
    queries = correspondence_grid(c, images.paths, out, rows=args.rows, pairs_per_row=args.pairs,
                                  seed=args.sample_seed)
    print(f"wrote {out} (query images at positions {queries}; pairs from {path})")
    if all(s.categories for s in images.coco):  # ground truth to judge the pairs by
        print("pair quality against ground truth: " + json.dumps(pair_quality(c, images.coco)))
    return 0


def cmd_diagnose(args: argparse.Namespace) -> int:
    workdir = workdir_of(args)
    pre_over, task_over = pipeline.split_overrides(seed_overrides(args))
    if args.artifact:
        if pre_over:
            raise ConfigError(f"--artifact fixes the pretraining config; only task.* overrides apply, got {pre_over}")
        folder, recipe = Path(args.artifact), read_manifest(Path(args.artifact)).get("recipe", args.recipe)
    else:
        cfg = pipeline.load_pretrain_config(args.method, args.recipe, pre_over)
        build = ["orl-bench", "pretrain", "--method", args.method, "--recipe", args.recipe,
                 *(a for o in pre_over for a in ("--set", o)), *(["--workdir", args.workdir] if args.workdir else [])]
        folder, recipe = diagnose.find_artifact(workdir, cfg, shlex.join(build)), args.recipe
    task_cfg = None
    if args.eval_layers:
        task_cfg = pipeline.load_task_config(diagnose.TASK, args.task_recipe or pipeline.benchmark_recipe(recipe),
                                             task_over + [f"features.layers=[{args.eval_layers}]"])
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    report = diagnose.diagnose(folder, workdir, device, task_cfg, args.images, args.sample_seed)
    print(diagnose.write_report(workdir, report), end="")
    print(f"wrote {workdir / 'diagnostics' / folder.name}.json and .md")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    backbone, manifest = load_backbone(Path(args.artifact))
    out = Path(args.out)
    export(backbone, manifest, args.format, out)
    print(f"wrote {out} ({args.format})")
    return 0


def cmd_inspect(args: argparse.Namespace) -> int:
    print(describe(load_checkpoint(Path(args.checkpoint), args.arch, args.width)), end="")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="orl-bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)

    def checkpoint_args(p: argparse.ArgumentParser, checkpoint: bool = True) -> None:
        if checkpoint:
            p.add_argument("--checkpoint", help="evaluate the ResNet of a local checkpoint file instead of "
                           "pretraining: torchvision or timm weights, or a checkpoint of MoCo, OpenSelfSup/mmselfsup "
                           "(ORL), solo-learn, Lightning, VISSL, DINO, BYOL ports or detectron2 (orl-bench inspect FILE)")
            p.add_argument("--label", default="checkpoint", help="method name recorded for --checkpoint")
        p.add_argument("--arch", choices=ARCHS, help="architecture of the checkpoint (default: read from its weights; "
                                                     "given, it must agree with them)")
        p.add_argument("--width", type=int, help="stem width of the checkpoint, 64 = torchvision (default: read "
                                                 "from its weights; given, it must agree with them)")

    p = sub.add_parser("run", help="the whole chain for one (method, task): data, pretrain or reuse, evaluate, "
                                   "record, print the table")
    p.add_argument("--method", default="byol", help="pretraining method (orl-bench list methods), or random")
    p.add_argument("--task", default="voc07_svm", help="benchmark (orl-bench list tasks)")
    p.add_argument("--seed", type=int, help="pretraining seed (same as --set train.seed=N); recorded")
    p.add_argument("--task-recipe", help="benchmark recipe (default: the scale of --recipe, e.g. default for "
                                         "default_5a_intra_only), so ablations are evaluated like their baseline")
    p.add_argument("--records-out", help="also write this run's records (new or already stored) to this JSON-lines "
                                         "file, so a script that launches runs collects exactly their results; the "
                                         "store in the workdir holds every run's")
    p.add_argument("--full", action="store_true", help="print every layer's record (the table `report --full` "
                   "prints) and the stage times as JSON, instead of the at-a-glance view")
    add_common(p)
    checkpoint_args(p)
    slurm.add_launcher_args(p)
    p.set_defaults(fn=cmd_run, check=check_run)

    p = sub.add_parser("pretrain", help="train (or resume) a method; under torchrun for many GPUs or nodes, or "
                                        "as a Slurm job (--launcher slurm)")
    p.add_argument("--method", required=True)
    p.add_argument("--seed", type=int)
    p.add_argument("--inputs-only", action="store_true",
                   help="build (or reuse) only the earlier stages a multi-stage method trains from (ORL: stage 1 "
                   "and stage 2's correspondences), then stop: so a scheduler can run each stage as a job of its own")
    add_common(p)
    slurm.add_launcher_args(p)
    p.set_defaults(fn=cmd_pretrain, check=check_pretrain)

    p = sub.add_parser("eval", help="evaluate an existing artifact or checkpoint on one task")
    p.add_argument("--task", required=True)
    p.add_argument("--artifact", help="an orl-bench artifact folder (with manifest.json)")
    add_common(p)
    checkpoint_args(p)
    slurm.add_launcher_args(p)
    p.set_defaults(fn=cmd_eval, check=check_eval)

    p = sub.add_parser("report", help="all result records at a glance: per task, each method beside chance, random "
                       "init and the paper's number")
    p.add_argument("--task", help="only this task")
    p.add_argument("--full", action="store_true", help="one row per grouping key (layer, setup hash, variant, ...) "
                   "instead of the at-a-glance view (per task cell: method, value at the best layer, chance, random, "
                   "paper): to see every layer, or why two runs of a method were not averaged")
    p.add_argument("--format", choices=("markdown", "csv"), default="markdown")
    p.add_argument("--out", help="also write the table to this file")
    p.add_argument("--figure", help="also draw the rows as a bar chart (mean ± std, chance line) to this PNG")
    p.add_argument("--curves", help="also draw the rows against pretraining epochs (one line per method setting, "
                   "random and chance as levels) to this PNG: does a method's lead hold as training grows?")
    p.add_argument("--lowshot", help="also draw low-shot rows against k (one line per method setting, a band of "
                   "1 std over seeds, chance as a level) to this PNG: Table 2 as a plot")
    p.add_argument("--layer", default="res5", help="the layer the figures show")
    p.add_argument("--records", nargs="+", help="read these JSON-lines record files (e.g. the committed ones under "
                   "results/) instead of the work directory's record store")
    p.add_argument("--workdir")
    p.set_defaults(fn=cmd_report)

    p = sub.add_parser("table", help="regenerate the paper's Table N (several, or all): build the missing runs "
                       "through the caches, write results/tables/table<N>.{md,csv,tex} beside the paper's numbers")
    p.add_argument("number", nargs="+", choices=(*tables.TABLES, "all"),
                   help="one or more tables; their missing runs are built together, each artifact evaluated on every "
                   "task of them before the next is trained")
    p.add_argument("--recipe", default="default", help="the scale of every run: tiny (tests), default (the embedded "
                   "laptop run), paper (ResNet-50 on real data; give --data)")
    p.add_argument("--seeds", type=int, default=1, help="pretraining seeds 0..N-1 per row; cells show mean ± std")
    p.add_argument("--data", nargs="*", default=[], metavar="NAME=PATH",
                   help=f"real datasets by path ({', '.join(plan.DATA_SOURCES)}); without, the embedded scenes "
                   "(the COCO+ rows: train2017 + unlabeled2017 of the scenes, data.source synth_plus)")
    p.add_argument("--dry-run", action="store_true", help="only list what would be built")
    p.add_argument("--no-build", action="store_true", help="write the tables from the records as they are, "
                   "building nothing (cells not run stay empty): e.g. from a partial sweep")
    p.add_argument("--out", default="results/tables", help="where the tables are written")
    p.add_argument("--figures", default="results/figures", help="where the tables' figures are written (loss "
                   "curves, Figures 3 and 4 with Table 1; low-shot curves with Table 2; schedule curves with Table 5)")
    p.add_argument("--workdir")
    slurm.add_launcher_args(p)
    p.set_defaults(fn=cmd_table, plans_its_jobs=True)

    p = sub.add_parser("jobs", help="the Slurm jobs submitted from a work directory: job id, Slurm's state, what "
                       "each makes, its logs")
    p.add_argument("--workdir")
    p.add_argument("--cancel", action="store_true", help="scancel every one of them that is pending or running")
    p.set_defaults(fn=cmd_jobs)

    p = sub.add_parser("rehearse", help="every method and task through a recipe's real code path, a few steps each, "
                       "on generated data in the real formats: shape errors, feature dimensions, memory per GPU and "
                       "projected time before a long run, not after it")
    p.add_argument("--recipe", default="paper", help="the scale to rehearse (paper, default, tiny or a YAML path)")
    p.add_argument("--methods", nargs="+", help="methods to rehearse (default: every registered one, plugins "
                   "included, and random)")
    p.add_argument("--tasks", nargs="*", help="tasks to rehearse (default: every registered one; none after "
                   "--tasks: pretraining only)")
    p.add_argument("--steps", type=int, default=2, help="optimiser steps per training loop; two give a step time "
                   "without the first step's start-up")
    p.add_argument("--batch", type=int, help="cap on every batch (default: the recipe's per-GPU batch on CUDA, "
                   f"{rehearse.CPU_BATCH} on CPU, where time binds)")
    p.add_argument("--gpus", type=int, default=8, help="GPUs of the full run, which share the recipe's global "
                   "batch: memory is extrapolated to the per-GPU batch this gives (the paper used 8)")
    p.add_argument("--image-size", default="480x640", help="HEIGHTxWIDTH of the generated images (COCO's typical "
                   "480x640); views, crops and Mask R-CNN sizes are the recipe's own")
    p.add_argument("--extrapolate", action=argparse.BooleanOptionalAction, default=True,
                   help="run everything a second time at another batch, to extrapolate peak memory to the per-GPU "
                        "batch (--no-extrapolate halves the time)")
    p.add_argument("--out", help="also write the report to OUT.json and OUT.md (e.g. results/rehearsal/paper_cpu)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a recipe value for every method (task.* keys: every task), as in `run`")
    p.add_argument("--workdir")
    p.set_defaults(fn=cmd_rehearse)

    p = sub.add_parser("list", help="registered methods or tasks (with where they come from), or recipes")
    p.add_argument("what", choices=("methods", "tasks", "recipes"))
    p.set_defaults(fn=cmd_list)

    p = sub.add_parser("data", help="generate the embedded synthetic scenes now (otherwise done on first use)")
    p.add_argument("what", choices=("synth",))
    add_common(p)
    p.set_defaults(fn=cmd_data)

    p = sub.add_parser("viz", help="figures; `viz pairs`: ORL's stage-2 RoI pairs across images (the paper's "
                                   "Figure 3), building stages 1-2 of the recipe if needed")
    p.add_argument("what", choices=("pairs",))
    p.add_argument("--method", default="orl", help="a method with stage-2 correspondences")
    p.add_argument("--seed", type=int, help="pretraining seed of the run whose pairs to draw")
    p.add_argument("--rows", type=int, default=6, help="query images, one per row")
    p.add_argument("--pairs", type=int, default=2, help="top-ranked pairs drawn per query image")
    p.add_argument("--sample-seed", type=int, default=0, help="which query images are drawn")
    p.add_argument("--out", help="PNG path (default <workdir>/figures/pairs-<stage-2 folder>.png)")
    add_common(p)
    p.set_defaults(fn=cmd_viz)

    p = sub.add_parser("diagnose", help="explain an artifact's benchmark number: image kNN precision, stage-2 pair "
                                        "quality, how often two views show different objects, SVM mAP per layer, "
                                        "each beside its chance level; trains nothing")
    p.add_argument("--method", default="byol", help="method of the artifact to diagnose (found by its recipe)")
    p.add_argument("--seed", type=int, help="pretraining seed of that artifact")
    p.add_argument("--artifact", help="diagnose this artifact folder instead of the recipe's")
    p.add_argument("--images", type=int, default=500, help="images sampled for the two-view statistics")
    p.add_argument("--sample-seed", type=int, default=0, help="which images and crops the two-view statistics draw")
    p.add_argument("--eval-layers", help="first run voc07_svm on these layers, e.g. conv1,res2,res3,res4,res5")
    p.add_argument("--task-recipe", help="benchmark recipe for --eval-layers (default: the scale of the recipe)")
    add_common(p)
    p.set_defaults(fn=cmd_diagnose)

    p = sub.add_parser("export", help="convert an artifact's backbone for other frameworks")
    p.add_argument("artifact", help="artifact folder")
    p.add_argument("--format", choices=FORMATS, default="torchvision",
                   help="torchvision: a .pth state dict; detectron2: a .pkl for MODEL.WEIGHTS (COCO transfer)")
    p.add_argument("--out", required=True, help="file to write (.pkl for detectron2)")
    p.set_defaults(fn=cmd_export)

    p = sub.add_parser("inspect", help="what --checkpoint reads from a checkpoint file: its format, the ResNet's depth "
                       "and width, the tensors kept and the heads and state dropped, the sha256 records carry")
    p.add_argument("checkpoint", help=f"checkpoint file ({', '.join(f.name for f in CHECKPOINT_FORMATS)})")
    checkpoint_args(p, checkpoint=False)
    p.set_defaults(fn=cmd_inspect)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        if getattr(args, "launcher", "local") == "slurm":
            args.job_command = slurm.job_command(argv, parser.parse_args)
            # checked here, run in the job; `table` submits a graph of its own steps
            if not getattr(args, "plans_its_jobs", False):
                args.check(args)
                return slurm.submit(args, args.job_command, workdir_of(args))
        return args.fn(args)
    except USER_ERRORS as e:
        print(f"orl-bench: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
