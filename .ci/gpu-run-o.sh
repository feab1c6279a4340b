#!/usr/bin/env bash
# GPU machine, call O: engine threads apart from the front ends' batches in flight
# (--engine-threads), for the unary and streaming goals.
source .ci/gpu-setup.sh
nvidia-smi --query-gpu=name --format=csv,noheader
for c in ${CONFIGS:-t3w6 t2w6 t3w6p6}; do
  case $c in
    t3w6) run_config t3w6 4 --engine-process on --engine-threads 3 --batch-workers 6 ;;
    t2w6) run_config t2w6 4 --engine-process on --engine-threads 2 --batch-workers 6 ;;
    t3w6p6) run_config t3w6p6 6 --engine-process on --engine-threads 3 --batch-workers 6 ;;
  esac 2>&1 | tee -a "$OUT/o.log"
done
