#!/usr/bin/env bash
# GPU machine, call AD (sixth pass): run AC's two engines lost their same-machine baseline when
# the device time ran out. Here both on one machine start: the default (one engine), then
# --engines 2, same flags otherwise. Ran at commit 19f8b39 (no code changes since run AC).
exec > >(tee "$OUT/run.log") 2>&1
source .ci/gpu-setup.sh
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
ENGINE_LINES=2 run_config default 4 --batch-workers 3
ENGINE_LINES=4 run_config engines2 4 --batch-workers 3 --engines 2
nvidia-smi --query-gpu=memory.used --format=csv,noheader
