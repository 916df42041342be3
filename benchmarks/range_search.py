"""Measure the embedded benchmark's range under variants of the scene generator and recipes.

For each variant (a set of `--set` overrides, applied to pretraining and to the benchmark alike)
and each method, `orl-bench run --task TASK` (default voc07_svm) runs in its own process (several at
a time), then one table shows chance, every method's score and the two range figures the embedded
default is held to: supervised - random, and the share of it BYOL recovers. Variants whose overrides
all start with `task.` change only the benchmark's data or recipe, so they share one workdir and its
pretrained artifacts.

    python benchmarks/range_search.py --variants benchmarks/range_search.yaml \\
        --methods random supervised byol --parallel 4 --workdir /tmp/range --out results/embedded/range_search
    python benchmarks/range_search.py --variants benchmarks/range_search_classify.yaml --task linear_imagenet \\
        --layer best --methods random supervised byol mocov2 --workdir /tmp/range --out results/embedded/classify
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import yaml

from orl_bench.io import atomic_write_text, read_jsonl


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--variants", required=True, help="YAML: variant name -> {overrides: {dotted.key: value}}")
    p.add_argument("--only", nargs="*", help="run just these variants (default: all in the file)")
    p.add_argument("--methods", nargs="+", default=["random", "supervised", "byol"])
    p.add_argument("--recipe", default="default")
    p.add_argument("--task", default="voc07_svm", help="the benchmark each run records")
    p.add_argument("--layer", default="res5",
                   help="the layer tabulated; 'best' takes the layer each record marks best (the linear probes' "
                        "protocol reports the best layer)")
    p.add_argument("--seeds", nargs="+", type=int, default=[0])
    p.add_argument("--parallel", type=int, default=1, help="runs at a time (each with its own workers)")
    p.add_argument("--set", dest="extra", action="append", default=[],
                   help="overrides for every run, e.g. worker counts that do not change results")
    p.add_argument("--workdir", required=True)
    p.add_argument("--out", required=True, help="path stem: writes .md and .jsonl (the records)")
    return p.parse_args()


def overrides_of(variant: dict) -> list[str]:
    """Data overrides go to the pretraining data and the benchmark's data, so both see one design."""
    out = []
    for key, value in (variant.get("overrides") or {}).items():
        text = f"{key}={json.dumps(value)}"
        out.append(text)
        if key.startswith("data."):
            out.append(f"task.{text}")
    return out


def variant_workdir(args: argparse.Namespace, name: str, variant: dict) -> Path:
    """A variant's own workdir, or the one all benchmark-only variants share (same pretraining)."""
    benchmark_only = all(k.startswith("task.") for k in variant.get("overrides") or {})
    return Path(args.workdir) / ("benchmark_variants" if benchmark_only else name)


def run_stem(args: argparse.Namespace, name: str, method: str, seed: int) -> Path:
    """Where one run's log and records go: under the workdir, per --out, so searches sharing a workdir
    keep theirs apart."""
    return Path(args.workdir) / "runs" / Path(args.out).name / f"{name}-{method}-{seed}"


def run_one(args: argparse.Namespace, name: str, variant: dict, method: str, seed: int) -> float:
    stem = run_stem(args, name, method, seed)
    cmd = [sys.executable, "-m", "orl_bench.cli", "run", "--method", method, "--recipe", args.recipe,
           "--task", args.task, "--seed", str(seed), "--workdir", str(variant_workdir(args, name, variant)),
           "--records-out", f"{stem}.jsonl"]
    for o in overrides_of(variant) + args.extra:
        cmd += ["--set", o]
    t0 = time.perf_counter()
    log = Path(f"{stem}.log")
    with open(log, "w") as f:
        rc = subprocess.call(cmd, stdout=f, stderr=subprocess.STDOUT)
    if rc:
        print(f"FAILED ({rc}): {name} {method} seed {seed}; see {log}", flush=True)
    else:
        print(f"done {name} {method} seed {seed} in {time.perf_counter() - t0:.0f} s", flush=True)
    return time.perf_counter() - t0


def table(args: argparse.Namespace, records: dict[str, list[dict]]) -> str:
    """One row per variant: each method's score at --layer (mean over seeds) beside chance."""
    cols = ["chance", *args.methods]
    lines = ["| variant | " + " | ".join(cols) + " | sup - random | (byol - random) / (sup - random) |",
             "|" + "---|" * (len(cols) + 3)]
    for name, rows in records.items():
        values: dict[str, list[float]] = {}
        for r in rows:
            if r.get("layer") is None or (r.get("best") if args.layer == "best" else r.get("layer") == args.layer):
                values.setdefault(r["method"], []).append(r["value"])
        m = {k: sum(values[k]) / len(values[k]) if values.get(k) else None for k in cols}
        span = m["supervised"] - m["random"] if m.get("supervised") and m.get("random") else None
        share = (m["byol"] - m["random"]) / span if span and m.get("byol") else None
        cells = ["-" if m[k] is None else f"{m[k]:.2f}" for k in cols]
        lines.append(f"| {name} | " + " | ".join(cells) +
                     f" | {'-' if span is None else f'{span:.2f}'} | {'-' if share is None else f'{share:.2f}'} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    args = parse_args()
    variants = yaml.safe_load(Path(args.variants).read_text())
    names = args.only or list(variants)
    unknown = sorted(set(names) - set(variants))
    if unknown:
        sys.exit(f"unknown variants {unknown}; {args.variants} defines {sorted(variants)}")
    run_stem(args, "", "", 0).parent.mkdir(parents=True, exist_ok=True)
    jobs = [(n, m, s) for n in names for s in args.seeds for m in args.methods]

    def write_table() -> None:  # after every run, so an interrupted search still leaves its table
        # Only this search's runs: a variant's workdir also holds earlier runs under other settings.
        records = {n: [{**r, "range_variant": n} for m in args.methods for s in args.seeds
                       if (f := Path(f"{run_stem(args, n, m, s)}.jsonl")).exists() for r in read_jsonl(f)]
                   for n in names}
        atomic_write_text(Path(f"{args.out}.md"), table(args, records))
        atomic_write_text(Path(f"{args.out}.jsonl"),
                          "".join(json.dumps(r, sort_keys=True) + "\n" for rows in records.values() for r in rows))

    def run_and_tabulate(job: tuple[str, str, int]) -> None:
        run_one(args, job[0], variants[job[0]], job[1], job[2])
        with lock:
            write_table()

    lock = threading.Lock()
    scenes = {str(variant_workdir(args, n, variants[n])): [x for o in overrides_of(variants[n]) if o.startswith("data.")
                                                           for x in ("--set", o)] for n in names}
    for workdir, data in scenes.items():  # each workdir's scenes once, on all cores, before its runs race to make them
        subprocess.run([sys.executable, "-m", "orl_bench.cli", "data", "synth", "--recipe", args.recipe, *data,
                        "--workdir", workdir], check=True, stdout=subprocess.DEVNULL)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    with ThreadPoolExecutor(args.parallel) as pool:
        list(pool.map(run_and_tabulate, jobs))
    print(Path(f"{args.out}.md").read_text())

if __name__ == "__main__":
    main()
