#!/usr/bin/env bash
# GPU machine, call J: one engine process fed by N gRPC front ends (--engine-process on) against
# N whole pipelines (off), same machine, same client commands.
source .ci/gpu-setup.sh
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
ENGINE_LINES=4
for c in ${CONFIGS:-e4 e8 p4}; do
  case $c in
    e4) run_config e4 4 --engine-process on --batch-workers 3 ;;
    e8) run_config e8 8 --engine-process on --batch-workers 3 ;;
    p4) run_config p4 4 --engine-process off --batch-workers 2 ;;
  esac 2>&1 | tee -a "$OUT/j.log"
done
