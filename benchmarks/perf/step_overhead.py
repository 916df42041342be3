"""What the trainer adds to every step for exact resumes and divergence checks: seeding the
global generators from (seed, step) and testing the loss for NaN/inf (a host sync on CUDA); and
the rehearsal hook (`engine.rehearsal.step_done`) outside a rehearsal, as every run calls it.
Reported beside a real step of the method, from the same run. Writes JSON with the device.

    python benchmarks/perf/step_overhead.py --method byol --recipe default --out results/perf/step_overhead_cpu.json
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from orl_bench import pipeline
from orl_bench.engine import rehearsal
from orl_bench.engine.distributed import DistInfo
from orl_bench.engine.trainer import build_method, seed_globals
from orl_bench.io import atomic_write_json
from orl_bench.methods.base import Progress
from orl_bench.provenance import device_name, git_revision, now_iso


def per_call(fn, calls: int) -> float:
    t0 = time.perf_counter()
    for i in range(calls):
        fn(i)
    return (time.perf_counter() - t0) / calls


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--method", default="byol")
    p.add_argument("--recipe", default="default")
    p.add_argument("--steps", type=int, default=5, help="model steps timed (after one warm-up)")
    p.add_argument("--out", required=True)
    args = p.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    cfg = pipeline.load_pretrain_config(args.method, args.recipe, [])
    method = build_method(cfg, DistInfo(0, 1, 0, device)).to(device).train()
    size = method.params.views.size
    batch = tuple(torch.randn(cfg.train.batch_size, 3, size, size, device=device) for _ in range(2))
    optimizer = torch.optim.SGD(method.parameters(), lr=0.01)

    def step(i: int) -> torch.Tensor:
        loss = method(batch, Progress(i, 100, 0))["loss"]
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return loss

    step(0)
    if device.type == "cuda":
        torch.cuda.synchronize()
    step_s = per_call(step, args.steps)
    loss = step(0)
    seed_s = per_call(lambda i: seed_globals(0, i), 2000)
    finite_s = per_call(lambda i: bool(torch.isfinite(loss.detach())), 2000)
    hook_s = per_call(lambda i: rehearsal.step_done(cfg.train.batch_size), 100_000)
    result = {"benchmark": "step_overhead", "method": args.method, "recipe": args.recipe,
              "batch": cfg.train.batch_size, "device": device_name(device), "git_revision": git_revision(),
              "timestamp": now_iso(), "model_step_s": round(step_s, 5), "seed_globals_s": round(seed_s, 7),
              "finite_check_s": round(finite_s, 7), "rehearsal_hook_s": round(hook_s, 9),
              "overhead_share_of_step": round((seed_s + finite_s + hook_s) / step_s, 6)}
    atomic_write_json(Path(args.out), result)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
