"""Why one backbone beats another on kNN: each artifact's kNN top-1 on the embedded ImageNet-style set
over k and T, at the protocol's layer (res5 global average) and beside it, with two facts about the
feature geometry that kNN reads: how alike two random images look (mean cosine similarity of
different images, near 1 when one shared direction dominates) and how many directions carry the
variance (participation ratio of the covariance spectrum). Centring the features on the train mean
before the cosine is shown too (it removes the shared direction), and standardising each dimension
(centred, divided by its train std: no single channel's scale dominates the cosine).

    python benchmarks/knn_analysis.py --workdir HOME --artifacts random=HOME/artifacts/random-... \\
        byol=HOME/artifacts/byol-... --set task.params.embedded.photometric=0.6 --out results/embedded/knn_analysis_photometric
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from orl_bench.config import FeatureConfig, from_dict
from orl_bench.data.classification import classification_split
from orl_bench.engine.checkpoint import load_backbone
from orl_bench.io import atomic_write_text
from orl_bench.pipeline import load_task_config
from orl_bench.registry import TASKS
from orl_bench.tasks.features import compute_features
from orl_bench.tasks.knn import knn_classify

KS = (5, 10, 20, 50, 100)
TEMPERATURES = (0.02, 0.07, 0.2, 1.0)


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workdir", required=True, help="where the embedded set is (or will be) generated")
    p.add_argument("--artifacts", nargs="+", required=True, help="NAME=ARTIFACT_DIR for each backbone")
    p.add_argument("--recipe", default="default", help="the knn benchmark recipe whose data and preprocessing are read")
    p.add_argument("--set", dest="overrides", action="append", default=[],
                   help="task overrides for that recipe, e.g. task.params.embedded.photometric=0.6 (a design under test)")
    p.add_argument("--layers", nargs="+", default=["res5_gap", "res4", "res5"])
    p.add_argument("--out", required=True, help="path stem: writes .md and .json")
    return p.parse_args()


def geometry(x: np.ndarray) -> dict[str, float]:
    unit = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    sample = unit[np.random.default_rng(0).permutation(len(unit))[:500]]
    cos = sample @ sample.T
    eig = np.clip(np.linalg.eigvalsh(np.cov(x.T)), 0, None)
    return {"mean_cosine": float(cos[~np.eye(len(cos), dtype=bool)].mean()),
            "participation_ratio": float(eig.sum() ** 2 / max((eig ** 2).sum(), 1e-30))}


def main() -> None:
    args = parse_args()
    task = load_task_config("knn", args.recipe, [o.removeprefix("task.") for o in args.overrides])
    prep = FeatureConfig(tuple(args.layers), task.features.resize_short, task.features.size, 128, 1)
    embedded = from_dict(TASKS.get("knn").Params, task.params, "task.params").embedded
    splits = {s: classification_split(task.data, embedded, Path(args.workdir), "imagenet", s) for s in ("train", "val")}
    classes = len(splits["train"].classes)
    rows = []
    for item in args.artifacts:
        name, path = item.split("=", 1)
        backbone, _ = load_backbone(Path(path))
        with torch.no_grad():
            feats = {s: compute_features(backbone, sp.paths, prep.layers, prep, torch.device("cpu")).by_layer
                     for s, sp in splits.items()}
        for layer in prep.layers:
            train, val = feats["train"][layer], feats["val"][layer]
            mean, std = train.mean(0, keepdims=True), train.std(0, keepdims=True) + 1e-6
            row = {"backbone": name, "layer": layer, "dims": int(train.shape[1]), **geometry(train),
                   "centred_mean_cosine": geometry(train - mean)["mean_cosine"]}
            for prefix, shift, scale in (("", 0.0, 1.0), ("centred ", mean, 1.0), ("standardised ", mean, std)):
                a, b = (train - shift) / scale, (val - shift) / scale
                for k in KS:
                    for t in TEMPERATURES:
                        acc = knn_classify(a, splits["train"].targets, b, splits["val"].targets, classes, k, t)
                        row[f"{prefix}k{k} T{t:g}"] = acc["top1"]
            rows.append(row)
            print(json.dumps({k: row[k] for k in ("backbone", "layer", "mean_cosine", "participation_ratio",
                                                  "k20 T0.07", "standardised k20 T0.07")}), flush=True)
    atomic_write_text(Path(f"{args.out}.json"), json.dumps(rows, indent=1) + "\n")
    cols = ["k20 T0.07", "k10 T0.07", "k50 T0.07", "k20 T0.02", "k20 T0.2", "k20 T1",
            "centred k20 T0.07", "standardised k20 T0.07", "standardised k20 T0.2"]
    lines = ["| backbone | layer | dims | mean cosine | participation ratio | " + " | ".join(cols) + " |",
             "|" + "---|" * (5 + len(cols))]
    for r in rows:
        lines.append(f"| {r['backbone']} | {r['layer']} | {r['dims']} | {r['mean_cosine']:.3f} | "
                     f"{r['participation_ratio']:.1f} | " + " | ".join(f"{r[c]:.1f}" for c in cols) + " |")
    best = {r["backbone"] + " " + r["layer"]: max((v, k) for k, v in r.items()
                                                  if k.startswith(("k", "centred k", "standardised k")))
            for r in rows}
    lines += ["", "Best setting per backbone and layer: " +
              "; ".join(f"{name} {v:.1f} ({k})" for name, (v, k) in best.items())]
    atomic_write_text(Path(f"{args.out}.md"), "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
