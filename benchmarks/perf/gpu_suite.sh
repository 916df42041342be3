#!/usr/bin/env bash
# What to run on a GPU machine: the paper-scale rehearsal, the CUDA tests (bf16 autocast, channels_last, CUDA artifacts),
# then the perf benchmarks at the paper's network and resolution (ResNet-50, 224 px views, 96 px
# RoI patches) on COCO-sized (640 x 480) embedded scenes, so no real data is needed. Most needed
# first: by estimate from the H100 run's timings, about 7 minutes to the extras.
#   RESULTS=results/perf BATCH=256 bash benchmarks/perf/gpu_suite.sh
# Selective search is CPU work measured by orl_stage2.py on CPU machines; here stage 2 takes the
# ground-truth boxes, so OpenCV's contrib build is not needed on the GPU machine.
set -euo pipefail
cd "$(dirname "$0")/../.."
RESULTS=${RESULTS:-results/perf}
BATCH=${BATCH:-256}
WORK=${WORK:-$(mktemp -d)}
PY=${PYTHON:-python3}
mkdir -p "$RESULTS"

# First the paper-scale rehearsal: every method and task through the paper recipes at their per-GPU
# batch (bf16, channels_last), does it run and fit, and at what time per step. A failed row is
# reported in the table; the suite goes on.
$PY -m orl_bench.cli rehearse --recipe paper --workdir "$WORK" --out results/rehearsal/paper_gpu \
  || echo "gpu_suite: the rehearsal reported failures (results/rehearsal/paper_gpu.md)" >&2

$PY -m pytest -m gpu tests/test_gpu.py -q -p no:cacheprovider 2>&1 | tee "$RESULTS/gpu_tests.log"
# detectron2's trainer on the GPU (MODEL.DEVICE cuda), where detectron2 is installed: its end-to-end
# test (fine-tune, kill -9, resume to the same weights) and the paper config check.
if $PY -c "import detectron2" 2>/dev/null; then
  $PY -m pytest tests/tasks/test_detectron2_backend.py -q -p no:cacheprovider 2>&1 | tee "$RESULTS/detectron2_gpu_tests.log"
else
  echo "gpu_suite: detectron2 is not installed; its backend is not run on the GPU" >&2
fi

SCENES=(--set data.source=synth --set "data.synth={height: 480, width: 640, coco_train: 2048, coco_val: 0, voc_trainval: 0, voc_test: 0}")
RUN=("${SCENES[@]}" --set "train.batch_size=$BATCH" --set train.epochs=1)
# BYOL on both view paths (loader workers, batched on the GPU), with the model-only bound and peak
# memory, beside lightly's BYOL at the same settings (lightly's wheel carried to the machine).
if $PY -c "import lightly" 2>/dev/null; then
  $PY benchmarks/perf/peer_lightly.py --recipe paper "${RUN[@]}" --methods byol --steps 20 --workdir "$WORK" \
    --out "$RESULTS/peer_lightly_byol_paper_gpu.json"
else
  echo "gpu_suite: lightly is not installed; BYOL is measured without its peer" >&2
  for augment in loader device; do
    $PY benchmarks/perf/pretrain_throughput.py --method byol --recipe paper "${RUN[@]}" --set "train.augment=$augment" \
      --steps 20 --workdir "$WORK" --out "$RESULTS/pretrain_byol_paper_${augment}_views_gpu.json"
  done
fi
# ORL's chain: a 1-epoch stage 1 (only to mine pairs), stage 2 on ground-truth boxes, then stage 3.
$PY benchmarks/perf/pretrain_throughput.py --method orl --recipe paper "${RUN[@]}" \
  --set method.stage2.box_source=gt --steps 20 --workdir "$WORK" --out "$RESULTS/pretrain_orl_paper_gpu.json"
# Stage 3 with its views and RoI patches made on the GPU (the earlier stages inherit train.augment:
# their 1-epoch rebuild on the GPU is part of this line's time, not of the stage-3 figures).
$PY benchmarks/perf/pretrain_throughput.py --method orl --recipe paper "${RUN[@]}" --set method.stage2.box_source=gt \
  --set train.augment=device --steps 20 --workdir "$WORK" --out "$RESULTS/pretrain_orl_paper_device_views_gpu.json"
STAGE1=$(dirname "$(ls "$WORK"/artifacts/byol-*/manifest.json | head -n 1)")
$PY benchmarks/perf/orl_stage2.py --stage1 "$STAGE1" --recipe paper --set box_source=gt \
  --recipe-set data.source=synth --recipe-set "${SCENES[3]}" --workdir "$WORK" --out "$RESULTS/orl_stage2_paper_gpu.json"
# Extras, after what the throughput acceptance needs, so a short lease loses only these: BYOL with
# compiled backbones, then SimCLR and MoCo v2 beside lightly.
$PY benchmarks/perf/pretrain_throughput.py --method byol --recipe paper "${RUN[@]}" --set train.compile=true \
  --steps 20 --workdir "$WORK" --out "$RESULTS/pretrain_byol_paper_compile_gpu.json"
if $PY -c "import lightly" 2>/dev/null; then
  $PY benchmarks/perf/peer_lightly.py --recipe paper "${RUN[@]}" --methods simclr,mocov2 --steps 20 --workdir "$WORK" \
    --out "$RESULTS/peer_lightly_simclr_mocov2_paper_gpu.json"
fi
