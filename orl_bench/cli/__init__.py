"""`orl-bench`: pretrain SSL methods, evaluate them on the paper's benchmarks, report tables.

Everything a command writes goes under the work directory (--workdir, else $ORL_BENCH_HOME,
else ./orl_bench_home): generated data, artifacts, feature caches, result records.
"""
from __future__ import annotations

import argparse
import sys

from orl_bench import slurm
from orl_bench.cli import rehearse, report, run, table, tools
from orl_bench.cli.common import workdir_of
from orl_bench.config import ConfigError
from orl_bench.data.images import DatasetLayoutError
from orl_bench.engine.checkpoint import CheckpointError
from orl_bench.engine.trainer import TrainingDiverged
from orl_bench.registry import RegistryError

# Errors answered with one line and exit status 2: bad input, a failing disk (OSError: unreadable,
# missing or wrong-kind paths, a full disk; what was written before stays whole) and a diverged
# training run (its last checkpoint stays whole), and Slurm refusing or losing a submitted job.
USER_ERRORS = (ConfigError, RegistryError, DatasetLayoutError, CheckpointError, OSError, ValueError,
               TrainingDiverged, slurm.SlurmError)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="orl-bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    for commands in (run, report, table, rehearse, tools):  # the order `orl-bench --help` lists them in
        commands.add_parsers(sub)
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
