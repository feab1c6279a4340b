#!/usr/bin/env bash
# .ci/gpu.sh: the GPU tests and benchmarks, on the device tool's GPU machine (NVIDIA H200, Python
# 3.12 with torch, torchvision, cupy, cuda-bindings, onnxruntime and opencv; no network; the
# project is not pip-installed there, it runs from PYTHONPATH). Run it from the repository root,
# with carry [.whl, .trtwhl, .devcarry] (and .before for --tree .before); $OUT is the folder
# whose files come back.
#
#   .ci/gpu.sh [--tree DIR] [--label TEXT] [--tests [PYTEST ARGS...]] [--trt]
#              [--bench NAME]... [--serve-args "FLAGS"] [--tests-timeout S]
#              [--soak S] [--cpu-reference] [--cpu-layouts] [--model-speed] [--dry-run]
#
# Setup always runs first: the carried wheels (.whl/, then .trtwhl/ and .nvwhl/ where present)
# go into /tmp/site, once per machine (a second run, at once or later, finds them there and
# waits on a lock while another installs); PYTHONPATH is /tmp/site and the tree's package roots (clients/python,
# server, converter, trt_runtime, tools, tests: those it has); FACEDET_SHARED is
# .devcarry/shared, FACEDET_MODEL its models/yolov5n-0.5.onnx, PYTHONUNBUFFERED=1.
#
#   --tree DIR        test and benchmark another checkout (e.g. .before, a copy of an older commit)
#                     instead of this one: its package roots, its tests, its `facedet` command
#                     (facedet.cli, or facedet_server.cli in trees older than the tools/ layout).
#                     Wheels and .devcarry always come from the repository root.
#   --label TEXT      printed at the start of every result line (default: the tree's name and
#                     short commit); also names what the run leaves in $OUT: <label>-run.log (all
#                     it printed) and <label>-logs.tar.gz (every log), as the device tool brings
#                     back 8 files at most (so at most four runs a command).
#   --tests [ARGS]    all of tests/gpu: python3 -m pytest -v -rs -s -p no:cacheprovider tests/gpu.
#                     The arguments after it, up to the next option of this script (or all after
#                     `--`), go to pytest; those naming a path replace tests/gpu. Log, JUnit XML.
#   --trt             trt_runtime/gpu_tests.sh: the TensorRT runtime tests, each file in its own
#                     process (so a crash inside TensorRT cannot hide the CUDA results).
#   --bench NAME      a server configuration under the standard three loads (repeatable, or
#                     NAME,NAME): open loop (--rate 2000 --concurrency 512 --duration 8 --warmup
#                     2), unary (--concurrency 256 --duration 8 --warmup 2), streams (--stream
#                     --window 8 --concurrency 128 --processes 8 --duration 6 --warmup 2).
#                     Every server: facedet serve --backend torch --stream-window 32
#                     --summary-interval 4 on 127.0.0.1:50060, batching left automatic.
#                       default    --processes 4 --front-end-listen 127.0.0.1:50070, the clients
#                                  spread by round_robin over ports 50070-50073 (the best
#                                  configuration measured; docs/benchmarks.md, sixth pass)
#                       engines2   default + --engines 2
#                       single     one process, no flags; clients on 127.0.0.1:50060
#                       pipelines  default + --engine-process off (four whole pipelines)
#                       auto       no topology flags: the automatic --processes, --front-end-listen
#                                  and --devices; clients on 127.0.0.1:50060, which find the
#                                  front ends' own addresses in GetModelInfo and round_robin over
#                                  them, as facedet.client does (issue 15: >= 90% of default)
#                       devices    auto with --devices 0, then 0,1, 0,1,2,3 and 0..7 as far as the
#                                  machine has GPUs (issue 19's scaling: one engine per GPU, four
#                                  front ends per GPU where the CPUs allow); results named
#                                  devices-N for N GPUs
#   --serve-args F    extra `facedet serve` flags for every --bench configuration (word-split).
#   --soak S          issue 17's soak, S seconds (600 for the documented run): facedet_bench.soak
#                     --gpu against its own `facedet serve --backend torch` (no other flag: the
#                     automatic layout), 8 unary workers and 8 streams of 4 frames in flight, 1%
#                     bad frames; host RSS and GPU memory of the server's whole process tree.
#                     Report: $SLUG-soak.json. It outlasts one device command (10 minutes at
#                     most) with its first start: run it detached, as in the examples below.
#   --cpu-reference   issue 15's CPU goal on this machine's cores: facedet_bench.reference (the
#                     reference pipeline, then `facedet serve --backend onnxruntime`, the
#                     registry's default model from .devcarry, in an empty $FACEDET_HOME), with
#                     the reference on 2 sessions and again on one session per CPU.
#   --cpu-layouts     issue 15's CPU layout on this machine's cores: the CPU server measured as
#                     --cpu-reference measures it (--skip-reference) with no layout flags, then
#                     --batch-workers 8 --intra-op-threads 2, 4 x 4, 1 x all CPUs, none again
#                     (throughput at concurrency 16, p50 at 1), and none at concurrency 32.
#   --model-speed     model-only GPU time of yolov5n-0.5 and yolov5n-face (its ncnn .param from
#                     .devcarry), facedet_bench.gpu_model: CUDA graphs of the eager module, fp16,
#                     batches 1, 8 and 32 at 640x384 and 640x640.
#   --tests-timeout S seconds the --tests step may take (default 540). The device tool stops a
#                     command at 600 s: leave a minute after S for pytest's own teardown after
#                     the interrupt (it stops the servers still running) and the summary, or the
#                     summary is lost (a run with 560 was cut so). The whole of tests/gpu takes
#                     longer than one command: split it with -k.
#   --dry-run         print the plan (tree, commit, PYTHONPATH, configurations) and stop.
#   -h, --help        this text.
#
# The first lines printed name the run: the tree's commit (git rev-parse HEAD where the tree is a
# git checkout of its own, else the first line of its COMMIT file: the device tool's copy has no
# .git, so write one, e.g. `git rev-parse --short HEAD > COMMIT`, before an important run), the
# GPU and its driver. Every step prints its duration, and why when it fails; a failed step does
# not stop the later ones. Exit status: 0 when every step passed, 1 otherwise, 2 on bad arguments.
#
# Examples (device tool, from the repository root):
#   .ci/gpu.sh --tests --bench default
#   .ci/gpu.sh --tests -k "not memory_growth" --trt
#   .ci/gpu.sh --tree .before --bench default; .ci/gpu.sh --bench default   # before and after
#   # a soak that outlives this command (setsid), beside functional tests; a later command, on
#   # the same machine (it stays warm 30 s after each), copies /tmp/soak-out/* to $OUT:
#   OUT=/tmp/soak-out setsid nohup .ci/gpu.sh --label soak --soak 600 > /dev/null 2>&1 < /dev/null &
#   .ci/gpu.sh --tests -k "not 20000"
#
# The run letters of docs/benchmarks.md (A..AG) name runs of past passes, each made by its own
# .ci/gpu-run-<letter>.sh; those scripts are in git history before commit accd207.

