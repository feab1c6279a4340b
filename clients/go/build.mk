# The Go example client, facedet-go (clients/go; see its README.md). Included by the Makefile.
#
# No Go module can be downloaded here, so it is built offline in GOPATH mode against the Go
# sources Debian installs under /usr/share/gocode: our module is linked into a GOPATH of its own
# under build/ (its import path, github.com/facedet/facedet/clients/go, is its go.mod's), with
# Debian's tree after it. GO111MODULE=off ignores go.mod; GOPROXY=off makes sure nothing is
# fetched.

# What the build and proto/gen_go.py need. golang-google-grpc-dev brings golang-glog,
# golang-golang-x-net and the rest; golang-google-genproto-dev holds google.rpc.Status.
CLIENTS_GO_DEBS := golang-go golang-google-grpc-dev golang-google-protobuf-dev \
	golang-google-genproto-dev protoc-gen-go-grpc protobuf-compiler
CLIENTS_GO_MODULE := github.com/facedet/facedet/clients/go
CLIENTS_GO_WORK := $(abspath build/go)
CLIENTS_GO_LINK := $(CLIENTS_GO_WORK)/gopath/src/$(CLIENTS_GO_MODULE)
CLIENTS_GO_ENV := GO111MODULE=off GOPATH=$(CLIENTS_GO_WORK)/gopath:/usr/share/gocode GOPROXY=off \
	GOFLAGS= CGO_ENABLED=0 GOCACHE=$(CLIENTS_GO_WORK)/cache
CLIENTS_GO_BIN := build/clients/facedet-go
# A load generator built from the same module (cmd/facedet-flood): facedet_bench.flood's.
CLIENTS_GO_FLOOD := build/clients/facedet-flood

.PHONY: clients-go clients-go-deps clients-go-test proto-go

# apt-get only for what is missing (CI runs as root on a clean machine; a developer's machine
# that has the packages is left alone). dpkg-query, not dpkg -s: a removed package whose
# configuration files remain still "exists" for dpkg -s.
clients-go-deps:
	@missing=$$(for p in $(CLIENTS_GO_DEBS); do \
		dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q 'install ok installed' || echo $$p; done); \
	if [ -n "$$missing" ]; then \
		echo "clients-go: installing" $$missing; \
		apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $$missing; \
	fi

# (Re)made by every recipe below: it must name this checkout, wherever the checkout is.
CLIENTS_GO_LINK_IT = mkdir -p $(dir $(CLIENTS_GO_LINK)) && ln -sfn $(CURDIR)/clients/go $(CLIENTS_GO_LINK)

# go build itself knows what changed (its cache is under build/go), so it always runs.
clients-go: clients-go-deps
	$(CLIENTS_GO_LINK_IT)
	mkdir -p $(dir $(CLIENTS_GO_BIN))
	cd $(CLIENTS_GO_LINK) && $(CLIENTS_GO_ENV) go build -trimpath -o $(CURDIR)/$(CLIENTS_GO_BIN) ./cmd/facedet-go
	cd $(CLIENTS_GO_LINK) && $(CLIENTS_GO_ENV) go build -trimpath -o $(CURDIR)/$(CLIENTS_GO_FLOOD) ./cmd/facedet-flood

# go vet and the Go unit tests (target forms, retries on UNAVAILABLE); tests/test_client_go.py
# runs this, tests/test_example_clients.py the binary against real servers.
clients-go-test: clients-go-deps
	$(CLIENTS_GO_LINK_IT)
	cd $(CLIENTS_GO_LINK) && test -z "$$(gofmt -l .)" || { gofmt -l .; echo "gofmt: the files above need formatting"; exit 1; }
	cd $(CLIENTS_GO_LINK) && $(CLIENTS_GO_ENV) go vet ./...
	cd $(CLIENTS_GO_LINK) && $(CLIENTS_GO_ENV) go test -count=1 ./...

# Regenerate clients/go/gen from the .proto (tests/test_proto_fresh_go.py checks it is fresh).
proto-go: clients-go-deps
	$(PYTHON) proto/gen_go.py
