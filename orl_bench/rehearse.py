"""`orl-bench rehearse`: every registered method and task through the real code path of a recipe,
a few steps each, so that a shape error, a wrong feature dimension or an out-of-memory of a
paper-scale run shows up in minutes instead of after days of GPU time.

Everything is the recipe's (architecture and width, views, heads, optimiser and its parameter
groups, schedule shape, loss terms, momentum, ORL's stage 2 at its thresholds, feature taps and
pooling, probe heads, Mask R-CNN sizes and proposal counts) except three things:

- the data: a handful of generated scenes at a real dataset's resolution, written in the real
  formats (COCO, VOC2007, ImageNet class folders with SimCLR's subset lists, Places205 lists,
  iNat18 JSON) and read by the real loaders; the recipes' data.root points at them. A setting
  bounded by the data's size (the low-shot k grid) is cut to what the handful holds, and the
  report says so;
- the batch: reduced (default: the recipe's per-GPU batch on CUDA; 4 on CPU, where time binds);
- every training loop stops after `steps` steps (engine/rehearsal.py).

Each method runs `pipeline.ensure_pretrained`, the entry point of `run` and `table`, in a work
directory of its own (so ORL trains its own stage 1, which feeds its stage 2, which feeds its
stage 3), and each task runs `pipeline.evaluate` on ORL's artifact (else the first method's), once
per backbone architecture among the methods; every artifact is loaded strictly as a task loads it.
With `extrapolate`, everything runs once more at a second batch, and each training
section's peak memory is extrapolated linearly to the recipe's per-GPU batch.
"""
from __future__ import annotations

import dataclasses
import functools
import math
import os
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from orl_bench import pipeline, preflight
from orl_bench.config import ConfigError, TaskConfig, from_dict, to_dict
from orl_bench.data.classification import CLASSIFICATION_DATASETS
from orl_bench.data.synth import SynthSpec, ensure_synth
from orl_bench.data.synth_classify import EmbeddedClassSpec, ensure_embedded
from orl_bench.engine import rehearsal
from orl_bench.engine.distributed import DistInfo
from orl_bench.io import atomic_write_json, atomic_write_text
from orl_bench.provenance import device_name, git_revision, now_iso
from orl_bench.registry import METHODS, TASKS
from orl_bench.tasks.base import BackboneRef
from orl_bench.tasks.features import RESNET50_224_DIMS, tap_features

# Training-split sizes of the real datasets, for projecting a full run's time from the measured
# seconds per image (COCO 2017, SimCLR's ImageNet subset lists, Places205, iNaturalist 2018).
TRAIN_IMAGES = {"coco": 118_287, "coco_plus": 118_287 + 123_403, "imagenet": 1_281_167,
                "imagenet/1percent": 12_811, "imagenet/10percent": 128_116, "places205": 2_448_873,
                "inat18": 437_513, "voc2007": 5_011}
# Task settings bounded by the generated data's size: (override, why).
DATA_BOUND = {"voc07_lowshot": ("params.ks=[1,2]", "k <= 2: the generated VOC split holds ~10 positives per class, "
                                "the paper's k reaches 96")}
CPU_BATCH = 4
CONFIG_SECTIONS = ("method", "data", "model", "optim", "train", "params", "features")
MIB = 2 ** 20


@dataclass(frozen=True)
class Plan:
    recipe: str = "paper"
    methods: tuple[str, ...] | None = None  # None: every registered method and `random`
    tasks: tuple[str, ...] | None = None  # None: every registered task; (): none
    steps: int = 2
    batch: int | None = None  # None: the recipe's per-GPU batch on CUDA, CPU_BATCH on CPU
    gpus: int = 8  # the full run's GPUs: per-GPU batch = the recipe's global batch / gpus
    image_size: tuple[int, int] = (480, 640)  # height, width: COCO's typical image
    overrides: tuple[str, ...] = ()
    extrapolate: bool = True

    def __post_init__(self) -> None:
        if self.steps < 1 or self.gpus < 1 or (self.batch is not None and self.batch < 2):
            raise ConfigError(f"need --steps >= 1, --gpus >= 1 and --batch >= 2 (BatchNorm in training needs two "
                              f"images), got {self.steps}, {self.gpus}, {self.batch}")
        if min(self.image_size) < 64:
            raise ConfigError(f"--image-size must be at least 64 px a side, got {self.image_size}")


