"""Typed configuration: dataclass schemas, YAML recipes with `base:` inheritance, dotted overrides.

A recipe is plain YAML. `base: other.yaml` (or a list) is merged first, paths relative to the
recipe, or `orl_bench:pretrain/...` for a recipe shipped with orl-bench. Overrides `a.b=c` are
parsed as YAML scalars. The merged dict is then validated against the dataclass schema: an
unknown key is an error that names the closest valid key. The method section is validated
against the schema its plugin declares, so plugins never touch this file.
"""
from __future__ import annotations

import dataclasses
import difflib
import hashlib
import json
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from orl_bench.data.synth import SynthSpec


class ConfigError(ValueError):
    """A recipe or override does not fit the schema."""


# ---------------------------------------------------------------------------------------------
# Schema. Fields marked `volatile` do not change what is computed (logging, workers, paths to
# the same data) and are left out of the config hash so changing them reuses artifacts.

def volatile(default: Any) -> Any:
    return field(default=default, metadata={"hash": False})


def added_later(default: Any) -> Any:
    """A field that changes results but was added after artifacts exist: hashed only when set to
    something else than `default`, so every config that leaves it alone keeps its hash (and its
    artifacts and records stay valid)."""
    return field(default=default, metadata={"hash_unless": default})


def check_fields(obj: Any, where: str, *rules: tuple[str, bool, str]) -> None:
    """Refuse the first field of dataclass `obj` whose rule fails; a rule is (field name, whether
    its value is valid, what is expected). Checked when a recipe is read, so a value that would
    make a run meaningless (0 epochs: an untrained network recorded as trained) stops it at once."""
    for name, valid, expected in rules:
        if not valid:
            raise ConfigError(f"{where}.{name} must be {expected}, got {getattr(obj, name)!r}")


AUGMENT_PLACES = ("loader", "device")
# Kaiming-normal modes of the ResNet convolutions: torchvision's, and OpenSelfSup's (the official ORL code's)
CONV_INITS = ("fan_out", "fan_in")


@dataclass(frozen=True)
class NoParams:
    """The options schema of a plugin that has none."""


@dataclass(frozen=True)
class DataConfig:
    # synth | synth_plus (the embedded scenes as COCO and COCO+) | coco | coco_plus | imagenet | voc2007 |
    # folder (any unlabeled images)
    source: str = "synth"
    root: str | None = volatile(None)  # real data location; else ORL_BENCH_<SOURCE> env variable
    synth: SynthSpec = field(default_factory=SynthSpec)

    def __post_init__(self) -> None:
        if self.source == "synth_plus":
            # the unlabeled split's size resolved here, so the config hash, the written config and the
            # scenes' cache key all name the images it runs on
            object.__setattr__(self, "synth", self.synth.coco_plus())


@dataclass(frozen=True)
class ModelConfig:
    arch: str = "resnet50"  # resnet18 | resnet34 | resnet50 | ... (torchvision names)
    width: int = 64  # channels of the stem; 64 is torchvision's, 32 is a half-width ResNet
    # Kaiming-normal (ReLU gain) mode of every convolution: "fan_out" is torchvision's init,
    # "fan_in" OpenSelfSup's ResNet.init_weights, the official ORL code's (the `paper` recipes)
    conv_init: str = added_later("fan_out")

    def __post_init__(self) -> None:
        if self.conv_init not in CONV_INITS:
            raise ConfigError(f"model.conv_init must be one of {', '.join(CONV_INITS)}, got '{self.conv_init}'")


