#!/usr/bin/env bash
# GPU machine, call AE (sixth pass), on the machine run AD left warm (its default row is the
# baseline): four whole pipelines (--engine-process off), which met the streaming goal once in
# the second pass (run F, 7,006 img/s) but never on the same machine as the engine; then the
# engine merging front ends' batches up to 128 images (--engine-max-batch 128, never measured).
# Ran at commit 19f8b39 (no code changes since run AC).
exec > >(tee "$OUT/run.log") 2>&1
source .ci/gpu-setup.sh
ENGINE_LINES=0 run_config pipelines 4 --batch-workers 3 --engine-process off
ENGINE_LINES=2 run_config engine128 4 --batch-workers 3 --engine-max-batch 128
nvidia-smi --query-gpu=memory.used --format=csv,noheader
