#!/usr/bin/env bash
# GPU machine, call C: through gRPC against a running torch-CUDA server (unary, streams, two
# front-end processes), in-process service, pipeline and torch.compile model figures.
source .ci/gpu-setup.sh
IMG="$FACEDET_SHARED/images/zidane.jpg"
FD="python3 -m facedet.cli"
SERVE=(--backend torch --max-batch 64 --batch-workers 2 --max-queue 4096 --stream-window 32 --log-level warning --summary-interval 0)
wait_serving() { python3 - "$1" <<'PY'
import sys, time, grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
deadline = time.time() + 150
while time.time() < deadline:
    try:
        with grpc.insecure_channel(sys.argv[1]) as ch:
            if health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=1).status == 1:
                print("serving after", round(150 - (deadline - time.time()), 1), "s"); sys.exit(0)
    except grpc.RpcError:
        pass
    time.sleep(0.5)
sys.exit("server did not become SERVING")
PY
}
$FD serve --model "$FACEDET_MODEL" --listen 127.0.0.1:50051 "${SERVE[@]}" > "$OUT/server1.log" 2>&1 &
S1=$!
wait_serving 127.0.0.1:50051
timeout 60 $FD bench --server 127.0.0.1:50051 --image "$IMG" --concurrency 64,256 --duration 5 --warmup 2 2>&1 | grep -v Warn | tee "$OUT/grpc-unary.log"
timeout 60 $FD bench --server 127.0.0.1:50051 --image "$IMG" --stream --window 8 --concurrency 32,128 --duration 5 --warmup 2 2>&1 | grep -v Warn | tee "$OUT/grpc-stream.log"
kill -TERM $S1; wait $S1
$FD serve --model "$FACEDET_MODEL" --listen 127.0.0.1:50052 --processes 2 "${SERVE[@]}" > "$OUT/server2.log" 2>&1 &
S2=$!
wait_serving 127.0.0.1:50052
timeout 60 $FD bench --server 127.0.0.1:50052 --image "$IMG" --concurrency 256 --duration 5 --warmup 2 2>&1 | grep -v Warn | tee "$OUT/grpc-unary-2proc.log"
timeout 60 $FD bench --server 127.0.0.1:50052 --image "$IMG" --stream --window 8 --concurrency 128 --duration 5 --warmup 2 2>&1 | grep -v Warn | tee "$OUT/grpc-stream-2proc.log"
kill -TERM $S2; wait $S2
timeout 100 $FD bench --in-process --model "$FACEDET_MODEL" --image "$IMG" --concurrency 64,256 --duration 5 --warmup 2 \
  --set backend=torch --set max_batch=64 --set batch_workers=2 --set max_queue=4096 2>&1 | grep -v Warn | tee "$OUT/inproc.log"
timeout 90 python3 -m facedet_bench.gpu_pipeline --model "$FACEDET_MODEL" --image "$IMG" --batches 32,64 --duration 4 2>&1 | grep -E "^batch|device|Error" | tee "$OUT/pipeline.log"
timeout 100 python3 -m facedet_bench.gpu_model --model "$FACEDET_MODEL" --modes compile --batches 32,128 --shapes 640x384 2>&1 | grep -E "img/s|device" | tee "$OUT/compile.log"
tail -5 "$OUT/server1.log" "$OUT/server2.log"
