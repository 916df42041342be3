#!/usr/bin/env bash
# Benchmark tasks on the embedded default for a set of existing artifacts (chance, random, BYOL,
# ORL, supervised), then one report per task. TASKS defaults to the classification tasks.
#   WORKDIR=/tmp/cls ARTIFACTS="artifacts/random-... artifacts/byol-..." bash benchmarks/embedded_tasks.sh
#   TASKS=coco_maskrcnn OUT=results/embedded/detection_seeds WORKDIR=/tmp/det ARTIFACTS="..." bash benchmarks/embedded_tasks.sh
set -euo pipefail
cd "$(dirname "$0")/.."
WORKDIR=${WORKDIR:-orl_bench_home}
TASKS=${TASKS:-"knn linear_imagenet linear_places205 linear_inat18 semi_imagenet_1pct semi_imagenet_10pct"}
OUT=${OUT:-results/embedded/classification_seed0}
for task in $TASKS; do
  for artifact in $ARTIFACTS; do
    orl-bench eval --task "$task" --artifact "$WORKDIR/$artifact" --workdir "$WORKDIR" --recipe default
  done
done
mkdir -p "$(dirname "$OUT")"
for task in $TASKS; do orl-bench report --task "$task" --workdir "$WORKDIR" --out "$OUT.$task.md"; done
cp "$WORKDIR/results/records.jsonl" "$OUT.jsonl"
