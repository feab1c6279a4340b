#!/usr/bin/env bash
# GPU machine, call G: tests/gpu with the compiled model, the in-process service, and six
# front-end processes through gRPC.
source .ci/gpu-setup.sh
IMG="$FACEDET_SHARED/images/zidane.jpg"
FD="python3 -m facedet.cli"
QUIET='^W1|pow_by_natural|Warn'
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
wait_ready() {  # log file, processes: every process logs "serving" once it has warmed up
  for i in $(seq 1 240); do
    [ "$(grep -cE '"event": *"serving"' "$1")" -ge "$2" ] && { echo "all $2 serving after ~$i s"; return 0; }
    sleep 1
  done; echo "not ready"; return 1
}
timeout 330 python3 -m pytest -q -x -rs -s tests/gpu/test_torch_backend.py 2>&1 | grep -vE "$QUIET" | tail -15 | tee "$OUT/tests.log"
timeout 120 $FD bench --in-process --model "$FACEDET_MODEL" --image "$IMG" --concurrency 256 --duration 6 --warmup 2 \
  --set backend=torch --set max_batch=64 --set batch_workers=3 --set max_queue=4096 2>&1 | grep -vE "$QUIET" | tail -8 | tee "$OUT/inproc.log"
SERVE=(--backend torch --max-batch 64 --batch-workers 2 --max-queue 4096 --stream-window 32 --log-level info --summary-interval 0)
$FD serve --model "$FACEDET_MODEL" --listen 127.0.0.1:50056 --processes 6 "${SERVE[@]}" > "$OUT/server6.log" 2>&1 &
S=$!
wait_ready "$OUT/server6.log" 6
timeout 40 $FD bench --server 127.0.0.1:50056 --image "$IMG" --concurrency 256 --duration 6 --warmup 2 2>&1 | grep -vE "$QUIET" | tee "$OUT/grpc6.log"
timeout 40 $FD bench --server 127.0.0.1:50056 --image "$IMG" --rate 2000 --concurrency 512 --duration 8 --warmup 2 2>&1 | grep -vE "$QUIET" | tee -a "$OUT/grpc6.log"
kill -TERM $S; wait $S
