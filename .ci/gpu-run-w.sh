#!/usr/bin/env bash
# GPU machine, call W: the final tree of the fourth pass through gRPC in the two other
# configurations that did best before: six front ends with three engine threads (unary), four
# whole pipelines without an engine (streams).
source .ci/gpu-setup.sh
nvidia-smi --query-gpu=name --format=csv,noheader
ENGINE_LINES=1
run_config p6t3w6 6 --engine-process on --engine-threads 3 --batch-workers 6 2>&1 | tee -a "$OUT/w.log"
run_config off 4 --engine-process off --batch-workers 2 2>&1 | tee -a "$OUT/w.log"