# shellcheck disable=SC2317  # the step functions are called through step(), which shellcheck cannot see
set -o pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
RR4=ipv4:127.0.0.1:50070,127.0.0.1:50071,127.0.0.1:50072,127.0.0.1:50073
QUIET='^W1|pow_by_natural|Warn'  # torch compile chatter
BENCH_NAMES="default engines2 single pipelines auto devices"

usage() {  # the header comment above, without its '# '
  sed -n '2,/^$/{/^#/!d;s/^# \{0,1\}//;p}' "${BASH_SOURCE[0]}"
}

die_usage() {
  echo "gpu.sh: $*" >&2
  echo "gpu.sh: --help lists the options" >&2
  exit 2
}

is_own_option() {
  case $1 in
    --tree | --tree=* | --label | --label=* | --tests | --trt | --bench | --bench=* | --serve-args | --serve-args=* \
      | --tests-timeout | --tests-timeout=* | --soak | --soak=* | --cpu-reference | --cpu-layouts | --model-speed \
      | --dry-run | -h | --help) return 0 ;;
  esac
  return 1
}

# ---- arguments -------------------------------------------------------------------------------

TREE=.
LABEL=
RUN_TESTS=0
RUN_TRT=0
SOAK_S=
RUN_REFERENCE=0
RUN_LAYOUTS=0
RUN_MODEL_SPEED=0
DRY_RUN=0
TESTS_TIMEOUT=540
SERVE_EXTRA=()
PYTEST_ARGS=()
BENCHES=()

