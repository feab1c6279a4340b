#!/usr/bin/env bash
# GPU machine, call K: where the engine process spends its time under unary load (py-spy, all
# threads and GIL holders), and how long the stream client takes to start.
source .ci/gpu-setup.sh
nvidia-smi --query-gpu=name --format=csv,noheader
start_server k 4 --engine-process on --batch-workers 3
EPID=$(grep -oE '"engine_pid": [0-9]+' "$OUT/server-k.log" | head -1 | grep -oE '[0-9]+')
echo "engine pid $EPID"
bench --concurrency 256 --duration 20 --warmup 2 > "$OUT/unary.log" &
B=$!
sleep 6
$SPY record -p "$EPID" -d 6 -r 250 --format raw -o "$OUT/engine-all.txt" --nonblocking > /dev/null 2>&1
$SPY record -p "$EPID" -d 6 -r 250 --format raw -o "$OUT/engine-gil.txt" --gil --nonblocking > /dev/null 2>&1
wait $B; cat "$OUT/unary.log"
echo "stream start $(date +%s.%N)"
bench --stream --window 8 --concurrency 128 --duration 6 --warmup 2
echo "stream end $(date +%s.%N)"
kill -TERM $S; wait $S; echo "exit $?"
