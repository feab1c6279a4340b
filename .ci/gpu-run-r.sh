#!/usr/bin/env bash
# GPU machine, call R: the engine process with each GPU JPEG decoder, through gRPC (open loop,
# unary, streams), same flags otherwise (fourth pass of issue 6).
source .ci/gpu-setup.sh
nvidia-smi --query-gpu=name --format=csv,noheader
run_config() {  # name, processes, extra serve flags...
  start_server "$@" && bench_all
  grep -E '"engine_summary"' "$OUT/server-$1.log" | grep -vE '"images": 0' | tail -2 | cut -c1-200
  grep -E '"gpu_pipeline"' "$OUT/server-$1.log" | head -1 | cut -c1-200
  kill -TERM $S; wait $S; echo "exit $?"
}
for c in ${CONFIGS:-nv_t3w6 tv_t3w6}; do
  case $c in
    nv_t3w6) run_config $c 4 --engine-process on --engine-threads 3 --batch-workers 6 --gpu-decode nvimgcodec ;;
    tv_t3w6) run_config $c 4 --engine-process on --engine-threads 3 --batch-workers 6 --gpu-decode torchvision ;;
    nv_t4w6) run_config $c 4 --engine-process on --engine-threads 4 --batch-workers 6 --gpu-decode nvimgcodec ;;
    nv_t3w6p6) run_config $c 6 --engine-process on --engine-threads 3 --batch-workers 6 --gpu-decode nvimgcodec ;;
    nv_off) run_config $c 4 --engine-process off --batch-workers 2 --gpu-decode nvimgcodec ;;
  esac 2>&1 | tee -a "$OUT/r.log"
done
