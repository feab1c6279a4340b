#!/usr/bin/env bash
# GPU machine, call O: engine threads apart from the front ends' batches in flight
# (--engine-threads), for the unary and streaming goals.
source .ci/gpu-setup.sh
IMG="$FACEDET_SHARED/images/zidane.jpg"
FD="python3 -m facedet_server.cli"
QUIET='^W1|pow_by_natural|Warn'
nvidia-smi --query-gpu=name --format=csv,noheader
run_config() {  # name, processes, extra serve flags...
  local name=$1 n=$2; shift 2
  echo "=== $name: --processes $n $*"
  $FD serve --model "$FACEDET_MODEL" --listen 127.0.0.1:50060 --processes "$n" --backend torch --max-batch 64 \
    --max-queue 4096 --stream-window 32 --summary-interval 4 "$@" > "$OUT/server-$name.log" 2>&1 &
  local S=$!
  for i in $(seq 1 400); do [ "$(grep -cE '"event": *"serving"' "$OUT/server-$name.log")" -ge "$n" ] && break; sleep 1; done
  echo "serving after ~$i s"
  timeout 60 $FD bench --server 127.0.0.1:50060 --image "$IMG" --rate 2000 --concurrency 512 --duration 6 --warmup 2 2>&1 | grep -vE "$QUIET" | grep -E "img/s|latency|server ms"
  timeout 60 $FD bench --server 127.0.0.1:50060 --image "$IMG" --concurrency 256 --duration 6 --warmup 2 2>&1 | grep -vE "$QUIET" | grep -E "img/s|latency|server ms|CPU"
  timeout 60 $FD bench --server 127.0.0.1:50060 --image "$IMG" --stream --window 8 --concurrency 128 --processes 8 --duration 6 --warmup 2 2>&1 | grep -vE "$QUIET" | grep -E "img/s|latency|server ms|CPU"
  grep -E '"engine_summary"' "$OUT/server-$name.log" | grep -vE '"images": 0' | tail -3 | cut -c1-170
  kill -TERM $S; wait $S; echo "exit $?"
}
for c in ${CONFIGS:-t3w6 t2w6 t3w6p6}; do
  case $c in
    t3w6) run_config t3w6 4 --engine-process on --engine-threads 3 --batch-workers 6 ;;
    t2w6) run_config t2w6 4 --engine-process on --engine-threads 2 --batch-workers 6 ;;
    t3w6p6) run_config t3w6p6 6 --engine-process on --engine-threads 3 --batch-workers 6 ;;
  esac 2>&1 | tee -a "$OUT/o.log"
done
