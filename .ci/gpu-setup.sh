#!/usr/bin/env bash
# Source this on the GPU machine (device tool): installs the carried cp312 wheels that its image
# lacks into /tmp/site (.whl; .trtwhl: the lean TensorRT runtime; .nvwhl: nvImageCodec and
# nvJPEG) and points the tests at the carried copy of ../shared.
set -e
PY=${PY:-python3}
$PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
if ls .trtwhl/*.whl >/dev/null 2>&1; then
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .trtwhl/*.whl
fi
if ls .nvwhl/*.whl >/dev/null 2>&1; then  # nvJPEG (and nvImageCodec in run Q)
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .nvwhl/*.whl
fi
export PYTHONPATH=/tmp/site:$PWD/clients/python:$PWD/server:$PWD/converter:$PWD/trt_runtime:$PWD/tools:$PWD/tests
export FACEDET_SHARED=$PWD/.devcarry/shared
export FACEDET_MODEL=$FACEDET_SHARED/models/yolov5n-0.5.onnx
export PYTHONUNBUFFERED=1
set +e

# Shared by the benchmark scripts (gpu-run-j.sh on).
IMG="$FACEDET_SHARED/images/zidane.jpg"
FD="python3 -m facedet.cli"
QUIET='^W1|pow_by_natural|Warn'  # torch compile chatter
SPY=$(command -v py-spy || echo /tmp/site/bin/py-spy)

start_server() {  # name, processes, extra serve flags... ; sets S (the pid), logs to $OUT/server-NAME.log
  local name=$1 n=$2; shift 2
  echo "=== $name: --processes $n $*"
  $FD serve --model "$FACEDET_MODEL" --listen 127.0.0.1:50060 --processes "$n" --backend torch --max-batch 64 \
    --max-queue 4096 --stream-window 32 --summary-interval 4 "$@" > "$OUT/server-$name.log" 2>&1 &
  S=$!
  local i
  for i in $(seq 1 400); do
    [ "$(grep -cE '"event": *"serving"' "$OUT/server-$name.log")" -ge "$n" ] && { echo "serving after ~$i s"; return 0; }
    sleep 1
  done
  echo "not serving after 400 s"; tail -5 "$OUT/server-$name.log"; return 1
}

bench() {  # facedet bench flags...: one client run against the server on port 50060, summary lines
  timeout 60 $FD bench --server "${SERVER:-127.0.0.1:50060}" --image "$IMG" "$@" 2>&1 | grep -vE "$QUIET" | grep -E "img/s|latency|server ms|CPU"
}

bench_all() {  # open loop at 2,000 img/s, unary c=256, 128 streams x 8 frames
  bench --rate 2000 --concurrency 512 --duration 8 --warmup 2
  bench --concurrency 256 --duration 8 --warmup 2
  bench --stream --window 8 --concurrency 128 --processes 8 --duration 6 --warmup 2
}

run_config() {  # name, processes, extra serve flags...: serve, bench_all, the engine's last
  # summaries (ENGINE_LINES of them, default 3), stop
  start_server "$@" && bench_all
  grep -E '"engine_summary"' "$OUT/server-$1.log" | grep -vE '"images": 0' | tail -"${ENGINE_LINES:-3}" | cut -c1-200
  kill -TERM $S; wait $S; echo "exit $?"
}
