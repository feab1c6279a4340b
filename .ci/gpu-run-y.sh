#!/usr/bin/env bash
# GPU machine, call Y (fifth pass): is the GPU itself the limit of whole batches? bench_busy
# runs 3 inference threads under the profiler and reports the GPU's busy share and its kernels,
# for the letterbox that sums uint8 blocks (this tree) and the one before it (.devcarry/
# ops_before.py: frames converted to float, then pooled); then the default engine configuration
# through gRPC, and the same with the engine merging front ends' batches up to 128 images.
# Ran at commit d769bbc; .devcarry/ops_before.py is `git show d362e1b:server/facedet_server/tensor/gpu_letterbox.py`.
source .ci/gpu-setup.sh
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
BUSY="python3 -m facedet_bench.gpu_busy --model $FACEDET_MODEL --image $IMG --threads 3 --seconds 2.5"
echo "=== bench_busy, this tree"
timeout 200 $BUSY --batches 64,128 --json "$OUT/busy-new.json" 2>&1 | grep -vE "$QUIET"
rm -rf /tmp/before && cp -r server /tmp/before && cp .devcarry/ops_before.py /tmp/before/facedet_server/gpu/ops.py
echo "=== bench_busy, letterbox before (float frames, avg_pool2d)"
PYTHONPATH=/tmp/before:$PYTHONPATH timeout 120 $BUSY --batches 64 --json "$OUT/busy-before.json" 2>&1 | grep -vE "$QUIET"
ENGINE_LINES=2 run_config engine 4 --batch-workers 3
ENGINE_LINES=2 run_config engine128 4 --batch-workers 3 --engine-max-batch 128
