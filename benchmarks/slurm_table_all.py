"""`orl-bench table all --recipe tiny` built twice on this machine, once locally and once as a graph of
jobs on a two-node Slurm cluster started here (tests/slurm_cluster.py: Debian's slurm-wlm, root), each
in a fresh work directory (each generating the embedded data): the wall times side by side, the number of
jobs, and whether every table's cells are the same. One 2-core machine gains nothing from Slurm; the
point is the graph, reuse and recovery, and what the scheduling costs.

    python benchmarks/slurm_table_all.py --root /tmp/slurm_table_all --out results/perf/slurm_table_all_tiny.json
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # tests.slurm_cluster: the cluster the tests start

from orl_bench.provenance import save_benchmark_record  # noqa: E402
from tests.slurm_cluster import LocalSlurm, unavailable_reason  # noqa: E402

TABLE = ("table", "all", "--recipe", "tiny")


def build(home: Path, env: dict[str, str], *launcher: str) -> float:
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "orl_bench.cli", *TABLE, "--workdir", str(home), "--out",
                    str(home / "tables"), "--figures", str(home / "figures"), *launcher], check=True, env=env, cwd=REPO)
    return time.perf_counter() - t0


def cells(home: Path) -> pd.DataFrame:
    frames = [pd.read_csv(path).assign(file=path.name) for path in sorted((home / "tables").glob("table*.csv"))]
    return pd.concat(frames).set_index(["file", "table", "row", "column"])[["mean", "std", "n", "status"]].sort_index()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--root", type=Path, required=True, help="scratch folder (emptied): data, work dirs, cluster")
    p.add_argument("--out", type=Path, required=True, help="the JSON record to write")
    args = p.parse_args()
    if reason := unavailable_reason():
        sys.exit(f"slurm_table_all: {reason}")
    shutil.rmtree(args.root, ignore_errors=True)
    local, jobs = args.root / "local", args.root / "jobs"  # each generates its own data, inside its timing
    env = dict(os.environ)
    local_s = build(local, env)
    with LocalSlurm(args.root / "cluster", nodes=2) as cluster:
        config = args.root / "slurm.yaml"
        config.write_text(f"partition: {cluster.partition}\n")
        slurm_env = {**env, **cluster.env(), "ORL_BENCH_SLURM_CONFIG": str(config)}
        jobs_s = build(jobs, slurm_env, "--launcher", "slurm", "--wait")
        submitted = len((jobs / "slurm" / "jobs.jsonl").read_text().splitlines())
        t0 = time.perf_counter()
        again = subprocess.run([sys.executable, "-m", "orl_bench.cli", *TABLE, "--workdir", str(jobs), "--out",
                                str(jobs / "tables"), "--figures", str(jobs / "figures"), "--launcher", "slurm"],
                               check=True, env=slurm_env, cwd=REPO, capture_output=True, text=True)
        again_s = time.perf_counter() - t0
    same = cells(local).equals(cells(jobs))
    save_benchmark_record(args.out, {
        "what": "orl-bench table all --recipe tiny: a local build vs a graph of Slurm jobs on a two-node cluster "
                "on this same machine (2 CPUs per node as Slurm sees it; both nodes share this host's cores)",
        "local_wall_s": round(local_s, 1), "slurm_wall_s": round(jobs_s, 1),
        "slurm_jobs_submitted": submitted, "second_call_submitted": again.stdout.count("submitted Slurm job"),
        "second_call_s": round(again_s, 1), "same_cells": same, "load_average_after": os.getloadavg(),
        "command": " ".join(TABLE)})
    if not same:
        sys.exit("slurm_table_all: the Slurm build's cells differ from the local build's")


if __name__ == "__main__":
    main()
