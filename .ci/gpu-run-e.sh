#!/usr/bin/env bash
# GPU machine, call E: where a batch's time goes (stages, threads), inductor under our graphs,
# and a GIL-holding profile of the in-process service.
source .ci/gpu-setup.sh
IMG="$FACEDET_SHARED/images/zidane.jpg"
export PATH=/tmp/site/bin:$PATH
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
timeout 120 python3 -m facedet_bench.gpu_stages --model "$FACEDET_MODEL" --image "$IMG" --batch 64 --json "$OUT/stages.json" 2>&1 | grep -v Warn | tee "$OUT/stages.log"
timeout 200 python3 -m facedet_bench.gpu_model --model "$FACEDET_MODEL" --modes graph --compile-mode default --batches 1,8,32,64,128 --shapes 640x384,640x640 --json "$OUT/model-inductor.json" 2>&1 | grep -E "img/s|device|Error|error" | tee "$OUT/model-inductor.log"
timeout 150 python3 -m facedet_bench.gpu_stages --model "$FACEDET_MODEL" --image "$IMG" --batch 64 --compile-mode default --json "$OUT/stages-inductor.json" 2>&1 | grep -v Warn | tee "$OUT/stages-inductor.log"
timeout 150 py-spy record --gil -r 200 -f raw -o "$OUT/inproc-gil.txt" -- python3 -m facedet.cli bench --in-process --model "$FACEDET_MODEL" --image "$IMG" --concurrency 256 --duration 8 --warmup 2 \
  --set backend=torch --set max_batch=64 --set batch_workers=2 --set max_queue=4096 2>&1 | grep -v Warn | tail -15 | tee "$OUT/inproc.log"
timeout 100 python3 -m facedet_bench.gpu_model --model "$FACEDET_MODEL" --modes graph --compile-mode max-autotune --batches 64,128 --shapes 640x384 2>&1 | grep -E "img/s|device|Error|error" | tee "$OUT/model-autotune.log"
