#!/usr/bin/env bash
# GPU machine, call M: tests/gpu after the engine-process change (the 20,000-request memory test
# left out: unchanged code path, minutes of compile), and GPU memory of one engine + 4 front ends
# against 4 whole pipelines after the same load.
source .ci/gpu-setup.sh
IMG="$FACEDET_SHARED/images/zidane.jpg"
FD="python3 -m facedet.cli"
QUIET='^W1|pow_by_natural|Warn'
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
timeout 420 python3 -m pytest -q -rs -p no:cacheprovider tests/gpu -k "not memory_growth" > "$OUT/tests.log" 2>&1
grep -vE "$QUIET" "$OUT/tests.log" | grep -E "passed|failed|Error|assert|SKIP" | tail -15
gpu_memory() {  # name, processes, extra flags...
  local name=$1 n=$2; shift 2
  $FD serve --model "$FACEDET_MODEL" --listen 127.0.0.1:50060 --processes "$n" --backend torch --max-batch 64 \
    --max-queue 4096 --compile off --batch-workers 2 "$@" > "$OUT/server-$name.log" 2>&1 &
  local S=$!
  for i in $(seq 1 300); do [ "$(grep -cE '"event": *"serving"' "$OUT/server-$name.log")" -ge "$n" ] && break; sleep 1; done
  timeout 60 $FD bench --server 127.0.0.1:50060 --image "$IMG" --concurrency 256 --duration 4 --warmup 1 2>&1 | grep -vE "$QUIET" | grep -E "img/s"
  echo "$name: GPU MiB per process: $(nvidia-smi --query-compute-apps=used_memory --format=csv,noheader,nounits | paste -sd+ -) = $(nvidia-smi --query-compute-apps=used_memory --format=csv,noheader,nounits | paste -sd+ - | bc); card used $(nvidia-smi --query-gpu=memory.used --format=csv,noheader)"
  kill -TERM $S; wait $S
}
gpu_memory engine4 4 --engine-process on
gpu_memory whole4 4 --engine-process off
