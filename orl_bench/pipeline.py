"""The artifact graph behind `orl-bench run`: data -> pretrain (or reuse) -> task -> records.

A pretraining artifact lives at <workdir>/artifacts/<method>-<key>, the key being its config hash
(and its input files' hashes for a multi-stage method such as ORL, whose earlier stages are built
first the same way); it is reused when complete, resumed when a train_state.pt is there, and
built otherwise. Features are cached per
(artifact, dataset, layer) by the tasks. Every step is safe to interrupt and re-run.
"""
from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import re
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from orl_bench.config import (ConfigError, PretrainConfig, TaskConfig, apply_overrides, config_hash, find_recipe,
                              from_dict, load_yaml_recipe, recipe_root, to_dict, validate_params)
from orl_bench.data.sources import CONTENT_KEYED_SOURCES, ImageList, pretrain_images
from orl_bench.engine.checkpoint import (export_artifact, is_complete, load_backbone, pretraining_seconds,
                                         read_manifest, write_config)
from orl_bench.engine.checkpoint_formats import Checkpoint, load_checkpoint
from orl_bench.engine.distributed import DistInfo, barrier
from orl_bench.engine.trainer import pretrain
from orl_bench.io import file_lock, sha256_file
from orl_bench import progress
from orl_bench.methods.base import Method, StageContext
from orl_bench.models.backbones import build_backbone
from orl_bench.provenance import device_name, git_revision, now_iso
from orl_bench.registry import METHODS, TASKS
from orl_bench.results.paper import PaperReference, load_reference
from orl_bench.results.records import append_records, load_records
from orl_bench.tasks.base import BackboneRef
from orl_bench.tasks.knn import knn_monitor

RANDOM = "random"  # not a plugin: the randomly initialised backbone of a recipe, as a baseline row
# The backbone fields of a record that is about the data alone (a task's chance level).
NO_BACKBONE = {"artifact_sha256": None, "artifact": None, "recipe": "-", "config_hash": None, "seed": None}


def split_overrides(overrides: list[str]) -> tuple[list[str], list[str]]:
    """`task.x=y` overrides go to the benchmark config, everything else to pretraining."""
    task = [o[len("task."):] for o in overrides if o.startswith("task.")]
    return [o for o in overrides if not o.startswith("task.")], task


def recipe_folder(method: str) -> Path:
    """Where `--recipe <scale>` is looked up for `method`: its plugin's own recipes, else pretrain/<method>/."""
    plugin = None if method == RANDOM else METHODS.get(method)  # unknown names fail first, listing valid ones
    return (plugin and plugin.recipes_dir) or recipe_root("pretrain") / method


def load_pretrain_config(method: str, recipe: str, overrides: list[str]) -> PretrainConfig:
    plugin = None if method == RANDOM else METHODS.get(method)  # unknown names fail first, listing valid ones
    data = apply_overrides(load_yaml_recipe(find_recipe("pretrain", method, recipe, recipe_folder(method))), overrides)
    data.setdefault("method", {})
    name = data["method"].setdefault("name", method)
    if name != method:
        raise ConfigError(f"recipe is for method '{name}' but --method is '{method}'")
    cfg = from_dict(PretrainConfig, data)
    if method == RANDOM:
        if set(cfg.method) != {"name"}:
            raise ConfigError(f"method 'random' takes no options, got {sorted(set(cfg.method) - {'name'})}")
        return cfg
    return replace(cfg, method={"name": method, **to_dict(plugin.params_of(cfg), added_defaults=False)})


def benchmark_recipe(pretrain_recipe: str) -> str:
    """The benchmark recipe that goes with a shipped pretraining recipe name: its scale, the part
    before the first '_' ('default_5a_intra_only' -> 'default'), so ablations are evaluated
    exactly like the run they are compared with."""
    if Path(pretrain_recipe).suffix in (".yaml", ".yml"):
        raise ConfigError(f"--recipe is a file ({pretrain_recipe}): name the benchmark recipe too, "
                          "with --task-recipe tiny|default|paper or a YAML path")
    return pretrain_recipe.split("_", 1)[0]


