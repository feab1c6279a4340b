#!/usr/bin/env bash
# GPU machine, call AG (sixth pass): run AF again on a fresh machine start (same-flag figures
# differed by up to 13% between starts), clients spread over the front ends by round_robin only;
# then two engines the same way. Ran at commit 92f98dd.
exec > >(tee "$OUT/run.log") 2>&1
source .ci/gpu-setup.sh
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
export SERVER=ipv4:127.0.0.1:50070,127.0.0.1:50071,127.0.0.1:50072,127.0.0.1:50073
ENGINE_LINES=2 run_config auto 4 --max-batch 0 --max-queue 0 --front-end-listen 127.0.0.1:50070
ENGINE_LINES=4 run_config engines2 4 --max-batch 0 --max-queue 0 --front-end-listen 127.0.0.1:50070 --engines 2
