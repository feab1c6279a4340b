#!/usr/bin/env bash
# GPU machine, call H: tests/gpu (compiled model parity, memory over 24,000 requests) and the
# in-process service with three inference threads.
source .ci/gpu-setup.sh
IMG="$FACEDET_SHARED/images/zidane.jpg"
FD="python3 -m facedet.cli"
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
timeout 400 python3 -m pytest -q -rs -s tests/gpu/test_torch_backend.py > "$OUT/tests-full.log" 2>&1
grep -vE "^W1|pow_by_natural" "$OUT/tests-full.log" | grep -E "passed|failed|Error|assert|host RSS|SKIP" | tail -15
timeout 180 $FD bench --in-process --model "$FACEDET_MODEL" --image "$IMG" --concurrency 256 --duration 6 --warmup 2 \
  --set backend=torch --set max_batch=64 --set batch_workers=3 --set max_queue=4096 > "$OUT/inproc-full.log" 2>&1
grep -vE "^W1|pow_by_natural" "$OUT/inproc-full.log" | tail -9
