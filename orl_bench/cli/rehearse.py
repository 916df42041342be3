"""`rehearse`: every method and task of a recipe a few steps each, before the long run."""
from __future__ import annotations

import argparse
from pathlib import Path

from orl_bench import preflight, rehearse
from orl_bench.cli.common import workdir_of
from orl_bench.config import ConfigError
from orl_bench.engine.distributed import init_distributed


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


def add_parsers(sub: argparse._SubParsersAction) -> None:
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
