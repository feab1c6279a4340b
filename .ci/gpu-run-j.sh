#!/usr/bin/env bash
# GPU machine, call J: one engine process fed by N gRPC front ends (--engine-process on) against
# N whole pipelines (off), same machine, same client commands.
source .ci/gpu-setup.sh
IMG="$FACEDET_SHARED/images/zidane.jpg"
FD="python3 -m facedet_server.cli"
QUIET='^W1|pow_by_natural|Warn'
CONFIGS=${CONFIGS:-"e4 e8 p4"}
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
wait_ready() {
  for i in $(seq 1 400); do
    [ "$(grep -cE '"event": *"serving"' "$1")" -ge "$2" ] && { echo "all $2 serving after ~$i s"; return 0; }
    sleep 1
  done; echo "not ready"; tail -5 "$1"; return 1
}
benches() {
  timeout 30 $FD bench --server 127.0.0.1:50060 --image "$IMG" --rate 2000 --concurrency 512 --duration 8 --warmup 2 2>&1 | grep -vE "$QUIET" | grep -E "img/s|latency|server ms"
  timeout 30 $FD bench --server 127.0.0.1:50060 --image "$IMG" --concurrency 256 --duration 6 --warmup 2 2>&1 | grep -vE "$QUIET" | grep -E "img/s|latency|server ms"
  timeout 30 $FD bench --server 127.0.0.1:50060 --image "$IMG" --stream --window 8 --concurrency 128 --duration 6 --warmup 2 2>&1 | grep -vE "$QUIET" | grep -E "img/s|latency|server ms"
}
run_config() {  # name, processes, extra serve flags...
  local name=$1 n=$2; shift 2
  echo "=== $name: --processes $n $*"
  $FD serve --model "$FACEDET_MODEL" --listen 127.0.0.1:50060 --processes "$n" --backend torch --max-batch 64 \
    --max-queue 4096 --stream-window 32 --log-level info --summary-interval 4 "$@" > "$OUT/server-$name.log" 2>&1 &
  local S=$!
  wait_ready "$OUT/server-$name.log" "$n" && benches
  grep -E '"engine_summary"' "$OUT/server-$name.log" | grep -vE '"images": 0' | tail -4 | cut -c1-200
  kill -TERM $S; wait $S; echo "exit $?"
}
for c in $CONFIGS; do
  case $c in
    e4) run_config e4 4 --engine-process on --batch-workers 3 ;;
    e8) run_config e8 8 --engine-process on --batch-workers 3 ;;
    e6w2) run_config e6w2 6 --engine-process on --batch-workers 2 ;;
    p4) run_config p4 4 --engine-process off --batch-workers 2 ;;
  esac 2>&1 | tee -a "$OUT/j.log"
done
