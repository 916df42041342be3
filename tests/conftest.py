"""Shared fixtures: the tiny embedded scenes are generated once per session and linked into each
test's own work directory, so tests never share artifacts, features or records."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from orl_bench import pipeline
from orl_bench.data.sources import pretrain_images
from orl_bench.engine.checkpoint import SIDECARS
from orl_bench.io import sha256_file
from orl_bench.methods.orl.stage2 import TIMINGS

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> Path:
    home = tmp_path_factory.mktemp("tiny_home")
    pretrain_images(pipeline.load_pretrain_config("byol", "tiny", []).data, home)
    return home / "data"


def fresh_home(parent: Path, name: str, tiny_data: Path) -> Path:
    """A new work directory PARENT/NAME that links the session's tiny data."""
    home = parent / name
    home.mkdir()
    (home / "data").symlink_to(tiny_data, target_is_directory=True)
    return home


@pytest.fixture
def workdir(tmp_path, tiny_data) -> Path:
    return fresh_home(tmp_path, "home", tiny_data)


def content_files(home: Path) -> dict[str, str]:
    """sha256 of every file under a work directory's artifacts/ and features/, but the sidecars
    (logs, timings, run facts) and locks: what must be equal between two runs of one command."""
    out = {}
    for top in ("artifacts", "features"):
        for f in sorted((home / top).rglob("*")):
            rel = f.relative_to(home)
            if f.is_file() and not {*SIDECARS, TIMINGS} & set(rel.parts) and f.suffix != ".lock":
                out[str(rel)] = sha256_file(f)
    return out


def run_cli(*args: str, env: dict | None = None, timeout: int = 300) -> subprocess.CompletedProcess:
    """`orl-bench ARGS` in a fresh interpreter (as a user runs it)."""
    full_env = {**os.environ, **(env or {})}
    return subprocess.run([sys.executable, "-m", "orl_bench.cli", *args], capture_output=True, text=True,
                          env=full_env, timeout=timeout, cwd=REPO)


def straight_then_killed(args: list[str], kill_at: str, tmp_path: Path, tiny_data: Path) -> tuple[Path, Path]:
    """`orl-bench ARGS` run to the end in one work directory and, in another, until SIGKILL at
    `kill_at` (an ORL_BENCH_KILL_AT spec); both share the tiny data. Returns (straight, killed)."""
    homes = [fresh_home(tmp_path, name, tiny_data) for name in ("straight", "killed")]
    done = run_cli(*args, "--workdir", str(homes[0]))
    assert done.returncode == 0, done.stderr[-3000:]
    killed = run_cli(*args, "--workdir", str(homes[1]), env={"ORL_BENCH_KILL_AT": kill_at})
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    return homes[0], homes[1]


def run_main(capsys, *args: str) -> str:
    """`orl-bench ARGS` in this process; asserts success and returns what it printed."""
    from orl_bench.cli import main
    assert main(list(args)) == 0
    return capsys.readouterr().out
