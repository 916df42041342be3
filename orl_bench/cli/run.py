"""`run`, `pretrain` and `eval`: the commands that train and evaluate, each with the check a Slurm job of it
would fail on, run before the job is submitted."""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from orl_bench import pipeline, preflight, slurm
from orl_bench.cli.common import add_checkpoint_args, add_common, seed_overrides, workdir_of
from orl_bench.config import ConfigError, PretrainConfig, TaskConfig
from orl_bench.engine.checkpoint import read_manifest
from orl_bench.engine.checkpoint_formats import summary
from orl_bench.engine.distributed import init_distributed
from orl_bench.io import atomic_write_text
from orl_bench.registry import TASKS
from orl_bench.results.records import load_records, records_path
from orl_bench.results.report import run_glance, summarize, timings_line, to_markdown


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


def add_parsers(sub: argparse._SubParsersAction) -> None:
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
    add_checkpoint_args(p)
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
    add_checkpoint_args(p)
    slurm.add_launcher_args(p)
    p.set_defaults(fn=cmd_eval, check=check_eval)