PAPER_EPOCHS = 800  # the paper's default schedule, which a scale's own epochs stand for
ABLATION_RECIPE = re.compile(r"^[a-z]+_5[a-e]_")  # a shipped Table 5 recipe: <scale>_5<x>_<setting>


@functools.lru_cache
def paper_variant(method: str, recipe: str) -> dict[str, Any]:
    """The settings by which the paper names a shipped recipe's row: the method's own
    (`Method.variant`) and the epochs, read relative to the recipe's scale, whose own epochs stand
    for the paper's 800 (`default_5e_epochs4` of an 8-epoch BYOL is the paper's 400)."""
    cfg = load_pretrain_config(method, recipe, [])
    variant = dict(METHODS.get(method).variant(cfg))
    scale_epochs = load_pretrain_config(method, benchmark_recipe(recipe), []).train.epochs
    variant["epochs"] = round(PAPER_EPOCHS * cfg.train.epochs / scale_epochs)
    return variant


def load_task_config(task: str, recipe: str, overrides: list[str]) -> TaskConfig:
    plugin = TASKS.get(task)
    data = apply_overrides(load_yaml_recipe(find_recipe("benchmarks", task, recipe)), overrides)
    data.setdefault("name", task)
    # named as `run --set task.<key>` spells them (eval takes them with or without the prefix)
    cfg = from_dict(TaskConfig, data, "task")
    validate_params(plugin.Params, cfg.params, "task.params")
    return cfg


def task_config_hash(cfg: TaskConfig) -> str:
    """The key of a task's records: its config and, where the config leaves the data's design to
    defaults, the data's identity (Task.data_identity)."""
    identity = TASKS.get(cfg.name).data_identity(cfg)
    return config_hash(cfg) if identity is None else config_hash({"task": cfg, "data": identity})


def artifact_dir(workdir: Path, cfg: PretrainConfig, input_hashes: dict[str, str] | None = None) -> Path:
    """<workdir>/artifacts/<method>-<key>: the key is the config hash, combined with the sha256
    of each earlier-stage input when there are any (a rebuilt input gives a new artifact)."""
    key = config_hash(cfg)
    if input_hashes:
        key = hashlib.sha256(json.dumps({"config": key, "inputs": input_hashes}, sort_keys=True).encode()).hexdigest()
    return Path(workdir) / "artifacts" / f"{cfg.method['name']}-{key[:12]}"


def workdir_relative(path: Path, workdir: Path) -> str:
    """`path` as recorded for provenance: relative to the work directory when inside it, so the
    same run in another work directory records the same thing."""
    try:
        return str(Path(path).resolve().relative_to(Path(workdir).resolve()))
    except ValueError:
        return str(path)


def stage_overrides(overrides: list[str]) -> list[str]:
    """The overrides an earlier stage inherits: all but the method's own options."""
    return [o for o in overrides if not o.split("=", 1)[0].strip().startswith("method.")]


def stage_config(method: str, recipe: str, overrides: list[str]) -> PretrainConfig:
    """The config of an earlier stage (`Method.earlier_stages`) of a run under `overrides`."""
    return load_pretrain_config(method, recipe, stage_overrides(list(overrides)))


def _images(cfg: PretrainConfig, workdir: Path, info: DistInfo) -> ImageList:
    """The pretraining images; rank 0 generates the embedded scenes first if needed."""
    images = pretrain_images(cfg.data, workdir) if info.is_main else None
    barrier(info)
    return images or pretrain_images(cfg.data, workdir)


def is_multistage(cfg: PretrainConfig) -> bool:
    """Whether the method trains from earlier stages' outputs (overrides Method.build_inputs)."""
    return cfg.method["name"] != RANDOM and \
        METHODS.get(cfg.method["name"]).build_inputs.__func__ is not Method.build_inputs.__func__


def build_inputs(cfg: PretrainConfig, workdir: Path, info: DistInfo, overrides: list[str] = (),
                 images: ImageList | None = None) -> tuple[dict[str, Path], dict]:
    """The earlier stages of a multi-stage method, built or reused under the same non-method
    `overrides`: (named input files, timings per stage); ({}, {}) for a single-stage method."""
    if not is_multistage(cfg):
        return {}, {}
    ctx = StageContext(Path(workdir), images or _images(cfg, workdir, info), info,
                       config=lambda method, r: stage_config(method, r, overrides),
                       pretrained=lambda stage_cfg, r: ensure_pretrained(stage_cfg, r, workdir, info))
    return METHODS.get(cfg.method["name"]).build_inputs(cfg, ctx)


