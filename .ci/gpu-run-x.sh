#!/usr/bin/env bash
# GPU machine, call X: all of tests/gpu on the final tree of the fourth pass.
source .ci/gpu-setup.sh
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
timeout 585 python3 -m pytest -q -rs -s -p no:cacheprovider tests/gpu > "$OUT/tests.log" 2>&1
grep -vE "$QUIET" "$OUT/tests.log" | grep -E "passed|failed|Error|assert|SKIP|RSS" | tail -15
