"""`table` (the paper's tables, building their missing runs here or as Slurm jobs) and `jobs`."""
from __future__ import annotations

import argparse
import time
from pathlib import Path

from orl_bench import pipeline, plan, preflight, slurm
from orl_bench.cli.common import workdir_of
from orl_bench.config import ConfigError
from orl_bench.engine.distributed import init_distributed
from orl_bench.results import table_figures, tables
from orl_bench.results.records import load_records


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


def add_parsers(sub: argparse._SubParsersAction) -> None:
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
