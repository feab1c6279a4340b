#!/usr/bin/env bash
# GPU machine, call A: correctness tests, then model-only and in-process pipeline benchmarks.
# Run through the device tool with carry [.whl, .trtwhl, .devcarry]; results land in $OUT.
source .ci/gpu-setup.sh
set -o pipefail
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
timeout 240 python3 -m pytest tests/gpu/test_torch_backend.py -q -p no:cacheprovider -rA -s \
  --junitxml="$OUT/junit-torch.xml" 2>&1 | tee "$OUT/gpu-tests.log" | grep -E "passed|failed|PASSED|FAILED|Error|RSS" | tail -40
timeout 120 bash trt_runtime/gpu_tests.sh 2>&1 | tail -15
timeout 200 python3 -m facedet_bench.gpu_model --model "$FACEDET_MODEL" --modes eager,graph \
  --json "$OUT/model-bench.json" 2>&1 | tee "$OUT/model-bench.log"
timeout 120 python3 -m facedet_bench.gpu_pipeline --model "$FACEDET_MODEL" \
  --image "$FACEDET_SHARED/images/zidane.jpg" --json "$OUT/pipeline-bench.json" 2>&1 | tee "$OUT/pipeline-bench.log"
timeout 150 python3 -m facedet_bench.gpu_model --model "$FACEDET_MODEL" --modes compile \
  --batches 32,128 --shapes 640x640 --json "$OUT/compile-bench.json" 2>&1 | tail -5 | tee "$OUT/compile-bench.log"
