#!/usr/bin/env bash
# GPU machine, call AC (fifth pass): run AB found the one engine the limit when streaming (its
# three inference threads 97% busy, 0.56 ms an image against 0.40 in process). Two engines
# (--engines 2: two decoders, two interpreters, front end i on engine i mod 2), then the
# default (one engine), on one machine.
exec > >(tee "$OUT/run.log") 2>&1
source .ci/gpu-setup.sh
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
ENGINE_LINES=4 run_config engines2 4 --batch-workers 3 --engines 2
nvidia-smi --query-gpu=memory.used --format=csv,noheader
ENGINE_LINES=2 run_config default 4 --batch-workers 3
