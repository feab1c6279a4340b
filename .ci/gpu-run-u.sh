#!/usr/bin/env bash
# GPU machine, call U: the two memory tests (torch backend in process, engine behind two front
# ends), both keeping their connections across the warm-up and measured phases.
source .ci/gpu-setup.sh
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
timeout 580 python3 -m pytest -q -rs -s -p no:cacheprovider tests/gpu -k "memory_growth" > "$OUT/tests.log" 2>&1
grep -vE "$QUIET" "$OUT/tests.log" | grep -E "passed|failed|Error|assert|SKIP|RSS|GPU" | tail -20
