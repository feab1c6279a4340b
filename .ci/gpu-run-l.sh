#!/usr/bin/env bash
# GPU machine, call L: the engine after run K's profile (receive buffers without zero-fill),
# with 3 and 4 engine threads, against whole pipelines per process; front-end GIL profile.
source .ci/gpu-setup.sh
IMG="$FACEDET_SHARED/images/zidane.jpg"
FD="python3 -m facedet_server.cli"
QUIET='^W1|pow_by_natural|Warn'
SPY=$(command -v py-spy || echo /tmp/site/bin/py-spy)
nvidia-smi --query-gpu=name --format=csv,noheader
run_config() {  # name, processes, extra serve flags...
  local name=$1 n=$2; shift 2
  echo "=== $name: --processes $n $*"
  $FD serve --model "$FACEDET_MODEL" --listen 127.0.0.1:50060 --processes "$n" --backend torch --max-batch 64 \
    --max-queue 4096 --stream-window 32 --summary-interval 4 "$@" > "$OUT/server-$name.log" 2>&1 &
  local S=$!
  for i in $(seq 1 400); do [ "$(grep -cE '"event": *"serving"' "$OUT/server-$name.log")" -ge "$n" ] && break; sleep 1; done
  echo "serving after ~$i s"
  timeout 60 $FD bench --server 127.0.0.1:50060 --image "$IMG" --rate 2000 --concurrency 512 --duration 8 --warmup 2 2>&1 | grep -vE "$QUIET" | grep -E "img/s|latency|server ms"
  timeout 60 $FD bench --server 127.0.0.1:50060 --image "$IMG" --concurrency 256 --duration 8 --warmup 2 > "$OUT/unary-$name.log" 2>&1 &
  local B=$!
  if [ "$name" = e4 ]; then
    sleep 20  # the client starts its processes first
    FE=$(grep -oE '"engine_connected".*' "$OUT/server-$name.log" | grep -oE '"pid": [0-9]+' | head -1 | grep -oE '[0-9]+')
    $SPY record -p "$FE" -d 4 -r 250 --format raw -o "$OUT/frontend-gil.txt" --gil --nonblocking > "$OUT/spy.log" 2>&1
  fi
  wait $B; grep -vE "$QUIET" "$OUT/unary-$name.log" | grep -E "img/s|latency|server ms"
  timeout 60 $FD bench --server 127.0.0.1:50060 --image "$IMG" --stream --window 8 --concurrency 128 --duration 6 --warmup 2 2>&1 | grep -vE "$QUIET" | grep -E "img/s|latency|server ms"
  kill -TERM $S; wait $S; echo "exit $?"
}
for c in ${CONFIGS:-e4 e4w4 p4}; do
  case $c in
    e4) run_config e4 4 --engine-process on --batch-workers 3 ;;
    e4w4) run_config e4w4 4 --engine-process on --batch-workers 4 ;;
    p4) run_config p4 4 --engine-process off --batch-workers 2 ;;
  esac 2>&1 | tee -a "$OUT/l.log"
done
