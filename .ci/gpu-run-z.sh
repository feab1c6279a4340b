#!/usr/bin/env bash
# GPU machine, call Z (fifth pass): run Y found the GPU 60% busy under three threads of whole
# batches, with torchvision's one nvJPEG decoder (JPEG engines, a lock held until the decode is
# done) the serial step. Staged: one thread decodes every batch and three finish them
# (letterbox, model, NMS). In process (bench_busy, both layouts), then through gRPC: the default
# engine configuration, whose engine now decodes on its own thread, against the same with
# --engine-decode-thread off. Everything also goes to $OUT/run.log.
# Ran at commit 73b90c9: the staged mode and --engine-decode-thread were taken out after run AA.
exec > >(tee "$OUT/run.log") 2>&1
source .ci/gpu-setup.sh
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
echo "=== bench_busy, batch 64, 3 threads: whole batches per thread, then staged"
timeout 240 python3 -m facedet_bench.gpu_busy --model "$FACEDET_MODEL" --image "$IMG" --threads 3 \
  --seconds 2.5 --batches 64 --modes threads,staged,threads --json "$OUT/busy.json" 2>&1 | grep -vE "$QUIET"
ENGINE_LINES=2 run_config decode-thread 4 --batch-workers 3
ENGINE_LINES=2 run_config no-decode-thread 4 --batch-workers 3 --engine-decode-thread off
