#!/usr/bin/env bash
# GPU machine, call AF (sixth pass). Runs AD/AE showed SO_REUSEPORT's hash of the load
# generator's 8-16 connections leaving a front end idle (run AD, unary: 0 img/s on one of four).
# One server with the automatic settings (no --max-batch/--batch-workers/--max-queue: the GPU's
# 64/3/1024) and --front-end-listen (front end i also on port 50070+i): the same three loads
# through the shared port, then spread over the four front ends by gRPC's round_robin; then the
# GPU test of the automatic settings. Ran at commit 33ff3bf.
exec > >(tee "$OUT/run.log") 2>&1
source .ci/gpu-setup.sh
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
if start_server auto 4 --max-batch 0 --max-queue 0 --front-end-listen 127.0.0.1:50070; then
  grep -E '"model_loaded"' "$OUT/server-auto.log" | head -2 | cut -c1-400
  echo "--- through the shared port 50060"
  bench_all
  echo "--- round_robin over the four front ends"
  SERVER=ipv4:127.0.0.1:50070,127.0.0.1:50071,127.0.0.1:50072,127.0.0.1:50073 bench_all
  grep -E '"engine_summary"' "$OUT/server-auto.log" | grep -vE '"images": 0' | tail -2 | cut -c1-200
  kill -TERM $S; wait $S; echo "exit $?"
fi
timeout 200 python3 -m pytest -q -rs -p no:cacheprovider tests/gpu/test_torch_backend.py -k automatic 2>&1 \
  | grep -vE "$QUIET" | tail -5
