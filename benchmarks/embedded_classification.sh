#!/usr/bin/env bash
# The classification benchmarks on the embedded default for a set of existing artifacts (chance,
# random, BYOL, ORL, supervised: the closing numbers of issue 9), then one report per task.
#   WORKDIR=/tmp/cls ARTIFACTS="artifacts/random-... artifacts/byol-..." bash benchmarks/embedded_classification.sh
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
