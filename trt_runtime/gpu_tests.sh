#!/usr/bin/env bash
# facedet_trt's tests on the GPU machine, from the repository root:
#
#     bash trt_runtime/gpu_tests.sh [extra pytest args]
#
# Needs python3 with numpy, pytest and cuda-bindings (the GPU image has them but not the project
# installed, hence PYTHONPATH). The TensorRT lean runtime is used where it imports, else installed
# from wheels in .trtwhl/ (git-excluded: carry it) into a temporary folder.
#
# Each test file runs in its own process: a crash inside TensorRT must not hide the CUDA results.
# Logs and JUnit XML go to $OUT when it is set.
set -uo pipefail
cd "$(dirname "$0")/.." || exit 2
PY=${PYTHON:-python3}
LOGDIR=${OUT:-$(mktemp -d)}
mkdir -p "$LOGDIR"
export PYTHONPATH="$PWD/trt_runtime:$PWD/server:$PWD/converter:$PWD/clients/python:$PWD/tests${PYTHONPATH:+:$PYTHONPATH}"

if ! "$PY" -c "import pytest, numpy" 2>/dev/null; then
    echo "error: $PY lacks pytest or numpy; install them (or set PYTHON=...)" >&2
    exit 2
fi

if ! "$PY" -c "import tensorrt_lean_bindings" 2>/dev/null && ! "$PY" -c "import tensorrt" 2>/dev/null; then
    if compgen -G ".trtwhl/*.whl" >/dev/null; then
        target=$(mktemp -d)/trt
        "$PY" -m pip install -q --no-index --no-deps --target "$target" .trtwhl/*.whl \
            && export PYTHONPATH="$PYTHONPATH:$target"
    else
        echo "note: no TensorRT module and no .trtwhl/ wheels: the TensorRT tier will skip"
    fi
fi

nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true
"$PY" - <<'EOF'
import platform, numpy
print("python", platform.python_version(), "numpy", numpy.__version__)
try:
    from importlib.metadata import version
    print("cuda-bindings", version("cuda-bindings"))
except Exception as exc:
    print("cuda-bindings: not found", exc)
try:
    from facedet_trt.trt_module import load_tensorrt, tensorrt_version
    trt = load_tensorrt()
    print("tensorrt module", trt.__name__, tensorrt_version(trt))
except ImportError as exc:
    print("tensorrt module: none:", exc)
EOF

status=0
for f in tests/test_trt_sidecar.py tests/gpu/test_cuda_plumbing.py tests/gpu/test_trt_engine.py; do
    name=$(basename "$f" .py)
    echo "=== $f"
    # --noconftest: tests/conftest.py serves the gRPC tests and imports grpc, which these do not need.
    "$PY" -m pytest "$f" --noconftest -p no:cacheprovider -o addopts="" -W ignore::pytest.PytestConfigWarning \
        -q -rs --durations=5 \
        --junitxml="$LOGDIR/$name.xml" "$@" 2>&1 | tee "$LOGDIR/$name.log"
    rc=${PIPESTATUS[0]}
    echo "=== $f: exit $rc"
    [ "$rc" -eq 0 ] || status=1
done
exit $status
