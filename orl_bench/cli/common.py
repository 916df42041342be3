"""What several commands share: the work directory, the recipe options, the checkpoint options."""
from __future__ import annotations

import argparse
import os
from pathlib import Path

from orl_bench.config import ConfigError
from orl_bench.models.backbones import ARCHS


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


def add_checkpoint_args(p: argparse.ArgumentParser, checkpoint: bool = True) -> None:
    if checkpoint:
        p.add_argument("--checkpoint", help="evaluate the ResNet of a local checkpoint file instead of "
                       "pretraining: torchvision or timm weights, or a checkpoint of MoCo, OpenSelfSup/mmselfsup "
                       "(ORL), solo-learn, Lightning, VISSL, DINO, BYOL ports or detectron2 (orl-bench inspect FILE)")
        p.add_argument("--label", default="checkpoint", help="method name recorded for --checkpoint")
    p.add_argument("--arch", choices=ARCHS, help="architecture of the checkpoint (default: read from its weights; "
                                                 "given, it must agree with them)")
    p.add_argument("--width", type=int, help="stem width of the checkpoint, 64 = torchvision (default: read "
                                             "from its weights; given, it must agree with them)")


def seed_overrides(args: argparse.Namespace) -> list[str]:
    return args.overrides + ([f"train.seed={args.seed}"] if args.seed is not None else [])
