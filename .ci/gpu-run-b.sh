#!/usr/bin/env bash
# GPU machine, call B: GPU tests again, model-only and pipeline benchmarks, then through gRPC
# (unary and streams) against in-process, with the torch-CUDA backend. Results land in $OUT.
source .ci/gpu-setup.sh
set -o pipefail
IMG="$FACEDET_SHARED/images/zidane.jpg"
GPU_SET=(--set backend=torch --set max_batch=64 --set batch_workers=2 --set max_queue=4096 --set stream_window=32)
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
timeout 200 python3 -m pytest tests/gpu/test_torch_backend.py -q -p no:cacheprovider -rA -s \
  2>&1 | tee "$OUT/gpu-tests.log" | grep -E "passed|failed|FAILED|^E |RSS" | tail -20
timeout 100 bash trt_runtime/gpu_tests.sh 2>&1 | grep -E "passed|failed|skipped|error" | tail -8
timeout 120 python3 -m facedet_bench.gpu_model --model "$FACEDET_MODEL" --modes graph \
  --json "$OUT/model-bench.json" 2>&1 | grep -v Warning | tee "$OUT/model-bench.log" | tail -12
timeout 90 python3 -m facedet_bench.gpu_pipeline --model "$FACEDET_MODEL" --image "$IMG" \
  --batches 32,64,128 --duration 4 2>&1 | tee "$OUT/pipeline-bench.log" | grep -E "^batch|device|Error" | tail -6
timeout 150 python3 -m facedet.cli bench --compare --model "$FACEDET_MODEL" --image "$IMG" \
  --concurrency 64,256 --duration 6 --warmup 3 "${GPU_SET[@]}" 2>&1 | tee "$OUT/grpc-unary.log" | tail -14
timeout 120 python3 -m facedet.cli bench --compare --model "$FACEDET_MODEL" --image "$IMG" --stream \
  --window 8 --concurrency 32,128 --duration 6 --warmup 3 "${GPU_SET[@]}" 2>&1 | tee "$OUT/grpc-stream.log" | tail -14
