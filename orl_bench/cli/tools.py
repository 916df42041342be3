"""`list`, `data`, `viz`, `diagnose`, `export`, `inspect`: looking into the registries, the data, artifacts
and checkpoints."""
from __future__ import annotations

import argparse
import json
import shlex
import time
from pathlib import Path

import torch

from orl_bench import pipeline
from orl_bench.cli.common import add_checkpoint_args, add_common, seed_overrides, workdir_of
from orl_bench.config import (RECIPE_KINDS, ConfigError, DataConfig, apply_overrides, dump_yaml, find_recipe,
                              from_dict, load_yaml_recipe, recipe_root)
from orl_bench.data.sources import SYNTH_SOURCES
from orl_bench.engine.checkpoint import load_backbone, read_manifest
from orl_bench.engine.checkpoint_formats import FORMATS as CHECKPOINT_FORMATS
from orl_bench.engine.checkpoint_formats import describe, load_checkpoint
from orl_bench.engine.distributed import init_distributed
from orl_bench.engine.export import FORMATS, export
from orl_bench.methods.orl.correspondence import Correspondences
from orl_bench.methods.orl.pair_quality import pair_quality
from orl_bench.registry import METHODS, TASKS
from orl_bench.results import diagnose
from orl_bench.results.figures import correspondence_grid


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


def add_parsers(sub: argparse._SubParsersAction) -> None:
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
    add_checkpoint_args(p, checkpoint=False)
    p.set_defaults(fn=cmd_inspect)