def ensure_pretrained(cfg: PretrainConfig, recipe: str, workdir: Path, info: DistInfo,
                      overrides: list[str] = ()) -> tuple[Path, dict]:
    """The complete artifact for `cfg`: reused, resumed or trained, after its earlier stages if
    the method has any (built under the same non-method `overrides`). Returns (folder, timings)."""
    t0 = time.perf_counter()
    # A folder's contents are not in the config (data.root is not hashed): its image list's key keys the artifact.
    keyed_by_images = cfg.data.source in CONTENT_KEYED_SOURCES
    # loaded once for the earlier stages and this one
    images = _images(cfg, workdir, info) if is_multistage(cfg) or keyed_by_images else None
    data_s = time.perf_counter() - t0
    inputs, timings = build_inputs(cfg, workdir, info, overrides, images)
    input_hashes = {name: sha256_file(path) for name, path in inputs.items()}
    if keyed_by_images:
        input_hashes["images"] = images.key
    out = artifact_dir(workdir, cfg, input_hashes)
    if is_complete(out):
        return out, {**timings, "pretrain_s": 0.0, "pretrain_reused": True}
    t0 = time.perf_counter()
    images = images or _images(cfg, workdir, info)
    data_s += time.perf_counter() - t0
    out.mkdir(parents=True, exist_ok=True)
    extra = {"recipe": recipe, "data": {"source": cfg.data.source, "key": images.key, "images": len(images.paths)}}
    run_info = {"started": now_iso()}
    if inputs:
        extra["inputs"] = {name: {"path": workdir_relative(path, workdir), "sha256": input_hashes[name]}
                           for name, path in inputs.items()}
        run_info["stages"] = timings
    t_train = time.perf_counter()
    # A second concurrent run waits for the first, then reuses its artifact. Only rank 0 takes
    # the lock: the other ranks of this run must not block on it while rank 0 trains with them.
    with file_lock(out / "build") if info.is_main else contextlib.nullcontext():
        barrier(info)
        if not is_complete(out):
            if cfg.method["name"] != RANDOM:
                monitor = knn_monitor(cfg.data, workdir, info.device, cfg.train.monitor_root) \
                    if cfg.train.monitor_every_epochs and info.is_main else None
                with progress.stage(f"pretraining {out.name} ({recipe})", info.is_main):
                    pretrain(cfg, out, images.paths, extra, info, inputs, run_info, monitor)
            elif info.is_main:
                export_random(cfg, out, extra, run_info)
        barrier(info)
    return out, {**timings, "data_s": round(data_s, 2), "pretrain_s": round(time.perf_counter() - t_train, 2),
                 "pretrain_reused": False}


def export_random(cfg: PretrainConfig, out: Path, extra: dict[str, Any], run_info: dict[str, Any]) -> None:
    torch.manual_seed(cfg.train.seed)
    backbone = build_backbone(cfg.model.arch, cfg.model.width, cfg.model.conv_init)
    write_config(out, cfg)
    export_artifact(out, backbone, {**extra, "method": RANDOM, "config_hash": config_hash(cfg),
                                    "arch": cfg.model.arch, "width": cfg.model.width, "epochs": 0,
                                    "git_revision": git_revision(), "torch": torch.__version__},
                    {**run_info, "finished": now_iso()})


def record_fields(cfg: PretrainConfig, folder: Path | None = None) -> dict[str, Any]:
    """What every result record of a backbone pretrained with `cfg` (artifact `folder`) carries
    about its run."""
    plugin = None if cfg.method["name"] == RANDOM else METHODS.get(cfg.method["name"])
    unseeded = replace(cfg, train=replace(cfg.train, seed=0))
    # setup_hash: the config without its seed, so the report averages seeds of one setup only;
    # a folder source's images are not in the config, so their key joins it
    setup = config_hash(unseeded)
    if cfg.data.source in CONTENT_KEYED_SOURCES and folder is not None:
        setup = config_hash({"config": setup, "images": read_manifest(folder)["data"]["key"]})
    # pretrain_data: which images it learnt from, so a table tells its COCO and COCO+ rows apart;
    # pretraining_s: the artifact's build time, so tables and estimates have it after the artifact is gone
    return {"config_hash": config_hash(cfg), "setup_hash": setup[:12], "seed": cfg.train.seed,
            "epochs": 0 if plugin is None else cfg.train.epochs, "pretrain_data": cfg.data.source,
            "variant": plugin.variant(cfg) if plugin else {},
            **({"pretraining_s": round(seconds, 1)}
               if folder is not None and (seconds := pretraining_seconds(folder)) is not None else {})}


