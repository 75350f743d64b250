# Kiln — the two commands a new user needs: `make run` and `make test`.
GO        ?= go
BIN       := bin/kiln
PKG       := github.com/kilnhq/kiln/node
VERSION   ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
REVISION  ?= $(shell git rev-parse HEAD 2>/dev/null || echo unknown)
BRANCH    ?= $(shell git rev-parse --abbrev-ref HEAD 2>/dev/null || echo unknown)
BUILDUSER ?= $(shell whoami 2>/dev/null || echo unknown)
BUILDDATE ?= $(shell date -u +%Y%m%d-%H:%M:%S)
# Expand once: a commit or a clock tick during a long build must not give the
# binary and the image tag different versions.
VERSION   := $(VERSION)
REVISION  := $(REVISION)
BRANCH    := $(BRANCH)
BUILDUSER := $(BUILDUSER)
BUILDDATE := $(BUILDDATE)
# The same values also go to prometheus/common/version, which the Prometheus
# libraries read, e.g. for the scraper's User-Agent (Kiln/<version>).
PROMVER   := github.com/prometheus/common/version
LDFLAGS   := -s -w \
             -X $(PKG).Version=$(VERSION) -X $(PKG).Revision=$(REVISION) -X $(PKG).Branch=$(BRANCH) \
             -X $(PKG).BuildUser=$(BUILDUSER) -X $(PKG).BuildDate=$(BUILDDATE) \
             -X $(PROMVER).Version=$(VERSION) -X $(PROMVER).Revision=$(REVISION) -X $(PROMVER).Branch=$(BRANCH) \
             -X $(PROMVER).BuildUser=$(BUILDUSER) -X $(PROMVER).BuildDate=$(BUILDDATE)
FUZZTIME  ?= 10s
# go vet's stdmethods check wants io.Seeker's signature on every Seek; the
# chunkenc.Iterator contract Kiln implements has a different one.
VETFLAGS  := -stdmethods=false
# -race needs cgo, hence a C compiler; `go env` reports CGO_ENABLED=0 when
# there is none, and then the tests run without the race detector.
RACE      := $(if $(filter 1,$(shell $(GO) env CGO_ENABLED 2>/dev/null)),-race,)
# Built from the module proxy by `go run`, so nothing needs installing.
GOLANGCI_LINT_VERSION ?= v2.15.0
GOLANGCI_LINT         := $(GO) run github.com/golangci/golangci-lint/v2/cmd/golangci-lint@$(GOLANGCI_LINT_VERSION)
IMAGE     ?= kiln
DOCKER_CONTEXT := bin/docker-context

.PHONY: all build run cluster test test-short bench fuzz lint docker clean

all: build

build:
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags '$(LDFLAGS)' -o $(BIN) ./node/cmd/kiln

run: build
	./$(BIN) --storage.path=./data

# Three local nodes on 127.0.0.1 (API 9364/9374/9384, gossip one port
# above, Raft gossip + 1000), data in ./cluster-data. Ctrl-C reaches all
# three (one foreground process group) and each shuts down cleanly.
CLUSTER_FLAGS ?=
cluster: build
	@mkdir -p cluster-data
	@trap 'wait' INT TERM; \
	./$(BIN) --storage.path=./cluster-data/node-1 --cluster.node-name=node-1 \
		--web.listen-address=127.0.0.1:9364 --cluster.listen-address=127.0.0.1:9365 $(CLUSTER_FLAGS) & \
	./$(BIN) --storage.path=./cluster-data/node-2 --cluster.node-name=node-2 \
		--web.listen-address=127.0.0.1:9374 --cluster.listen-address=127.0.0.1:9375 --cluster.peer=127.0.0.1:9365 $(CLUSTER_FLAGS) & \
	./$(BIN) --storage.path=./cluster-data/node-3 --cluster.node-name=node-3 \
		--web.listen-address=127.0.0.1:9384 --cluster.listen-address=127.0.0.1:9385 --cluster.peer=127.0.0.1:9365 $(CLUSTER_FLAGS) & \
	wait

# vet first, so that the output ends with go test's summary.
test:
	$(GO) vet $(VETFLAGS) ./...
	@if [ -z "$(RACE)" ]; then echo "warning: no C compiler (CGO_ENABLED=0): testing without -race"; fi
	$(GO) test $(RACE) -count=1 -timeout 30m ./...

test-short:
	$(GO) test -short -count=1 ./...

bench:
	$(GO) test -run='^$$' -bench=. -benchmem ./...

# Runs every Fuzz target for $(FUZZTIME). Only directories whose tests
# declare a Fuzz function are compiled for -list; -fuzz takes one package
# and one target at a time.
fuzz:
	@set -e; for dir in $$(grep -rl --include='*_test.go' '^func Fuzz' . | xargs -r -n1 dirname | sort -u); do \
		for f in $$($(GO) test -list '^Fuzz' $$dir | grep '^Fuzz' || true); do \
			echo "== $$dir $$f"; \
			$(GO) test -run='^$$' -fuzz="^$$f\$$" -fuzztime=$(FUZZTIME) $$dir; \
		done; \
	done

# gofmt, go vet, then golangci-lint with .golangci.yml.
lint:
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
	$(GO) vet $(VETFLAGS) ./...
	$(GOLANGCI_LINT) run ./...

# No base image can be pulled, and a static binary needs none: the image is
# FROM scratch, and its build context is staged here with only what it holds.
docker: build
	rm -rf $(DOCKER_CONTEXT)
	mkdir -p $(DOCKER_CONTEXT)/data
	cp $(BIN) $(DOCKER_CONTEXT)/kiln
	@if [ -f /etc/ssl/certs/ca-certificates.crt ]; then \
		cp /etc/ssl/certs/ca-certificates.crt $(DOCKER_CONTEXT)/; \
	else \
		echo "warning: no /etc/ssl/certs/ca-certificates.crt on this host: the image cannot verify https targets"; \
		: > $(DOCKER_CONTEXT)/ca-certificates.crt; \
	fi
	docker build -f docker/Dockerfile -t $(IMAGE):$(VERSION) -t $(IMAGE):latest $(DOCKER_CONTEXT)

clean:
	rm -rf bin
