#!/usr/bin/env bash
# GPU machine, call D: p99 at 2,000 img/s offered (open loop) against two torch-CUDA processes.
source .ci/gpu-setup.sh
IMG="$FACEDET_SHARED/images/zidane.jpg"
FD="python3 -m facedet.cli"
$FD serve --model "$FACEDET_MODEL" --listen 127.0.0.1:50052 --processes 2 --backend torch --max-batch 64 \
  --batch-workers 2 --max-queue 4096 --stream-window 32 --log-level warning --summary-interval 0 > "$OUT/server.log" 2>&1 &
S=$!
for i in $(seq 1 150); do
  $FD detect "$IMG" --server 127.0.0.1:50052 > /dev/null 2>&1 && break; sleep 1
done
echo "ready after ~$i s"
timeout 40 $FD bench --server 127.0.0.1:50052 --image "$IMG" --rate 2000 --concurrency 512 --duration 8 --warmup 2 2>&1 | grep -v Warn | tee "$OUT/rate2000.log"
timeout 40 $FD bench --server 127.0.0.1:50052 --image "$IMG" --rate 1000 --concurrency 512 --duration 8 --warmup 2 2>&1 | grep -v Warn | tee "$OUT/rate1000.log"
kill -TERM $S; wait $S
