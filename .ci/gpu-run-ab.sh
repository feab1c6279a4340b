#!/usr/bin/env bash
# GPU machine, call AB (fifth pass): the tree as it stands after the decode thread was taken out
# again (runs Z and AA) and the switch interval became 1 ms by default: all of tests/gpu, then
# the default engine configuration through gRPC, for the record.
exec > >(tee "$OUT/run.log") 2>&1
source .ci/gpu-setup.sh
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
timeout 360 python3 -m pytest -q -rs -s -p no:cacheprovider tests/gpu > "$OUT/tests.log" 2>&1
grep -vE "$QUIET" "$OUT/tests.log" | grep -E "passed|failed|skipped|SKIPPED|Error|assert|RSS" | tail -14
ENGINE_LINES=2 run_config default 4 --batch-workers 3
