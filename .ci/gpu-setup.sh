#!/usr/bin/env bash
# Source this on the GPU machine (device tool): installs the carried cp312 wheels that its image
# lacks into /tmp/site and points the tests at the carried copy of ../shared.
set -e
PY=${PY:-python3}
$PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
if ls .trtwhl/*.whl >/dev/null 2>&1; then
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .trtwhl/*.whl
fi
export PYTHONPATH=/tmp/site:$PWD/clients/python:$PWD/server:$PWD/converter:$PWD/trt_runtime
export FACEDET_SHARED=$PWD/.devcarry/shared
export FACEDET_MODEL=$FACEDET_SHARED/models/yolov5n-0.5.onnx
export PYTHONUNBUFFERED=1
set +e
