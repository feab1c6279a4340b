#!/usr/bin/env bash
# GPU machine, call I: front-end process count and batcher settings for the gRPC goals
# (unary and stream throughput, p99 at 2,000 img/s offered), compiled model.
source .ci/gpu-setup.sh
IMG="$FACEDET_SHARED/images/zidane.jpg"
FD="python3 -m facedet.cli"
QUIET='^W1|pow_by_natural|Warn'
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
wait_ready() {
  for i in $(seq 1 240); do
    [ "$(grep -cE '"event": *"serving"' "$1")" -ge "$2" ] && { echo "all $2 serving after ~$i s"; return 0; }
    sleep 1
  done; echo "not ready"; return 1
}
run_config() {  # name, processes, extra serve flags...
  local name=$1 n=$2; shift 2
  echo "=== $name"
  $FD serve --model "$FACEDET_MODEL" --listen 127.0.0.1:50060 --processes "$n" --backend torch --max-batch 64 \
    --max-queue 4096 --stream-window 32 --log-level info --summary-interval 0 "$@" > "$OUT/server-$name.log" 2>&1 &
  local S=$!
  wait_ready "$OUT/server-$name.log" "$n"
  timeout 30 $FD bench --server 127.0.0.1:50060 --image "$IMG" --rate 2000 --concurrency 512 --duration 8 --warmup 2 2>&1 | grep -vE "$QUIET" | grep -E "img/s|latency|server ms"
  timeout 30 $FD bench --server 127.0.0.1:50060 --image "$IMG" --concurrency 256 --duration 5 --warmup 2 2>&1 | grep -vE "$QUIET" | grep -E "img/s|latency|server ms"
  timeout 30 $FD bench --server 127.0.0.1:50060 --image "$IMG" --stream --window 8 --concurrency 128 --duration 5 --warmup 2 2>&1 | grep -vE "$QUIET" | grep -E "img/s|latency|server ms"
  kill -TERM $S; wait $S
}
run_config p4-w3-d1 4 --batch-workers 3 --max-delay-ms 1 2>&1 | tee "$OUT/p4.log"
run_config p2-w2 2 --batch-workers 2 2>&1 | tee "$OUT/p2.log"
