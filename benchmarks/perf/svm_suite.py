"""The VOC07 SVM benchmarks' two solvers, timed on identical features of VOC07's real shape.

`sequential` is the official code's loop: scikit-learn LinearSVC (liblinear), one fit after
another, one process. `fast` is the default: the Gram-space dual coordinate descent of
`orl_bench.tasks.svm_gram` with warm starts along the cost grid, classes in threads sharing one
Gram matrix. Both run the full protocol (20 classes, 19 costs, 3-fold CV, refit, VOC AP) and the
low-shot protocol (k positives + 19 k negatives per class, 5 draws, every cost, test-chosen) in
this one run, and the JSON holds both times, both mAPs and their ratio, with the device.

The features are synthetic with class structure: 20 multi-label classes at VOC-like positive
rates (2-40%), 8% of positives marked difficult, each class a sparse non-negative prototype added
with random strength to non-negative noise (like pooled ReLU maps), rows L2-normalised as the
protocol does. Sizes default to VOC07's: 5011 x 8192 trainval, 4952 x 8192 test.

    python benchmarks/perf/svm_suite.py --out results/perf/svm_suite_cpu.json

The sequential side takes hours at the real shape on 2 cores; `--parts` times one protocol at a
time (the JSON keeps the other's earlier result, each with its own revision and date) and
`--ks` / `--samples` shrink the low-shot part (recorded in the JSON) when that is too long.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import numpy as np

from orl_bench.io import atomic_write_json
from orl_bench.provenance import git_revision, now_iso
from orl_bench.tasks.lowshot_svm import evaluate_low_shot
from orl_bench.tasks.svm import evaluate_voc07

PAPER_KS = (1, 2, 4, 8, 16, 32, 64, 96)


def voc_shaped_features(n_train: int, n_test: int, dims: int, classes: int = 20, noise: float = 5.0,
                        seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    rates = np.clip(rng.lognormal(np.log(0.06), 0.6, classes), 0.02, 0.4)
    prototypes = np.abs(rng.normal(size=(classes, dims))) * (rng.random((classes, dims)) < 0.1)

    def split(n: int) -> tuple[np.ndarray, np.ndarray]:
        y = (rng.random((n, classes)) < rates).astype(np.int64)
        empty = y.sum(1) == 0
        y[empty, rng.integers(0, classes, empty.sum())] = 1  # every image shows something
        difficult = (y == 1) & (rng.random((n, classes)) < 0.08)
        x = (rng.uniform(0.2, 1.0, (n, classes)) * y) @ prototypes + noise * np.abs(rng.normal(size=(n, dims)))
        x = x.astype(np.float32)
        x /= np.linalg.norm(x, axis=1, keepdims=True) + np.float32(1e-5)
        y[difficult] = -1
        return x, y

    return (*split(n_train), *split(n_test))


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def timed(fn):
    load_before = os.getloadavg()[0]
    t0 = time.perf_counter()
    value = fn()
    return value, round(time.perf_counter() - t0, 2), [round(load_before, 2), round(os.getloadavg()[0], 2)]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--train", type=int, default=5011, help="trainval rows (VOC07: 5011)")
    p.add_argument("--test", type=int, default=4952, help="test rows (VOC07: 4952)")
    p.add_argument("--dims", type=int, default=8192, help="feature dims (res5 pooled on ResNet-50: 8192)")
    p.add_argument("--ks", default=",".join(map(str, PAPER_KS)), help="low-shot k values (the paper's by default)")
    p.add_argument("--samples", type=int, default=5, help="low-shot draws per k (the protocol's 5)")
    p.add_argument("--jobs", type=int, default=os.cpu_count(), help="the fast solver's threads")
    p.add_argument("--parts", default="full,lowshot", help="which protocols to time")
    p.add_argument("--out", required=True)
    args = p.parse_args()
    ks = tuple(int(k) for k in args.ks.split(","))
    xtr, ytr, xte, yte = voc_shaped_features(args.train, args.test, args.dims)
    # parts timed by an earlier run stay (each part's two solvers always share one run)
    earlier = json.loads(Path(args.out).read_text()) if Path(args.out).exists() else {}
    result = {**{part: earlier[part] for part in ("full", "lowshot") if part in earlier},
              "benchmark": "svm_suite", "device": f"{cpu_name()} ({os.cpu_count()} cores)",
              "shape": {"trainval": list(xtr.shape), "test": list(xte.shape)},
              "fast": f"solver=gram, n_jobs={args.jobs} (threads)", "sequential": "solver=liblinear, n_jobs=1",
              "load_avg_1min": "before, after each timing (os.getloadavg): other work on the host inflates both"}

    def record(name: str, fast, sequential) -> None:
        (fast_map, fast_s, fast_load), (seq_map, seq_s, seq_load) = fast, sequential
        result[name].update({"fast_s": fast_s, "sequential_s": seq_s, "speedup": round(seq_s / fast_s, 2),
                             "fast_map": fast_map, "sequential_map": seq_map,
                             "map_difference": round(abs(fast_map - seq_map), 4),
                             "load_fast": fast_load, "load_sequential": seq_load})
        atomic_write_json(args.out, result)
        print(name, result[name], flush=True)

    parts = args.parts.split(",")
    if "full" in parts:
        result["full"] = {"git_revision": git_revision(), "date": now_iso(),
                          "protocol": "20 classes x 19 costs, 3-fold CV AP, refit, VOC AP on test"}
        run = lambda solver, jobs: round(evaluate_voc07(xtr, ytr, xte, yte, n_jobs=jobs, solver=solver).map, 4)  # noqa: E731
        record("full", timed(lambda: run("gram", args.jobs)), timed(lambda: run("liblinear", 1)))
    if "lowshot" in parts:
        result["lowshot"] = {"git_revision": git_revision(), "date": now_iso(),
                             "protocol": "official: every cost, test-chosen per k", "ks": list(ks),
                             "samples": args.samples}

        def run_low(solver: str, jobs: int) -> dict[str, float]:
            out = evaluate_low_shot(xtr, ytr, xte, yte, ks=ks, samples=args.samples, n_jobs=jobs, solver=solver)
            return {str(r.k): round(r.mean, 4) for r in out}

        fast, seq = timed(lambda: run_low("gram", args.jobs)), timed(lambda: run_low("liblinear", 1))
        result["lowshot"]["per_k_fast"], result["lowshot"]["per_k_sequential"] = fast[0], seq[0]
        result["lowshot"]["per_k_difference_max"] = round(max(abs(fast[0][k] - seq[0][k]) for k in fast[0]), 4)
        mean = lambda per_k: round(float(np.mean(list(per_k.values()))), 4)  # noqa: E731
        record("lowshot", (mean(fast[0]), *fast[1:]), (mean(seq[0]), *seq[1:]))


if __name__ == "__main__":
    main()