@dataclass(frozen=True)
class OptimConfig:
    name: str = "sgd"  # sgd | adamw | lars
    lr: float = 0.2  # per 256 images: the actual lr is lr * global_batch / 256
    momentum: float = 0.9
    weight_decay: float = 1e-4
    exclude_bias_and_norm: bool = False  # BYOL/ORL decay every parameter; LARS recipes exclude
    warmup_epochs: float = 4.0
    final_lr_fraction: float = 0.0  # cosine ends at lr * this

    def __post_init__(self) -> None:
        check_fields(self, "optim", ("lr", self.lr > 0, "> 0"), ("weight_decay", self.weight_decay >= 0, ">= 0"),
                     ("momentum", 0 <= self.momentum < 1, "in [0, 1)"),
                     ("warmup_epochs", self.warmup_epochs >= 0, ">= 0"),
                     ("final_lr_fraction", 0 <= self.final_lr_fraction <= 1, "in [0, 1]"))


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 800
    batch_size: int = 512  # global, over all ranks
    seed: int = 0
    amp: str = "auto"  # auto (bf16 on CUDA, off on CPU) | bf16 | fp16 | off
    # NHWC activations: faster convolutions on CUDA and on CPU (results/perf/channels_last_cpu.json)
    channels_last: bool = True
    # torch.compile every ResNet backbone's forward: faster steps after a one-off compile (on CPU
    # 12% per model step for ~1 min of compiling at the default recipe: results/perf/compile_cpu.json), so
    # it pays on long runs. Compiled kernels round differently from eager ones, hence hashed.
    compile: bool = added_later(False)
    deterministic: bool = False
    sync_bn: bool = True  # when distributed
    # where the views are made: "loader" (per sample, PIL, in the loader workers, as the official
    # code) or "device" (the workers decode and draw each view's parameters; crop, colour, blur
    # and solarize run batched on the training device: orl_bench/data/batched_views.py)
    augment: str = added_later("loader")
    num_workers: int = volatile(4)
    # torch threads of the training process on CPU; 0: the cores left after num_workers (at least 1),
    # since threads beside busy loader workers slow both down (orl_bench/engine/threads.py)
    cpu_threads: int = volatile(0)
    checkpoint_every_steps: int = volatile(500)
    log_every_steps: int = volatile(20)
    # kNN accuracy (tasks/knn.py) every N epochs, logged as monitor/knn_top1 and _top5; 0 = off.
    # Evaluation only (eval mode, no gradients, no generator draws): it cannot change the artifact.
    monitor_every_epochs: int = volatile(0)
    monitor_root: str | None = volatile(None)  # ImageNet class folders to monitor on; None: the embedded set

    def __post_init__(self) -> None:
        check_fields(self, "train", ("epochs", self.epochs >= 1, ">= 1"), ("batch_size", self.batch_size >= 1, ">= 1"),
                     ("checkpoint_every_steps", self.checkpoint_every_steps >= 1, ">= 1"),
                     ("log_every_steps", self.log_every_steps >= 1, ">= 1"))
        if self.monitor_every_epochs < 0:
            raise ConfigError(f"train.monitor_every_epochs must be >= 0 (0 = off), got {self.monitor_every_epochs}")
        if self.augment not in AUGMENT_PLACES:
            raise ConfigError(f"train.augment must be one of {', '.join(AUGMENT_PLACES)}, got '{self.augment}'")
        if self.num_workers < 0 or self.cpu_threads < 0:
            raise ConfigError(f"need train.num_workers >= 0 and train.cpu_threads >= 0 (0 = automatic), got "
                              f"{self.num_workers} and {self.cpu_threads}")


@dataclass(frozen=True)
class PretrainConfig:
    method: dict = field(default_factory=dict)  # {name: ..., **plugin params}; see validate_method
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)


@dataclass(frozen=True)
class FeatureConfig:
    layers: tuple[str, ...] = ("res5",)  # conv1 res2 res3 res4 res5 (pooling table) and res5_gap
    resize_short: int = 256  # eval preprocessing: shorter side, then a square resize (no crop)
    size: int = 224
    batch_size: int = volatile(64)
    num_workers: int = volatile(2)


@dataclass(frozen=True)
class TaskConfig:
    """A benchmark's settings: the task's own options live in `params` (validated by the task)."""
    name: str = ""
    data: DataConfig = field(default_factory=lambda: DataConfig(source="synth"))
    features: FeatureConfig = field(default_factory=FeatureConfig)
    params: dict = field(default_factory=dict)


# ---------------------------------------------------------------------------------------------
# Building dataclasses from dicts with helpful errors.

def _closest(key: str, valid: list[str]) -> str:
    match = difflib.get_close_matches(key, valid, n=1, cutoff=0.0)
    return f"; did you mean '{match[0]}'?" if match else ""


def _coerce(value: Any, tp: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        return from_dict(tp, value, where)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        return _coerce(value, next(a for a in args if a is not type(None)), where)
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        item = typing.get_args(tp)[0]
        return tuple(_coerce(v, item, f"{where}[{i}]") for i, v in enumerate(value))
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp in (int, float, str, bool) and not isinstance(value, tp) or (
        tp in (int, float) and isinstance(value, bool)
    ):
        raise ConfigError(f"{where}: expected {tp.__name__}, got {value!r}")
    if tp is dict and not isinstance(value, dict):
        raise ConfigError(f"{where}: expected a mapping, got {value!r}")
    return value


def from_dict(cls: type, data: dict, where: str = "config") -> Any:
    """Build dataclass `cls` from `data`, rejecting unknown keys with the closest valid one."""
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    for key in data:
        if key not in names:
            raise ConfigError(f"unknown key '{where}.{key}'{_closest(key, names)} "
                              f"(valid keys: {', '.join(names)})")
    return cls(**{k: _coerce(v, hints[k], f"{where}.{k}") for k, v in data.items()})


def to_dict(obj: Any, for_hash: bool = False, added_defaults: bool = True) -> Any:
    """Plain-data view of a config (tuples become lists), for YAML/JSON; `for_hash` leaves out
    the volatile fields and the `added_later` ones left at their default, `added_defaults=False`
    the latter only (for a plugin's options, which PretrainConfig.method holds as a plain dict,
    hashed whole: an option added to a plugin then keeps its recipes' hashes)."""
    if dataclasses.is_dataclass(obj):
        return {f.name: to_dict(getattr(obj, f.name), for_hash, added_defaults) for f in dataclasses.fields(obj)
                if not (for_hash and not f.metadata.get("hash", True))
                and not ((for_hash or not added_defaults) and "hash_unless" in f.metadata
                         and getattr(obj, f.name) == f.metadata["hash_unless"])}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v, for_hash, added_defaults) for v in obj]
    if isinstance(obj, dict):
        return {k: to_dict(v, for_hash, added_defaults) for k, v in obj.items()}
    return obj


