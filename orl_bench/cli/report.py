"""`report`: the result records at a glance, or in full, with figures."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from orl_bench import pipeline
from orl_bench.cli.common import workdir_of
from orl_bench.config import ConfigError
from orl_bench.io import atomic_write_text, warn_skipped
from orl_bench.results.figures import learning_curves, low_shot_curves, result_bars
from orl_bench.results.records import read_records, records_path
from orl_bench.results.report import at_a_glance, glance_markdown, summarize, to_csv, to_markdown


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


def add_parsers(sub: argparse._SubParsersAction) -> None:
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