def artifact_config(folder: Path) -> PretrainConfig:
    """The resolved config written beside an artifact."""
    return from_dict(PretrainConfig, load_yaml_recipe(Path(folder) / "config.yaml"))


def paper_reference() -> PaperReference:
    """The ORL paper's numbers, with those each registered plugin ships for its own rows
    (`Method.paper_reference`): what the report and `run` print beside a result."""
    plugins = {name: cls.paper_reference for name in METHODS.names() if (cls := METHODS.get(name)).paper_reference}
    return load_reference(plugins=plugins)


def artifact_ref(folder: Path) -> BackboneRef:
    backbone, manifest = load_backbone(folder)
    return BackboneRef(backbone, manifest["backbone_sha256"], manifest["method"], manifest.get("recipe", "-"),
                       str(folder))


def checkpoint_ref(path: Path, arch: str | None, width: int | None, label: str) -> tuple[BackboneRef, Checkpoint]:
    """The backbone of a checkpoint file in any format orl-bench reads (depth and width from its
    weights unless given), and what was read from the file."""
    ckpt = load_checkpoint(path, arch, width)
    return BackboneRef(ckpt.backbone, ckpt.sha256, label, "external", str(path)), ckpt


def evaluate(task_cfg: TaskConfig, ref: BackboneRef, workdir: Path, device: torch.device,
             extra: dict[str, Any] | None = None, info: DistInfo | None = None) -> tuple[list[dict[str, Any]], bool]:
    """Run one task on one backbone and append its records (all or none) to the record store.

    Evaluation is deterministic, so records already stored for the same backbone (sha256) and
    task config (hash) are returned instead of recomputed. Rows naming their own method (the
    chance level) carry no backbone and are appended only if the store lacks them. Returns (the
    backbone's records plus the stored backbone-free ones of its datasets, reused). Under torchrun
    (`info`) every process runs a distributed task; only rank 0 writes the store.
    """
    task_hash = task_config_hash(task_cfg)
    stored = [r for r in load_records(workdir) if r["task"] == task_cfg.name]
    records = [r for r in stored if r["artifact_sha256"] == ref.sha256 and r.get("task_config_hash") == task_hash]
    reused = bool(records)
    if not reused:
        t0 = time.perf_counter()
        task = TASKS.get(task_cfg.name)(task_cfg, workdir, device, info)
        with progress.stage(f"evaluating {ref.method} on {task_cfg.name}", info is None or info.is_main):
            rows = task.evaluate(ref)
        if info is not None and not info.is_main:
            return [], False
        common = {"task": task_cfg.name, "task_config_hash": task_hash, "git_revision": git_revision(),
                  "device": device_name(device), "wall_time_s": round(time.perf_counter() - t0, 2),
                  "timestamp": now_iso()}
        backbone = {"method": ref.method, "artifact_sha256": ref.sha256, "artifact": workdir_relative(ref.path, workdir),
                    "recipe": ref.recipe,
                    **(extra or {})}
        records = [{**common, **backbone, **row} for row in rows if "method" not in row]
        # Backbone-free rows are the same for every backbone: one per (method, metric, dataset) in the store.
        have = {(r["method"], r["metric"], r["dataset"]) for r in stored if r["artifact_sha256"] is None}
        free = [{**common, **NO_BACKBONE, **row} for row in rows if "method" in row
                and (row["method"], row["metric"], row["dataset"]) not in have]
        append_records(workdir, records + free)
        stored += free
    datasets = {r["dataset"] for r in records}
    return records + [r for r in stored if r["artifact_sha256"] is None and r["dataset"] in datasets], reused