add_benches() {  # NAME[,NAME...]
  local name names
  IFS=, read -r -a names <<< "$1"
  for name in "${names[@]}"; do
    case " $BENCH_NAMES " in
      *" $name "*) BENCHES+=("$name") ;;
      *) die_usage "unknown --bench configuration '$name' (known: $BENCH_NAMES)" ;;
    esac
  done
}

need_value() {  # option, number of arguments left
  [ "$2" -ge 2 ] || die_usage "$1 needs a value"
}

while [ $# -gt 0 ]; do
  case $1 in
    -h | --help) usage; exit 0 ;;
    --tree) need_value "$1" $#; TREE=$2; shift 2 ;;
    --tree=*) TREE=${1#*=}; shift ;;
    --label) need_value "$1" $#; LABEL=$2; shift 2 ;;
    --label=*) LABEL=${1#*=}; shift ;;
    --bench) need_value "$1" $#; add_benches "$2"; shift 2 ;;
    --bench=*) add_benches "${1#*=}"; shift ;;
    --serve-args) need_value "$1" $#; read -r -a extra <<< "$2"; SERVE_EXTRA+=("${extra[@]}"); shift 2 ;;
    --serve-args=*) read -r -a extra <<< "${1#*=}"; SERVE_EXTRA+=("${extra[@]}"); shift ;;
    --tests-timeout) need_value "$1" $#; TESTS_TIMEOUT=$2; shift 2 ;;
    --tests-timeout=*) TESTS_TIMEOUT=${1#*=}; shift ;;
    --trt) RUN_TRT=1; shift ;;
    --soak) need_value "$1" $#; SOAK_S=$2; shift 2 ;;
    --soak=*) SOAK_S=${1#*=}; shift ;;
    --cpu-reference) RUN_REFERENCE=1; shift ;;
    --cpu-layouts) RUN_LAYOUTS=1; shift ;;
    --model-speed) RUN_MODEL_SPEED=1; shift ;;
    --dry-run) DRY_RUN=1; shift ;;
    --tests)
      RUN_TESTS=1
      shift
      while [ $# -gt 0 ] && ! is_own_option "$1"; do
        if [ "$1" = -- ]; then
          shift
          PYTEST_ARGS+=("$@")
          set --
          break
        fi
        PYTEST_ARGS+=("$1")
        shift
      done
      ;;
    *) die_usage "unknown argument '$1'" ;;
  esac
done
case $TESTS_TIMEOUT in
  '' | *[!0-9]*) die_usage "--tests-timeout takes whole seconds, not '$TESTS_TIMEOUT'" ;;
esac
case $SOAK_S in
  *[!0-9]*) die_usage "--soak takes whole seconds, not '$SOAK_S'" ;;
esac
[ "$RUN_TESTS$RUN_TRT${#BENCHES[@]}$RUN_REFERENCE$RUN_LAYOUTS$RUN_MODEL_SPEED" != 000000 ] || [ -n "$SOAK_S" ] \
  || echo "gpu.sh: nothing asked for but the setup (--tests, --trt, --bench, --soak, --cpu-reference, --cpu-layouts, --model-speed)"

cd "$REPO" || exit 2
[ -d "$TREE" ] || die_usage "--tree $TREE: no such folder (carry it)"
TREE=$(cd "$TREE" && pwd)

