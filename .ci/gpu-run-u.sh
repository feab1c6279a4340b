#!/usr/bin/env bash
# GPU machine, call U: the two memory tests (torch backend in process; engine behind two front
# ends), now reading RSS with nothing in flight after a heap trim (--memory-trim-interval 1),
# plus the tests that failed in call T on a test-side type slip (gpu_decode=True) and the
# nvJPEG decoder tests.
source .ci/gpu-setup.sh
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
timeout 585 python3 -m pytest -q -rs -s -p no:cacheprovider tests/gpu \
  -k "memory_growth or do_not_grow or nvjpeg_and_libjpeg or jpeg_decoders" > "$OUT/tests.log" 2>&1
grep -vE "$QUIET" "$OUT/tests.log" | grep -E "passed|failed|Error|assert|SKIP|RSS" | tail -20
