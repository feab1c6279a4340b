#!/usr/bin/env bash
# GPU machine, call K: where the engine process spends its time under unary load (py-spy, all
# threads and GIL holders), and how long the stream client takes to start.
source .ci/gpu-setup.sh
IMG="$FACEDET_SHARED/images/zidane.jpg"
FD="python3 -m facedet_server.cli"
QUIET='^W1|pow_by_natural|Warn'
SPY=$(command -v py-spy || echo /tmp/site/bin/py-spy)
nvidia-smi --query-gpu=name --format=csv,noheader
$FD serve --model "$FACEDET_MODEL" --listen 127.0.0.1:50060 --processes 4 --backend torch --max-batch 64 \
  --max-queue 4096 --stream-window 32 --summary-interval 4 --engine-process on --batch-workers 3 > "$OUT/server.log" 2>&1 &
S=$!
for i in $(seq 1 400); do [ "$(grep -cE '"event": *"serving"' "$OUT/server.log")" -ge 4 ] && break; sleep 1; done
echo "serving after ~$i s"
EPID=$(grep -oE '"engine_pid": [0-9]+' "$OUT/server.log" | head -1 | grep -oE '[0-9]+')
echo "engine pid $EPID"
timeout 60 $FD bench --server 127.0.0.1:50060 --image "$IMG" --concurrency 256 --duration 20 --warmup 2 > "$OUT/unary.log" 2>&1 &
B=$!
sleep 6
$SPY record -p $EPID -d 6 -r 250 --format raw -o "$OUT/engine-all.txt" --nonblocking > /dev/null 2>&1
$SPY record -p $EPID -d 6 -r 250 --format raw -o "$OUT/engine-gil.txt" --gil --nonblocking > /dev/null 2>&1
FE=$(pgrep -f "role frontend" | head -1)
$SPY record -p $FE -d 4 -r 250 --format raw -o "$OUT/frontend-gil.txt" --gil --nonblocking > /dev/null 2>&1
wait $B; grep -vE "$QUIET" "$OUT/unary.log" | grep -E "img/s|latency|server ms"
top -b -n 1 -w 200 | head -30 > "$OUT/top.txt"
echo "stream start $(date +%s.%N)"
timeout 90 $FD bench --server 127.0.0.1:50060 --image "$IMG" --stream --window 8 --concurrency 128 --duration 6 --warmup 2 > "$OUT/stream.log" 2>&1
echo "stream end $(date +%s.%N) rc $?"
grep -vE "$QUIET" "$OUT/stream.log" | tail -12
kill -TERM $S; wait $S; echo "exit $?"