tree_commit() {  # the tree's commit and where it was read from
  local top
  local file=
  [ -s "$TREE/COMMIT" ] && file=$(head -1 "$TREE/COMMIT")
  if top=$(git -C "$TREE" rev-parse --show-toplevel 2> /dev/null) \
    && [ "$(cd "$top" && pwd -P)" = "$(cd "$TREE" && pwd -P)" ]; then
    local dirty=
    git -C "$TREE" diff --quiet HEAD 2> /dev/null || dirty=" + uncommitted changes"
    # The device tool's copy may carry a .git of another commit than the one it was sent from.
    echo "$(git -C "$TREE" rev-parse HEAD) (git$dirty${file:+; its COMMIT file says $file})"
  elif [ -n "$file" ]; then
    echo "$file (COMMIT file)"
  else
    echo "unknown (no .git of its own, no COMMIT file)"
  fi
}
COMMIT=$(tree_commit)
if [ -z "$LABEL" ]; then
  name=$(basename "$TREE")
  [ "$TREE" = "$REPO" ] && name=tree
  LABEL="${name#.}@$(echo "$COMMIT" | cut -c1-7)"
fi
SLUG=$(printf '%s' "$LABEL" | tr -c 'A-Za-z0-9._-' _)  # the only characters $OUT brings back

# The tree's package roots, and its `facedet` command (older trees have no tools/ and serve
# from facedet_server.cli).
ROOTS=
for root in clients/python server converter trt_runtime tools tests; do
  [ -d "$TREE/$root" ] && ROOTS="$ROOTS:$TREE/$root"
done
if [ -f "$TREE/clients/python/facedet/cli.py" ]; then
  FD=(python3 -m facedet.cli)
elif [ -f "$TREE/server/facedet_server/cli.py" ]; then
  FD=(python3 -m facedet_server.cli)
else
  FD=()
fi

export PYTHONPATH="/tmp/site$ROOTS"
export FACEDET_SHARED="$REPO/.devcarry/shared"
export FACEDET_MODEL="$FACEDET_SHARED/models/yolov5n-0.5.onnx"
export PYTHONUNBUFFERED=1
export PATH="/tmp/site/bin:$PATH"
IMG="$FACEDET_SHARED/images/zidane.jpg"

if [ "$DRY_RUN" = 1 ]; then
  echo "tree      $TREE"
  echo "commit    $COMMIT"
  echo "label     $LABEL (\$OUT/$SLUG-run.log, \$OUT/$SLUG-logs.tar.gz)"
  echo "facedet   ${FD[*]:-none found}"
  echo "PYTHONPATH $PYTHONPATH"
  [ "$RUN_TESTS" = 1 ] && echo "tests     pytest -v -rs -s -p no:cacheprovider ${PYTEST_ARGS[*]} (timeout $TESTS_TIMEOUT s)"
  [ "$RUN_TRT" = 1 ] && echo "trt       bash $TREE/trt_runtime/gpu_tests.sh"
  [ -n "$SOAK_S" ] && echo "soak      $SOAK_S s"
  [ "$RUN_REFERENCE" = 1 ] && echo "reference on $(nproc) CPUs"
  [ "$RUN_LAYOUTS" = 1 ] && echo "cpu layouts on $(nproc) CPUs"
  [ "$RUN_MODEL_SPEED" = 1 ] && echo "model speed yolov5n-0.5, yolov5n-face"
  for b in "${BENCHES[@]}"; do echo "bench     $b ${SERVE_EXTRA[*]}"; done
  exit 0
fi

if [ -z "${OUT:-}" ]; then
  OUT=$(mktemp -d /tmp/gpu-out.XXXXXX)
  echo "gpu.sh: \$OUT is not set; results go to $OUT"
fi
mkdir -p "$OUT" && OUT=$(cd "$OUT" && pwd)
# $OUT brings back 8 files at most: this run's output as $SLUG-run.log, every other log (tests,
# servers, clients, TensorRT runtime tests) packed into $SLUG-logs.tar.gz after each step.
LOGS="/tmp/gpu-logs/$SLUG"
rm -rf "$LOGS" && mkdir -p "$LOGS"

# ---- steps -----------------------------------------------------------------------------------

STEPS=()  # "name|status|seconds" of every step, for the summary at the end

now_ms() { echo $(($(date +%s%N) / 1000000)); }

