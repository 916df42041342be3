#!/usr/bin/env bash
# Several seeds of several (method, recipe) runs on the embedded default, then the aggregated
# table and a copy of the records under results/ for committing. ORL's default (4 + 4 epochs)
# against BYOL's (8 epochs) is the equal-total-epochs comparison of issue 3; its stage 1 is the
# byol default_5e_epochs4 run, so that row comes for free.
#   WORKDIR=/tmp/seeds RUNS="random:default byol:default orl:default" bash benchmarks/embedded_seeds.sh 0 1 2
set -euo pipefail
cd "$(dirname "$0")/.."
WORKDIR=${WORKDIR:-orl_bench_home}
RUNS=${RUNS:-"random:default byol:default orl:default"}
OUT=${OUT:-results/embedded/voc07_svm_seeds}
SEEDS=("${@:-0 1 2}")
for seed in ${SEEDS[@]}; do
  for run in $RUNS; do
    orl-bench run --method "${run%%:*}" --recipe "${run#*:}" --task voc07_svm --seed "$seed" --workdir "$WORKDIR"
  done
done
mkdir -p "$(dirname "$OUT")"
orl-bench report --task voc07_svm --workdir "$WORKDIR" --out "$OUT.md"
cp "$WORKDIR/results/records.jsonl" "$OUT.jsonl"
