#!/usr/bin/env bash
# GPU machine, call V: the engine memory test as it stands after call U (the server's total RSS
# within 2%, each process within 2% or 8 MiB), then the default engine configuration through
# gRPC on the final tree (4 front ends, --batch-workers 3), for the record.
source .ci/gpu-setup.sh
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
timeout 200 python3 -m pytest -q -rs -s -p no:cacheprovider tests/gpu/test_engine_gpu.py -k "do_not_grow" > "$OUT/tests.log" 2>&1
grep -vE "$QUIET" "$OUT/tests.log" | grep -E "passed|failed|Error|assert|RSS" | tail -8
ENGINE_LINES=2 run_config engine 4 --batch-workers 3