def batches(target: int, cap: int | None) -> tuple[int, int]:
    """The two batches measured for a per-GPU `target`: the first capped by `cap`, the second half
    of it (or twice it below 4), never under 2 (BatchNorm needs two images)."""
    first = max(2, min(target, cap) if cap else target)
    return first, (first // 2 if first >= 4 else first * 2)


@dataclass
class Row:
    """One measured part: a method's stage or a task, at one batch."""
    name: str  # method or task
    kind: str  # method | task
    stage: str
    status: str  # ok | failed
    batch: int | None = None
    steps: int = 0
    wall_s: float = 0.0
    s_per_step: float | None = None
    s_per_image: float | None = None
    peak_mib: float | None = None
    grown_mib: float | None = None  # the peak over what was in use when the part started
    per_gpu_batch: int | None = None
    probe_batch: int | None = None
    probe_grown_mib: float | None = None
    mib_at_per_gpu_batch: float | None = None
    exceeds_device: bool | None = None
    projected_device_hours: float | None = None
    feature_dims: dict[str, dict[str, Any]] | None = None
    error: str | None = None
    keys: list[str] | None = None
    note: str | None = None


def cap_workers(settings: dict[str, int]) -> list[str]:
    """Overrides capping loader processes at this machine's cores: a recipe's 8 workers on a 2-core
    machine only compete with the step (worker counts are not hashed: same artifacts)."""
    cores = os.cpu_count() or 1
    return [f"{key}={cores}" for key, value in settings.items() if value > cores]


def flat(d: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(d, dict):
        return {k: v for key, value in d.items() for k, v in flat(value, f"{prefix}{key}.").items()}
    return {prefix[:-1]: d}


def implicated_keys(error: str, config: dict[str, Any], sections: tuple[str, ...]) -> list[str]:
    """The recipe keys an error names: dotted keys quoted in it (config errors), else the keys
    among `sections` whose value is a number in the message (of a matmul's shapes, the two that
    disagree) that no other key of theirs holds. Empty when nothing points anywhere."""
    keys = flat(config)
    named = [k for k in re.findall(r"[A-Za-z_][\w]*(?:\.[\w]+)+", error) if k in keys or k.split(".", 1)[0] in sections]
    if named:
        return sorted(set(named))
    matmul = re.search(r"\((\d+)x(\d+) and (\d+)x(\d+)\)", error)  # torch's "mat1 and mat2 shapes ..."
    found = matmul.group(2, 3) if matmul else re.findall(r"\d+", error)  # a matmul's mismatch: B of AxB, C of CxD
    numbers = {int(n) for n in found if int(n) > 2}  # 1 and 2 are everywhere
    own = {k: v for k, v in keys.items() if k.split(".", 1)[0] in sections and isinstance(v, int)
           and not isinstance(v, bool)}
    holders: dict[int, list[str]] = {}
    for k, v in own.items():
        holders.setdefault(v, []).append(k)
    return sorted(k for n in numbers for k in holders.get(n, []) if len(holders[n]) == 1)


def feature_dims(backbone: torch.nn.Module, arch: str, cfg: TaskConfig) -> dict[str, dict[str, Any]]:
    """Each evaluated layer's feature dimension through the tasks' own taps and pooling, beside
    the protocol's (docs/protocols.md 5.1) where that applies: ResNet-50 at 224 px."""
    layers = tuple(cfg.features.layers)
    with torch.no_grad():  # on the device the task left the backbone on
        x = torch.zeros(1, 3, cfg.features.size, cfg.features.size, device=next(backbone.parameters()).device)
        dims = {k: int(v.shape[1]) for k, v in tap_features(backbone.eval(), x, layers).items()}
    protocol = arch == "resnet50" and cfg.features.size == 224
    return {layer: {"dim": dim, "protocol": RESNET50_224_DIMS.get(layer) if protocol else None} for layer, dim in
            dims.items()}


class Rehearsal:
    def __init__(self, plan: Plan, workdir: Path, info: DistInfo, say=functools.partial(print, flush=True)):
        self.plan, self.info, self.say = plan, info, say
        self.root = Path(workdir) / "rehearsal" / Path(plan.recipe).stem
        self.pre_over, self.task_over = pipeline.split_overrides(list(plan.overrides))
        self.methods = [*METHODS.names(), pipeline.RANDOM] if plan.methods is None else list(plan.methods)
        self.tasks = TASKS.names() if plan.tasks is None else list(plan.tasks)
        if not self.methods:
            raise ConfigError("--methods names no method; the tasks evaluate the methods' artifacts")
        self.task_recipe = pipeline.benchmark_recipe(plan.recipe)
        for name in self.methods:
            if name != pipeline.RANDOM:
                METHODS.get(name)  # an unknown name is bad input, not a failed row
        for name in self.tasks:
            TASKS.get(name)
        # every recipe read before anything runs; one that does not parse is its row's failure
        self.setup_errors: dict[str, Exception] = {}
        self.method_cfgs = {m: cfg for m in self.methods if (cfg := self.read(m, pipeline.load_pretrain_config,
                                                                              plan.recipe, self.pre_over))}
        self.task_cfgs = {t: cfg for t in self.tasks if (cfg := self.read(t, pipeline.load_task_config,
                                                                          self.task_recipe, self.task_over))}
        self.cap = plan.batch or (None if info.device.type == "cuda" else CPU_BATCH)
        self.method_batches = {m: batches(self.per_gpu_method(m), self.cap) for m in self.method_cfgs}
        self.task_batches = {t: batches(self.per_gpu_task(t), self.cap) for t in self.task_cfgs}
        self.recorder = rehearsal.Recorder(plan.steps, info.device)

    def read(self, name: str, load, recipe: str, overrides: list[str]) -> Any:
        try:
            return load(name, recipe, overrides)
        except ConfigError as e:
            self.setup_errors[name] = e
            return None

    # --- batches -------------------------------------------------------------------------------
    def per_gpu_method(self, method: str) -> int:
        return max(1, self.method_cfgs[method].train.batch_size // self.plan.gpus)

    def batch_key(self, task: str) -> str:
        fields = {f.name for f in dataclasses.fields(TASKS.get(task).Params)}
        return "params.batch_size" if "batch_size" in fields else "features.batch_size"

    def per_gpu_task(self, task: str) -> int:
        section, name = self.batch_key(task).split(".")
        cfg = self.task_cfgs[task]
        value = cfg.params.get(name, getattr(TASKS.get(task).Params(), name)) if section == "params" \
            else cfg.features.batch_size
        return max(1, value // (self.plan.gpus if TASKS.get(task).distributed else 1))

    # --- data ----------------------------------------------------------------------------------
    def sources(self) -> set[str]:
        return {c.data.source for c in self.method_cfgs.values()} | {c.data.source for c in self.task_cfgs.values()}

    def generate(self) -> dict[str, Path]:
        """The generated datasets the recipes' real sources read, by source."""
        # with a cap, every batch is at most twice it, so the data (keyed by its spec) is the same
        # whichever methods and tasks are rehearsed
        largest = 2 * self.cap if self.cap else \
            max(b for pair in [*self.method_batches.values(), *self.task_batches.values()] for b in pair)
        h, w = self.plan.image_size
        # knn_k 10 of ORL's stage 2 needs 11 images; every batch needs a full one
        spec = SynthSpec(height=h, width=w, coco_train=max(16, 2 * largest), coco_val=4, coco_unlabeled=4,
                         voc_trainval=64, voc_test=64)
        workers = os.cpu_count() or 1
        needed = self.sources()
        roots: dict[str, Path] = {}
        if needed & {"coco", "coco_plus", "voc2007"}:
            scenes = ensure_synth(spec, self.root / "data", workers)
            roots.update(coco=scenes / "coco", coco_plus=scenes / "coco", voc2007=scenes / "VOCdevkit")
        embedded = EmbeddedClassSpec(train_per_class=max(2, math.ceil(2 * largest / spec.num_categories)),
                                     val_per_class=1, min_train_per_class=1)
        for name in sorted(needed & set(CLASSIFICATION_DATASETS)):
            roots[name] = ensure_embedded(name, spec, embedded, self.root / "data", workers)
        return roots

    # --- rows ----------------------------------------------------------------------------------
    def rows_of(self, name: str, kind: str, batch: int, error: BaseException | None, config: dict[str, Any],
                sections: tuple[str, ...]) -> list[Row]:
        measured = self.recorder.take()
        top = [s for s in measured if s.depth == 0]
        rows = []
        for s in measured:
            if kind == "method":
                stage = f"stage {top.index(s) + 1}: {s.name}" if s.depth == 0 and len(top) > 1 else s.name
            else:
                stage = "evaluate" if s.depth == 0 else s.name
            spi = s.seconds_per_step()
            rows.append(Row(name, kind, stage, "failed" if s.error else "ok", batch, s.steps, round(s.wall_s, 3),
                            spi, (spi / batch if spi and s.steps else (s.wall_s / s.images if s.images else None)),
                            round(s.peak_bytes / MIB, 1), round(s.grown_bytes / MIB, 1), error=s.error))
        failing = next((r for r in rows if r.error), None)
        if error is not None and failing is None:  # failed outside any section: reading recipes, data
            failing = Row(name, kind, "setup", "failed", batch, error=rehearsal.one_line(error))
            rows.append(failing)
        for r in rows:  # an enclosing section fails with its inner one: only the innermost names the error
            if r.error and r is not failing:
                r.error, r.note = None, "failed inside"
        if failing is not None:
            failing.keys = implicated_keys(failing.error, config, sections)
        return rows

    def method_overrides(self, method: str, batch: int, roots: dict[str, Path]) -> list[str]:
        cfg = self.method_cfgs[method]
        workers = {"train.num_workers": cfg.train.num_workers,  # and a method's own pools (ORL's stage 2, UniVIP)
                   **{k: v for k, v in flat(cfg.method, "method.").items() if k.endswith(".workers")}}
        return [*self.pre_over, f"train.batch_size={batch}", *cap_workers(workers),
                *([f"data.root={roots[cfg.data.source]}"] if cfg.data.source in roots else [])]

    def task_overrides(self, task: str, batch: int, roots: dict[str, Path]) -> list[str]:
        cfg = self.task_cfgs[task]
        bound = [DATA_BOUND[task][0]] if task in DATA_BOUND else []
        workers = {"features.num_workers": cfg.features.num_workers}
        if "num_workers" in cfg.params:
            workers["params.num_workers"] = cfg.params["num_workers"]
        return [*self.task_over, f"{self.batch_key(task)}={batch}", *bound, *cap_workers(workers),
                *([f"data.root={roots[cfg.data.source]}"] if cfg.data.source in roots else [])]

    def run_pass(self, index: int, roots: dict[str, Path]) -> list[Row]:
        workdir = self.root / ("main" if index == 0 else "probe")
        rows = [Row(name, "method" if name in self.methods else "task", "setup", "failed", error=rehearsal.one_line(e),
                    keys=implicated_keys(str(e), {}, CONFIG_SECTIONS)) for name, e in self.setup_errors.items()] \
            if index == 0 else []
        artifacts: dict[str, tuple[BackboneRef, dict[str, Any]]] = {}
        for method in self.method_cfgs:
            batch = self.method_batches[method][index]
            overrides = self.method_overrides(method, batch, roots)
            error, cfg = None, self.method_cfgs[method]
            self.say(f"[rehearse] {method} at batch {batch}")
            try:
                cfg = pipeline.load_pretrain_config(method, self.plan.recipe, overrides)
                home = workdir / "methods" / method
                preflight.check(home, [(cfg, overrides)], writes=[("work directory", home)])  # as `run` checks
                folder, _ = pipeline.ensure_pretrained(cfg, self.plan.recipe, home, self.info, overrides)
                # loaded strictly, as every task loads it; its records carry what `run` records
                artifacts[method] = pipeline.artifact_ref(folder), pipeline.record_fields(cfg, folder)
            except Exception as e:  # noqa: BLE001 - reported per row; the rehearsal goes on with the others
                error = e
            rows += self.rows_of(method, "method", batch, error, to_dict(cfg), ("method", "model", "optim", "train"))
        by_arch: dict[tuple[str, int], str] = {}
        for method in sorted(artifacts, key=lambda m: m != "orl"):  # ORL's artifact first: the chain's end
            cfg = self.method_cfgs[method]
            by_arch.setdefault((cfg.model.arch, cfg.model.width), method)
        if not by_arch:
            rows += [Row(t, "task", "setup", "failed", error="no method produced an artifact to evaluate")
                     for t in self.task_cfgs]
        for (arch, width), method in by_arch.items():
            ref, extra = artifacts[method]
            for task in self.task_cfgs:
                batch = self.task_batches[task][index]
                error, cfg = None, self.task_cfgs[task]
                self.say(f"[rehearse] {task} on {method}'s artifact at batch {batch}")
                dims = None
                try:
                    cfg = pipeline.load_task_config(task, self.task_recipe, self.task_overrides(task, batch, roots))
                    preflight.check(workdir / "tasks", tasks=[cfg])
                    with rehearsal.section(f"task {task}"):
                        pipeline.evaluate(cfg, ref, workdir / "tasks", self.info.device, extra, self.info)
                    if TASKS.get(task).reads_feature_layers and index == 0:
                        dims = feature_dims(ref.backbone, arch, cfg)
                except Exception as e:  # noqa: BLE001 - reported per row
                    error = e
                task_rows = self.rows_of(task, "task", batch, error, to_dict(cfg), ("params", "features"))
                for r in task_rows:
                    r.note = r.note or (f"on {method}'s artifact ({arch}, width {width})" if r.stage == "evaluate"
                                        else None)
                    if r.stage == "evaluate" and task in DATA_BOUND:
                        r.note += f"; {DATA_BOUND[task][1]}"
                    if r.stage == "evaluate":
                        r.feature_dims = dims
                rows += task_rows
        return rows

    # --- the whole ---------------------------------------------------------------------------
    def device_bytes(self) -> int:
        if self.info.device.type == "cuda":
            return torch.cuda.get_device_properties(self.info.device).total_memory
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) * 1024
        return 0

    def project(self, row: Row) -> None:
        """The full run's time on this device, from the measured seconds per image."""
        if row.s_per_image is None or row.status != "ok":
            return
        images = None
        trained = re.search(r"pretrain (\S+)$", row.stage)
        if row.kind == "method" and trained:  # an earlier stage (ORL's stage 1) is another method's recipe
            cfg = self.method_cfgs.get(trained[1]) or pipeline.load_pretrain_config(trained[1], self.plan.recipe,
                                                                                    self.pre_over)
            per_epoch = TRAIN_IMAGES.get(cfg.data.source)
            images = per_epoch and per_epoch * cfg.train.epochs
        elif row.kind == "method" and row.steps == 0:  # a stage without steps (ORL's stage 2): once per image
            images = TRAIN_IMAGES.get(self.method_cfgs[row.name].data.source)
        elif row.kind == "task" and row.stage == "train":
            cfg = self.task_cfgs[row.name]
            params = from_dict(TASKS.get(row.name).Params, cfg.params, "params")
            if hasattr(params, "iterations"):
                images = params.iterations * params.batch_size
            elif hasattr(params, "epochs"):
                subset = getattr(TASKS.get(row.name), "SUBSET", "")
                per_epoch = TRAIN_IMAGES.get(cfg.data.source + (f"/{subset}" if subset else ""))
                images = per_epoch and per_epoch * params.epochs
        if images:
            row.projected_device_hours = round(row.s_per_image * images / 3600, 1)

    def run(self) -> dict[str, Any]:
        t0 = time.perf_counter()
        for runs in ("main", "probe"):  # a rehearsal starts clean; the generated data is keyed by its spec
            shutil.rmtree(self.root / runs, ignore_errors=True)
        self.say(f"[rehearse] generating data at {self.plan.image_size[0]}x{self.plan.image_size[1]} px")
        roots = self.generate()
        with rehearsal.recording(self.recorder):
            rows = self.run_pass(0, roots)
            probe = self.run_pass(1, roots) if self.plan.extrapolate else []
        device_mib = self.device_bytes() / MIB
        second = {(r.name, r.stage): r for r in probe}
        for r in rows:
            r.per_gpu_batch = (self.per_gpu_method(r.name) if r.kind == "method" else self.per_gpu_task(r.name)) \
                if r.steps else None
            other = second.get((r.name, r.stage))
            if other is not None and other.status == "failed" and r.status == "ok":
                r.status, r.error, r.keys = "failed", f"at batch {other.batch}: {other.error}", other.keys
            if r.steps and other is not None and other.grown_mib is not None and other.batch != r.batch:
                # the slope from what each part added, so whatever the process held before cancels
                r.probe_batch, r.probe_grown_mib = other.batch, other.grown_mib
                slope = (r.grown_mib - other.grown_mib) / (r.batch - other.batch)
                if slope < 0:  # less memory at the larger batch: allocator noise, nothing to extrapolate
                    r.note = f"no memory extrapolation: it added less at batch {max(r.batch, other.batch)} than at " \
                             f"{min(r.batch, other.batch)} (allocator noise between small batches)"
                else:
                    r.mib_at_per_gpu_batch = round(r.peak_mib + slope * (r.per_gpu_batch - r.batch), 1)
                    r.exceeds_device = r.mib_at_per_gpu_batch > device_mib
            self.project(r)
        failed = [r for r in rows if r.status == "failed"]
        return {"recipe": self.plan.recipe, "device": device_name(self.info.device), "device_mib": round(device_mib),
                "torch": torch.__version__, "git_revision": git_revision(), "finished": now_iso(),
                "wall_s": round(time.perf_counter() - t0, 1), "plan": {**dataclasses.asdict(self.plan),
                                                                     "methods": self.methods, "tasks": self.tasks},
                "batches": {"methods": self.method_batches, "tasks": self.task_batches},
                "memory": "CUDA max allocated" if self.info.device.type == "cuda" else
                          "peak resident set of the training process (loader workers not included)",
                "failed": len(failed), "rows": [dataclasses.asdict(r) for r in rows]}


def _fmt(value: Any, digits: int = 2) -> str:
    if value is None:
        return ""
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def to_markdown(report: dict[str, Any]) -> str:
    """The report as a table, one line per measured part."""
    head = ("| row | stage | status | batch | steps | wall s | s/step | s/image | peak MiB | MiB at per-GPU batch | "
            "projected device-h | feature dims (protocol) | error (recipe keys) |")
    lines = [f"Rehearsal of recipe `{report['recipe']}` on {report['device']} ({report['device_mib']} MiB), "
             f"{report['plan']['steps']} step(s) per training loop, {report['wall_s']:.0f} s; "
             f"git {report['git_revision']}. Memory: {report['memory']}. Projections are for one such device "
             "running the full recipe alone.",
             "", head, "|" + "---|" * (head.count("|") - 1)]
    for r in report["rows"]:
        dims = ", ".join(f"{k} {v['dim']}" + ("" if v["protocol"] is None else
                                               (" ok" if v["dim"] == v["protocol"] else f" (expected {v['protocol']})"))
                         for k, v in (r["feature_dims"] or {}).items())
        memory = "" if r["mib_at_per_gpu_batch"] is None else \
            f"{r['mib_at_per_gpu_batch']:.0f} @ {r['per_gpu_batch']}" + (" **exceeds**" if r["exceeds_device"] else "")
        error = (r["error"] or "") + (f" ({', '.join(r['keys'])})" if r["keys"] else "")
        error = error or (r["note"] or "")
        cells = [r["name"], r["stage"], r["status"], _fmt(r["batch"]), _fmt(r["steps"]), _fmt(r["wall_s"], 0),
                 _fmt(r["s_per_step"]), _fmt(r["s_per_image"], 3), _fmt(r["peak_mib"], 0), memory,
                 _fmt(r["projected_device_hours"], 1), dims, error.replace("|", "/")]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write(report: dict[str, Any], stem: Path) -> tuple[Path, Path]:
    json_path, md_path = stem.with_suffix(".json"), stem.with_suffix(".md")
    atomic_write_json(json_path, report)
    atomic_write_text(md_path, to_markdown(report))
    return json_path, md_path
