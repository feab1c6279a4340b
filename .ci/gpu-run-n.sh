#!/usr/bin/env bash
# GPU machine, call N: the engine's memory over 24,000 requests and the engine test file.
source .ci/gpu-setup.sh
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
timeout 500 python3 -m pytest -q -rs -s -p no:cacheprovider tests/gpu/test_engine_gpu.py > "$OUT/tests.log" 2>&1
grep -vE '^W1|pow_by_natural|Warn' "$OUT/tests.log" | grep -E "passed|failed|Error|assert|host RSS|SKIP" | tail -15
