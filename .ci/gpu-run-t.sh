#!/usr/bin/env bash
# GPU machine, call T: tests/gpu on the final tree of the fourth pass, but the two memory tests
# (call U runs those).
source .ci/gpu-setup.sh
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
timeout 580 python3 -m pytest -q -rs -s -p no:cacheprovider tests/gpu -k "not memory_growth" > "$OUT/tests.log" 2>&1
grep -vE "$QUIET" "$OUT/tests.log" | grep -E "passed|failed|Error|assert|SKIP" | tail -15
