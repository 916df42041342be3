"""The checks every pretraining method passes, for orl-bench's own suite and a plugin's tests alike.

A plugin's test calls them with its method's name (registered by its entry point, or for the test
alone with `registered_method`) and a work directory; they train on the tiny embedded scenes,
generated there on first use, on CPU:

    from orl_bench.testing import check_method

    def test_simsiam_passes_the_orl_bench_checks(tmp_path):
        check_method("simsiam", tmp_path)

`check_method` trains the method's tiny recipe for one epoch, exports it and reloads the backbone
strictly, checks the losses are finite, then kills a second run of the same config with SIGKILL
one step past a checkpoint, runs it again and checks that it resumed and that the exported
backbone is byte-identical to the first run's: training is deterministic and resumes exactly.
The killed run is a fork of the calling process (POSIX only), so it costs no interpreter start;
every run uses one torch thread, which keeps the forked child clear of the parent's OpenMP pool.
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import signal
import traceback
import warnings
from collections.abc import Iterator
from pathlib import Path

import torch
from safetensors.torch import load_file

from orl_bench import faults, pipeline
from orl_bench.config import PretrainConfig, recipe_root
from orl_bench.engine.checkpoint import BACKBONE, load_backbone, read_manifest
from orl_bench.engine.distributed import DistInfo
from orl_bench.io import sha256_file
from orl_bench.methods.base import Method
from orl_bench.registry import METHODS

CPU = DistInfo(0, 1, 0, torch.device("cpu"))
RECIPE = "tiny"
# A checkpoint every 2 steps and a kill after step 3 of 4: the resumed run starts from step 2
# and must redo the lost step 3 exactly, mid-epoch.
CHECKPOINT_EVERY_STEPS = 2
KILL_AFTER_STEP = 3
# Hashed: deterministic kernels. Not hashed, so every run below shares one artifact folder: the
# checkpoints above, one torch thread and no loader workers (fork-safe, and cheapest at this size).
CHECK_SETTINGS = ("train.epochs=1", "train.deterministic=true", "train.cpu_threads=1", "train.num_workers=0",
                  f"train.checkpoint_every_steps={CHECKPOINT_EVERY_STEPS}")
# What no exported backbone may hold: a classifier, a momentum target, the heads.
HEAD_PREFIXES = ("fc.", "target", "online", "projector")


@contextlib.contextmanager
def registered_method(name: str, cls: type[Method]) -> Iterator[type[Method]]:
    """`cls` registered as method `name` inside the block, for a plugin's tests before it is
    installed (an installed plugin is found through its entry point); unregistered after it."""
    with METHODS.scope():
        METHODS.register(name)(cls)
        yield cls


def tiny_config(method: str, *overrides: str) -> PretrainConfig:
    """The method's tiny recipe (the shipped tiny scale with the method's defaults where it ships
    none) for one epoch, under the settings the checks need and then `overrides` (`train.x=y`)."""
    own = pipeline.recipe_folder(method) / f"{RECIPE}.yaml"
    recipe = own if own.is_file() else recipe_root("pretrain") / "_scales" / f"{RECIPE}.yaml"
    return pipeline.load_pretrain_config(method, str(recipe), [*CHECK_SETTINGS, *overrides])


@contextlib.contextmanager
def _global_determinism_restored() -> Iterator[None]:
    """torch's global deterministic-algorithms switch as it was before the block (a deterministic
    run turns it on for the whole process)."""
    enabled, warn_only = torch.are_deterministic_algorithms_enabled(), \
        torch.is_deterministic_algorithms_warn_only_enabled()
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(enabled, warn_only=warn_only)


def _pretrain(cfg: PretrainConfig, workdir: Path) -> Path:
    with _global_determinism_restored():
        return pipeline.ensure_pretrained(cfg, RECIPE, workdir, CPU)[0]


def _log(folder: Path) -> list[dict]:
    return [json.loads(line) for line in (folder / "log.jsonl").read_text().splitlines() if line.strip()]


def train_tiny(method: str, workdir: Path, *overrides: str) -> Path:
    """Train `method` as `tiny_config` says (earlier stages first, if it has any), then check its
    export: the backbone alone, reloaded strictly, after finite losses. Returns the artifact folder."""
    cfg = tiny_config(method, *overrides)
    folder = _pretrain(cfg, Path(workdir))
    backbone, manifest = load_backbone(folder)  # strict: no key missing or left over
    assert manifest["method"] == method, f"the artifact is {manifest['method']}'s, not {method}'s"
    saved = set(load_file(str(folder / BACKBONE)))
    assert saved == set(backbone.state_dict())
    heads = sorted(k for k in saved if k.startswith(HEAD_PREFIXES))
    assert not heads, f"{method} exports more than its backbone: {heads[:5]}"
    losses = [row["loss"] for row in _log(folder) if "loss" in row]
    assert losses and all(math.isfinite(v) for v in losses), f"{method}'s logged losses: {losses}"
    return folder


def _train_until_killed(cfg: PretrainConfig, workdir: Path, after_step: int) -> None:
    """Train `cfg` in a forked child that SIGKILLs itself after optimiser step `after_step`
    (orl_bench/faults.py): no cleanup, no flush, as a crash or an OOM kill leaves a run."""
    if not hasattr(os, "fork"):
        raise RuntimeError("the kill -9 check forks the test process, which needs a POSIX system (Linux, macOS)")
    with warnings.catch_warnings():  # Python >= 3.12 warns of any fork beside threads: the idle OpenMP pool's
        warnings.simplefilter("ignore", DeprecationWarning)
        pid = os.fork()
    if pid == 0:
        try:
            torch.set_num_threads(1)  # libgomp's threads do not survive a fork: stay on this one
            faults.kill_at("train.step", after_step)
            _pretrain(cfg, workdir)
        except BaseException:
            traceback.print_exc()
        finally:
            os._exit(1)  # never return into the caller's test runner
    _, status = os.waitpid(pid, 0)
    code = os.waitstatus_to_exitcode(status)
    assert code == -signal.SIGKILL, (f"{cfg.method['name']}: the run to kill after step {after_step} "
                                     f"ended with exit code {code} instead (its error is printed above)")


def check_method(method: str, workdir: Path, *overrides: str) -> None:
    """Every check a registered method must pass, on `tiny_config` under `overrides` (e.g.
    `train.augment=device`) in `workdir`: `train_tiny`, then a second run of the same config killed
    after step 3 (one past its checkpoint of step 2) and run again must resume from step 2 and
    export the first run's backbone, byte for byte. Earlier stages, if the method has any, are the
    first run's, reused, so the kill lands in its last stage."""
    workdir = Path(workdir)
    cfg = tiny_config(method, *overrides)
    folder = train_tiny(method, workdir, *overrides)
    steps = read_manifest(folder)["steps"]
    if steps <= KILL_AFTER_STEP:
        raise ValueError(f"{method}'s tiny recipe trains {steps} steps in one epoch; the resume check needs at "
                         f"least {KILL_AFTER_STEP + 1}: lower train.batch_size in its tiny recipe")
    uninterrupted = sha256_file(folder / BACKBONE)
    shutil.rmtree(folder)
    _train_until_killed(cfg, workdir, KILL_AFTER_STEP)
    assert _pretrain(cfg, workdir) == folder
    resumes = [e["step"] for e in _log(folder) if e.get("event") == "resume"]
    assert resumes == [CHECKPOINT_EVERY_STEPS], \
        f"{method} resumed at steps {resumes}, not once at step {CHECKPOINT_EVERY_STEPS}"
    if sha256_file(folder / BACKBONE) != uninterrupted:
        # tell nondeterminism from an inexact resume by a third, uninterrupted run
        shutil.rmtree(folder)
        deterministic = sha256_file(_pretrain(cfg, workdir) / BACKBONE) == uninterrupted
        raise AssertionError(
            f"{method}: killed after step {KILL_AFTER_STEP} and resumed, it exports a backbone that differs from an "
            "uninterrupted run's; " + ("two uninterrupted runs agree, so the resume is inexact: keep all training "
                                       "state in the method's state_dict (buffers)" if deterministic else
                                       "two uninterrupted runs differ too: training is not deterministic (draw "
                                       "only from torch's global generators, which the engine seeds)"))
