#!/usr/bin/env bash
# GPU machine, call AA (fifth pass): in run Z the engine's decode thread lifted unary by 10% but
# added 6.6 ms of "inference" at 2,000 img/s offered (p99 38.9 ms against 24.8 without it): a
# batch handed between threads can wait up to Python's 5 ms switch interval for the interpreter
# lock. The three configurations through gRPC, on one machine: decode thread with a 1 ms switch
# interval, no decode thread with 1 ms, and no decode thread with Python's 5 ms.
# Ran at commit cd19a7b: --engine-decode-thread was taken out after this run.
exec > >(tee "$OUT/run.log") 2>&1
source .ci/gpu-setup.sh
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
ENGINE_LINES=2 run_config thread-1ms 4 --batch-workers 3 --engine-decode-thread on --gil-switch-ms 1
ENGINE_LINES=2 run_config nothread-1ms 4 --batch-workers 3 --engine-decode-thread off --gil-switch-ms 1
ENGINE_LINES=2 run_config nothread-5ms 4 --batch-workers 3 --engine-decode-thread off --gil-switch-ms 5