step() {  # name, command...: runs it, prints how long it took and whether it failed
  local name=$1 t0 rc dt
  shift
  echo "=== $name"
  t0=$(now_ms)
  "$@"
  rc=$?
  dt=$(($(now_ms) - t0))
  dt="$((dt / 1000)).$((dt % 1000 / 100)) s"
  tar -czf "$OUT/$SLUG-logs.tar.gz" -C "$(dirname "$LOGS")" "$SLUG" 2> /dev/null
  if [ "$rc" -eq 0 ]; then
    echo "--- $name: ok in $dt"
    STEPS+=("$name|ok|$dt")
  else
    echo "--- $name: FAILED (exit $rc) in $dt"
    STEPS+=("$name|FAILED (exit $rc)|$dt")
  fi
  return "$rc"
}

skip_step() {  # name, why
  echo "--- $1: skipped: $2"
  STEPS+=("$1|skipped: $2|-")
}

result() {  # prefix...: stdin lines, each led by the label and the prefix
  awk -v p="[$LABEL] $*: " '{ print p $0; fflush() }'
}

timed_out() {  # exit status of `timeout`: explains 124
  [ "$1" -eq 124 ] && echo "timed out after $2 s"
  return 0
}

install_wheels() {
  local dir rc=0 wheels
  wheels=$(cd "$REPO" && ls -l .whl/*.whl .trtwhl/*.whl .nvwhl/*.whl 2> /dev/null | awk '{print $5, $NF}')
  [ -n "$wheels" ] || { echo "no carried wheels (.whl/*.whl): carry .whl"; rc=1; }
  # Once per machine: a run already going (a detached --soak, say) imports from /tmp/site, so a
  # second run must neither reinstall under it nor start before the first install is complete.
  mkdir -p /tmp/site
  exec 9> /tmp/site.lock
  flock 9
  if [ -n "$wheels" ] && [ "$(cat /tmp/site/.carried-wheels 2> /dev/null)" = "$wheels" ]; then
    echo "the carried wheels are already in /tmp/site"
  elif [ -n "$wheels" ]; then
    for dir in .whl .trtwhl .nvwhl; do
      compgen -G "$REPO/$dir/*.whl" > /dev/null || continue
      if ! python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site "$REPO/$dir"/*.whl; then
        echo "pip could not install $dir/*.whl into /tmp/site"
        rc=1
      fi
    done
    [ "$rc" = 0 ] && echo "$wheels" > /tmp/site/.carried-wheels
  fi
  flock -u 9
  exec 9>&-
  [ -f "$FACEDET_MODEL" ] || { echo "no model at $FACEDET_MODEL: carry .devcarry"; rc=1; }
  [ "${#FD[@]}" -gt 0 ] || { echo "$TREE has neither facedet.cli nor facedet_server.cli"; rc=1; }
  return "$rc"
}

describe_machine() {
  echo "[$LABEL] tree $TREE at commit $COMMIT"
  echo "[$LABEL] gpu $(nvidia-smi --query-gpu=name,driver_version --format=csv,noheader 2>&1 | paste -sd';' -)"
  python3 - << 'EOF' 2>&1 | result versions
import platform
parts = ["python " + platform.python_version()]
for name in ("torch", "torchvision", "onnxruntime", "grpc"):
    try:
        module = __import__(name)
        parts.append(f"{name} {module.__version__}")
    except Exception as exc:  # a missing package is part of the record, not an error here
        parts.append(f"{name} missing ({type(exc).__name__})")
try:
    import torch
    parts.append(f"cuda {torch.version.cuda}, {torch.cuda.device_count()} device(s)")
except Exception:
    pass
print(", ".join(parts))
EOF
}

run_tests() {
  local targets=() args=() arg rc
  for arg in "${PYTEST_ARGS[@]}"; do
    if [ -e "$TREE/${arg%%::*}" ]; then targets+=("$arg"); else args+=("$arg"); fi
  done
  [ "${#targets[@]}" -gt 0 ] || targets=(tests/gpu)
  # -v names each test as it starts, and SIGINT at the limit makes pytest print where it was and
  # its summary: a run cut short still says which test took the time.
  (cd "$TREE" && timeout -s INT -k 30 "$TESTS_TIMEOUT" python3 -m pytest -v -rs -s -p no:cacheprovider \
    --durations=0 --junitxml="$LOGS/tests.xml" "${targets[@]}" "${args[@]}") > "$LOGS/tests.log" 2>&1
  rc=$?
  grep -vE "$QUIET" "$LOGS/tests.log" | grep -E "passed|failed|skipped|SKIPPED|FAILED|ERROR|Error|assert|RSS" \
    | tail -25 | result tests
  timed_out "$rc" "$TESTS_TIMEOUT"
  [ "$rc" -eq 0 ] || echo "pytest exit $rc; the whole log is tests.log in $SLUG-logs.tar.gz"
  return "$rc"
}

run_trt() {
  local rc
  [ -f "$TREE/trt_runtime/gpu_tests.sh" ] || { echo "no trt_runtime/gpu_tests.sh in $TREE"; return 1; }
  mkdir -p "$LOGS/trt"
  OUT="$LOGS/trt" timeout 300 bash "$TREE/trt_runtime/gpu_tests.sh" > "$LOGS/trt/gpu_tests.log" 2>&1
  rc=$?
  grep -E "^=== |passed|failed|skipped|error|tensorrt module|cuda-bindings" "$LOGS/trt/gpu_tests.log" | result trt
  timed_out "$rc" 300
  return "$rc"
}

run_soak() {  # --soak S: the soak's own torch server, the automatic layout
  local rc
  (cd "$TREE" && timeout $((SOAK_S + 900)) python3 -m facedet_bench.soak --gpu --duration "$SOAK_S" \
    --model "$FACEDET_MODEL" --server-arg=--backend --server-arg=torch --start-timeout 600 \
    --unary 8 --streams 8 --window 4 --server-log "$LOGS/server-soak.log" \
    --json "$OUT/$SLUG-soak.json") > "$LOGS/soak.log" 2>&1
  rc=$?
  grep -E '"(requests|served_ok|img_per_s|good_by_status|bad_by_status|p99_ms_[a-z_]+|server_processes|rss_[a-z_]+|gpu_[a-z_]+|passed)"' \
    "$LOGS/soak.log" | result soak
  timed_out "$rc" $((SOAK_S + 900))
  [ "$rc" -eq 0 ] || { echo "soak exit $rc; the end of soak.log:"; tail -5 "$LOGS/soak.log"; }
  return "$rc"
}

run_reference() {  # --cpu-reference: the reference, then the CPU server with no other flag
  local threads rc=0 home
  for threads in $(printf "2\n%s\n" "$(nproc)" | sort -nu); do
    home=$(mktemp -d)
    # No FACEDET_MODEL: the server resolves the registry's default (the dynamic rewrite, made in
    # the empty home from the mirror), as on a user's machine; the reference reads the frozen file.
    (cd "$TREE" && env -u FACEDET_MODEL FACEDET_HOME="$home" FACEDET_MODEL_DIR="$FACEDET_SHARED/models" \
      timeout 240 python3 -m facedet_bench.reference --image "$IMG" --duration 8 --warmup 2 \
      --reference-threads "$threads" --serve-args "--backend onnxruntime" \
      --json "$LOGS/reference-$threads.json") > "$LOGS/reference-$threads.log" 2>&1 || rc=1
    grep -vE "$QUIET" "$LOGS/reference-$threads.log" | tail -6 | result "reference x$threads"
  done
  return "$rc"
}

run_layouts() {  # --cpu-layouts: the CPU server's layouts, alternating with the automatic one
  local entry layout c i=0 rc=0 home
  home=$(mktemp -d)  # one home: the default model's dynamic rewrite is made once, by the first run
  for entry in "16|" "16|--batch-workers 8 --intra-op-threads 2" "16|--batch-workers 4 --intra-op-threads 4" \
    "16|--batch-workers 1 --intra-op-threads $(nproc)" "16|" "32|"; do
    i=$((i + 1))
    c=${entry%%|*}
    layout=${entry#*|}
    (cd "$TREE" && env -u FACEDET_MODEL FACEDET_HOME="$home" FACEDET_MODEL_DIR="$FACEDET_SHARED/models" \
      timeout 240 python3 -m facedet_bench.reference --image "$IMG" --duration 8 --warmup 2 --skip-reference \
      --concurrency "$c" --serve-args "--backend onnxruntime $layout" \
      --json "$LOGS/layout-$i.json") > "$LOGS/layout-$i.log" 2>&1 || rc=1
    grep -E "^facedet serve" "$LOGS/layout-$i.log" | result "layout $i [${layout:-automatic}]"
  done
  return "$rc"
}

run_model_speed() {  # --model-speed: model-only GPU time of both models
  local name model rc=0
  for name in yolov5n-0.5 yolov5n-face; do
    model=$FACEDET_MODEL
    [ "$name" = yolov5n-face ] && model="$FACEDET_SHARED/models/ncnn/yolov5n.param"
    (cd "$TREE" && timeout 240 python3 -m facedet_bench.gpu_model --model "$model" --modes graph \
      --compile-mode off --batches 1,8,32 --shapes 640x384,640x640 --iters 100 \
      --json "$LOGS/model-speed-$name.json") > "$LOGS/model-speed-$name.log" 2>&1 || rc=1
    grep -vE "$QUIET" "$LOGS/model-speed-$name.log" | tail -12 | result "model $name"
  done
  return "$rc"
}

# ---- the server and its loads ----------------------------------------------------------------

S=  # the running server's pid (also its process group: it runs under setsid)

announced_front_ends() {  # server log: the front ends --processes auto chose ("" until known)
  python3 - "$1" 2> /dev/null << 'PY'
import json, sys
records = [json.loads(line) for line in open(sys.argv[1]) if line.startswith("{")]
events = {r.get("event"): r for r in records}
if "engine_process" in events:
    print(events["engine_process"]["front_ends"])
elif "processes" in events:
    print(events["processes"]["count"])
elif "model_loaded" in events:
    print(1)  # one process: no supervisor
PY
}

start_server() {  # name, processes (or auto), serve flags...: S, $LOGS/server-NAME.log
  local name=$1 n=$2 log="$LOGS/server-$1.log" i launcher=() procs=() want=$2
  shift 2
  command -v setsid > /dev/null && launcher=(setsid)
  [ "$n" = auto ] || procs=(--processes "$n")
  echo "serve ${procs[*]} $*"
  "${launcher[@]}" "${FD[@]}" serve --model "$FACEDET_MODEL" --listen 127.0.0.1:50060 "${procs[@]}" \
    --backend torch --stream-window 32 --summary-interval 4 "$@" > "$log" 2>&1 &
  S=$!
  for i in $(seq 1 400); do  # the first start compiles the model's shapes (cold cache)
    [ "$n" = auto ] && want=$(announced_front_ends "$log")
    if [ -n "$want" ] && [ "$(grep -cE '"event": *"serving"' "$log")" -ge "$want" ]; then
      echo "serving after ~$i s"
      grep -E '"model_loaded"' "$log" | head -1 | cut -c1-300
      return 0
    fi
    if ! kill -0 "$S" 2> /dev/null; then
      wait "$S"
      echo "the server exited (status $?) before serving; the end of server-$name.log:"
      tail -15 "$log"
      S=
      return 1
    fi
    sleep 1
  done
  echo "not serving after 400 s; the end of server-$name.log:"
  tail -15 "$log"
  return 1
}

stop_server() {  # SIGTERM, up to 60 s for a clean exit, then SIGKILL to its whole process group
  local i rc
  [ -n "$S" ] || return 0
  kill -TERM "$S" 2> /dev/null
  for i in $(seq 1 60); do
    kill -0 "$S" 2> /dev/null || break
    sleep 1
  done
  if kill -0 "$S" 2> /dev/null; then
    echo "still running 60 s after SIGTERM: SIGKILL"
    kill -KILL -- "-$S" 2> /dev/null || kill -KILL "$S" 2> /dev/null
  fi
  wait "$S"
  rc=$?
  kill -KILL -- "-$S" 2> /dev/null  # whatever of its children outlived it (none, normally)
  S=
  echo "server exit $rc"
  return "$rc"
}

bench() {  # load name, facedet bench flags...: one client run against $TARGET, its summary lines
  local load=$1 rc
  shift
  timeout 60 "${FD[@]}" bench --server "$TARGET" --image "$IMG" "$@" > "$LOGS/bench-$CONFIG-$load.log" 2>&1
  rc=$?
  grep -vE "$QUIET" "$LOGS/bench-$CONFIG-$load.log" | grep -E "img/s|latency|server ms|CPU" | result "$CONFIG $load"
  timed_out "$rc" 60
  [ "$rc" -eq 0 ] || { echo "bench exit $rc; the end of bench-$CONFIG-$load.log:"; tail -5 "$LOGS/bench-$CONFIG-$load.log"; }
  return "$rc"
}

run_devices() {  # --bench devices: the auto layout on 1, 2, 4, 8 GPUs, as far as there are GPUs
  local gpus list
  gpus=$(nvidia-smi -L 2> /dev/null | grep -c '^GPU')
  for list in 0 0,1 0,1,2,3 0,1,2,3,4,5,6,7; do
    [ "$(echo "$list" | tr ',' '\n' | wc -l)" -le "$gpus" ] || break
    run_config "devices-$(echo "$list" | tr ',' '\n' | wc -l)" --devices "$list"
  done
}

run_config() {  # a --bench NAME [serve flags]: serve, the three loads, the engine's last summaries, stop
  CONFIG=$1
  shift
  local procs=4 engine_lines=2 flags=(--front-end-listen 127.0.0.1:50070)
  TARGET=$RR4
  case $CONFIG in
    default) ;;
    engines2) flags+=(--engines 2); engine_lines=4 ;;
    single) procs=1; flags=(); engine_lines=0; TARGET=127.0.0.1:50060 ;;
    pipelines) flags+=(--engine-process off); engine_lines=0 ;;
    auto | devices-*) procs=auto; flags=("$@"); engine_lines=8 ;;
    devices) run_devices; return ;;
  esac
  if ! step "$CONFIG: start" start_server "$CONFIG" "$procs" "${flags[@]}" "${SERVE_EXTRA[@]}"; then
    stop_server > /dev/null
    skip_step "$CONFIG: loads" "the server did not start"
    return
  fi
  # No flags on the client side either: facedet bench, like our client, reads the front ends'
  # own addresses from GetModelInfo and spreads its calls over them.
  [ "$procs" != auto ] || TARGET=127.0.0.1:50060
  echo "$CONFIG: clients on $TARGET"
  step "$CONFIG: open loop" bench open-loop --rate 2000 --concurrency 512 --duration 8 --warmup 2
  step "$CONFIG: unary" bench unary --concurrency 256 --duration 8 --warmup 2
  step "$CONFIG: streams" bench streams --stream --window 8 --concurrency 128 --processes 8 --duration 6 --warmup 2
  if [ "$engine_lines" -gt 0 ]; then
    grep -E '"engine_summary"' "$LOGS/server-$CONFIG.log" | grep -vE '"images": 0' | tail -"$engine_lines" \
      | cut -c1-200 | result "$CONFIG engine"
  fi
  step "$CONFIG: stop" stop_server
}

# ---- the run ---------------------------------------------------------------------------------

main() {
  local b entry name status seconds failed=0
  trap stop_server EXIT  # a server left running when a step is cut short
  step setup install_wheels
  describe_machine  # after the setup: it names the carried grpc too
  [ "$RUN_TESTS" = 1 ] && step tests run_tests
  [ "$RUN_TRT" = 1 ] && step trt run_trt
  [ "$RUN_MODEL_SPEED" = 1 ] && step "model speed" run_model_speed
  [ -n "$SOAK_S" ] && step soak run_soak
  [ "$RUN_REFERENCE" = 1 ] && step "cpu reference" run_reference
  [ "$RUN_LAYOUTS" = 1 ] && step "cpu layouts" run_layouts
  for b in "${BENCHES[@]}"; do
    run_config "$b"
  done
  echo "=== summary [$LABEL] at commit $COMMIT"
  for entry in "${STEPS[@]}"; do
    IFS='|' read -r name status seconds <<< "$entry"
    printf '[%s] %-22s %-20s %s\n' "$LABEL" "$name" "$status" "$seconds"
    case $status in ok | skipped*) ;; *) failed=1 ;; esac
  done
  return "$failed"
}

main 2>&1 | tee "$OUT/$SLUG-run.log"
exit "${PIPESTATUS[0]}"
