#!/usr/bin/env bash
# BYOL vs random initialisation on the embedded default, several seeds each (issue: spine
# acceptance). Appends to the work directory's records, then writes the aggregated table and a
# copy of the records under results/ for committing.
#   WORKDIR=/tmp/seeds bash benchmarks/embedded_seeds.sh 0 1 2
set -euo pipefail
cd "$(dirname "$0")/.."
WORKDIR=${WORKDIR:-orl_bench_home}
SEEDS=("${@:-0 1 2}")
for seed in ${SEEDS[@]}; do
  for method in random byol; do
    orl-bench run --method "$method" --task voc07_svm --seed "$seed" --workdir "$WORKDIR"
  done
done
mkdir -p results/embedded
orl-bench report --task voc07_svm --workdir "$WORKDIR" --out results/embedded/voc07_svm_seeds.md
cp "$WORKDIR/results/records.jsonl" results/embedded/voc07_svm_seeds.jsonl
