#!/usr/bin/env bash
# GPU machine, call L: the engine after run K's profile (receive buffers without zero-fill),
# with 3 and 4 engine threads, against whole pipelines per process.
source .ci/gpu-setup.sh
nvidia-smi --query-gpu=name --format=csv,noheader
for c in ${CONFIGS:-e4 e4w4 p4}; do
  case $c in
    e4) run_config e4 4 --engine-process on --batch-workers 3 ;;
    e4w4) run_config e4w4 4 --engine-process on --batch-workers 4 ;;
    p4) run_config p4 4 --engine-process off --batch-workers 2 ;;
  esac 2>&1 | tee -a "$OUT/l.log"
done
