#!/usr/bin/env bash
# GPU machine, call F: the compiled model (inductor under our CUDA graphs), the stage breakdown
# and threads, the in-process service, and gRPC with several front-end processes.
source .ci/gpu-setup.sh
IMG="$FACEDET_SHARED/images/zidane.jpg"
FD="python3 -m facedet.cli"
export TORCHINDUCTOR_CACHE_DIR=/tmp/inductor FACEDET_HOME=/tmp/fdhome
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
wait_ready() {  # log file, processes: every process logs "serving" once it has warmed up
  for i in $(seq 1 240); do
    [ "$(grep -cE '"event": *"serving"' "$1")" -ge "$2" ] && { echo "all $2 serving after ~$i s"; return 0; }
    sleep 1
  done; echo "not ready"; tail -5 "$1"; return 1
}
timeout 150 python3 -m facedet_bench.gpu_model --model "$FACEDET_MODEL" --modes graph --compile-mode default --batches 2,32,64,128 --shapes 640x384,640x640 --json "$OUT/model-inductor.json" 2>&1 | grep -E "img/s|device|Error|error|warm-up" | tee "$OUT/model.log"
timeout 150 python3 -m facedet_bench.gpu_stages --model "$FACEDET_MODEL" --image "$IMG" --batch 64 --compile-mode default --json "$OUT/stages.json" 2>&1 | grep -E "ms|img/s|device|Error" | tee "$OUT/stages.log"
for W in 3; do
timeout 120 $FD bench --in-process --model "$FACEDET_MODEL" --image "$IMG" --concurrency 256 --duration 6 --warmup 2 \
  --set backend=torch --set max_batch=64 --set batch_workers=$W --set max_queue=4096 2>&1 | grep -v Warn | tail -8 | tee -a "$OUT/inproc.log"
done
SERVE=(--backend torch --max-batch 64 --batch-workers 2 --max-queue 4096 --stream-window 32 --log-level info --summary-interval 0)
$FD serve --model "$FACEDET_MODEL" --listen 127.0.0.1:50054 --processes 4 "${SERVE[@]}" > "$OUT/server4.log" 2>&1 &
S=$!
wait_ready "$OUT/server4.log" 4
timeout 40 $FD bench --server 127.0.0.1:50054 --image "$IMG" --concurrency 256 --duration 6 --warmup 2 2>&1 | grep -v Warn | tee "$OUT/grpc4.log"
timeout 40 $FD bench --server 127.0.0.1:50054 --image "$IMG" --stream --window 8 --concurrency 128 --duration 6 --warmup 2 2>&1 | grep -v Warn | tee -a "$OUT/grpc4.log"
timeout 40 $FD bench --server 127.0.0.1:50054 --image "$IMG" --rate 2000 --concurrency 512 --duration 8 --warmup 2 2>&1 | grep -v Warn | tee -a "$OUT/grpc4.log"
kill -TERM $S; wait $S
grep -E "warn|error|Error" "$OUT/server4.log" | head -5
$FD serve --model "$FACEDET_MODEL" --listen 127.0.0.1:50056 --processes 6 "${SERVE[@]}" > "$OUT/server6.log" 2>&1 &
S=$!
wait_ready "$OUT/server6.log" 6
timeout 40 $FD bench --server 127.0.0.1:50056 --image "$IMG" --concurrency 256 --duration 6 --warmup 2 2>&1 | grep -v Warn | tee "$OUT/grpc6.log"
timeout 40 $FD bench --server 127.0.0.1:50056 --image "$IMG" --rate 2000 --concurrency 512 --duration 8 --warmup 2 2>&1 | grep -v Warn | tee -a "$OUT/grpc6.log"
kill -TERM $S; wait $S
