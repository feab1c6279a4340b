#!/usr/bin/env bash
# GPU machine, call P: tests/gpu on the final tree of the third pass (the torch backend's
# 20,000-request memory test left out: unchanged since run H, minutes of compile).
source .ci/gpu-setup.sh
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
timeout 560 python3 -m pytest -q -rs -s -p no:cacheprovider tests/gpu -k "not memory_growth" > "$OUT/tests.log" 2>&1
grep -vE "$QUIET" "$OUT/tests.log" | grep -E "passed|failed|Error|assert|host RSS|SKIP" | tail -15
