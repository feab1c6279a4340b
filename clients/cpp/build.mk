# The C++ example client, included by the top Makefile: `make clients-cpp` installs the Debian
# packages it needs where they are missing (CI runs as root; elsewhere through sudo), then
# builds build/clients/facedet-cpp with CMake (objects in build/cpp, reused between builds).
# `make proto-cpp` (and `make proto`) regenerates the committed stubs in clients/cpp/gen.

CPP_CLIENT_DIR := clients/cpp
CPP_BUILD_DIR := build/cpp
CPP_CLIENT_BIN := build/clients/facedet-cpp
# cmake/g++/make/pkg-config build it (gRPC's CMake config finds RE2 through pkg-config);
# libgrpc++-dev brings libprotobuf-dev; protoc and grpc_cpp_plugin are what proto/gen_cpp.py
# runs and gRPC's CMake config expects beside the library.
CPP_CLIENT_PACKAGES := cmake g++ make pkg-config libgrpc++-dev libprotobuf-dev protobuf-compiler protobuf-compiler-grpc
CPP_JOBS ?= $(shell nproc 2>/dev/null || echo 2)

.PHONY: clients-cpp clients-cpp-packages proto-cpp

clients-cpp: clients-cpp-packages
	cmake -S $(CPP_CLIENT_DIR) -B $(CPP_BUILD_DIR) -DCMAKE_BUILD_TYPE=Release
	cmake --build $(CPP_BUILD_DIR) -j $(CPP_JOBS)
	@mkdir -p $(dir $(CPP_CLIENT_BIN))
	install -m 755 $(CPP_BUILD_DIR)/facedet-cpp $(CPP_CLIENT_BIN)

clients-cpp-packages:
	@missing=""; for p in $(CPP_CLIENT_PACKAGES); do \
	  dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  sudo=""; [ "$$(id -u)" = 0 ] || sudo=sudo; \
	  echo "installing:$$missing"; \
	  $$sudo apt-get update -q && DEBIAN_FRONTEND=noninteractive $$sudo apt-get install -y -q --no-install-recommends $$missing; \
	fi

proto-cpp: clients-cpp-packages
	$(PYTHON) proto/gen_cpp.py