def config_hash(obj: Any) -> str:
    """sha256 of the canonical JSON of everything that changes results (volatile fields out)."""
    blob = json.dumps(to_dict(obj, for_hash=True), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()


def validate_params(params_cls: type, section: dict, where: str) -> dict:
    """Check a plugin's options against its declared dataclass; returns the filled-in dict."""
    return to_dict(from_dict(params_cls, section, where))


# ---------------------------------------------------------------------------------------------
# Recipes.

RECIPE_KINDS = ("pretrain", "benchmarks")


def shipped_folder(repo_folder: str) -> Path:
    """A top-level repository folder (pretrain/, benchmarks/, results/) as installed: the wheel
    maps it to orl_bench/recipes/<name>; a source checkout or editable install has it in place."""
    package = Path(__file__).resolve().parent
    installed = package / "recipes" / ("reference" if repo_folder == "results" else repo_folder)
    return installed if installed.is_dir() else package.parent / repo_folder


def recipe_root(kind: str) -> Path:
    return shipped_folder(kind)


def find_recipe(kind: str, group: str, recipe: str, folder: Path | None = None) -> Path:
    """`recipe` is a YAML path, or a scale name looked up as <kind>/<group>/<recipe>.yaml, or in
    `folder` for a plugin that ships its own recipes."""
    as_path = Path(recipe)
    if as_path.suffix in (".yaml", ".yml"):
        if not as_path.is_file():
            raise ConfigError(f"recipe {as_path} is a directory; expected a YAML recipe file" if as_path.is_dir()
                              else f"recipe file not found: {as_path}")
        return as_path
    if os.sep in recipe or as_path.exists():  # a path, not a scale name
        raise ConfigError(f"recipe {recipe} is not a YAML recipe (a path must end in .yaml or .yml); "
                          "expected a scale name (tiny, default, paper) or your own recipe file")
    folder = folder or recipe_root(kind) / group
    path = folder / f"{recipe}.yaml"
    if not path.is_file():
        available = sorted(p.stem for p in folder.glob("*.yaml"))
        raise ConfigError(f"no {kind} recipe '{recipe}' for '{group}' (looked for {path}); "
                          f"available: {', '.join(available) or 'none'}; or pass a YAML path")
    return path


def deep_merge(base: dict, update: dict) -> dict:
    out = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = value
    return out


# `base: orl_bench:pretrain/_scales/tiny.yaml` names a recipe shipped with orl-bench, so a plugin's
# own recipes can inherit the shipped scales wherever either is installed.
SHIPPED_PREFIX = "orl_bench:"


def base_path(recipe: Path, base: str) -> Path:
    """Where a recipe's `base:` entry points: a shipped recipe, or a path relative to the recipe."""
    if base.startswith(SHIPPED_PREFIX):
        folder, _, rest = base.removeprefix(SHIPPED_PREFIX).partition("/")
        return shipped_folder(folder) / rest
    return recipe.parent / base


def load_yaml_recipe(path: Path, _seen: tuple[Path, ...] = ()) -> dict:
    path = path.resolve()
    if path in _seen:
        raise ConfigError(f"recipe inheritance cycle: {' -> '.join(map(str, _seen + (path,)))}")
    if path.is_dir():
        raise ConfigError(f"recipe {path} is a directory; expected a YAML recipe file")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (UnicodeDecodeError, yaml.YAMLError) as e:
        raise ConfigError(f"recipe {path} is not a YAML text file ({type(e).__name__}: "
                          f"{str(e).splitlines()[0]}); expected a recipe like those of `orl-bench list recipes`") from e
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a recipe must be a mapping at the top level")
    bases = data.pop("base", [])
    merged: dict = {}
    for base in [bases] if isinstance(bases, str) else bases:
        merged = deep_merge(merged, load_yaml_recipe(base_path(path, base), _seen + (path,)))
    return deep_merge(merged, data)


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    """Apply `a.b=c` strings; values are parsed as YAML (numbers, bools, lists, null)."""
    out = data
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override '{item}' must look like key.path=value")
        key, raw = item.split("=", 1)
        try:
            value = yaml.safe_load(raw) if raw else ""
        except yaml.YAMLError as e:
            raise ConfigError(f"override '{item}': the value is not valid YAML ({str(e).splitlines()[0]})") from e
        nested: Any = value
        for part in reversed(key.strip().split(".")):
            nested = {part: nested}
        out = deep_merge(out, nested)
    return out


def dump_yaml(obj: Any) -> str:
    return yaml.safe_dump(to_dict(obj), sort_keys=False)
