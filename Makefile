# Kiln — the two commands a new user needs: `make run` and `make test`.
GO        ?= go
BIN       := bin/kiln
PKG       := github.com/kilnhq/kiln/node
VERSION   ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
REVISION  ?= $(shell git rev-parse HEAD 2>/dev/null || echo unknown)
BRANCH    ?= $(shell git rev-parse --abbrev-ref HEAD 2>/dev/null || echo unknown)
LDFLAGS   := -s -w -X $(PKG).Version=$(VERSION) -X $(PKG).Revision=$(REVISION) -X $(PKG).Branch=$(BRANCH) \
             -X $(PKG).BuildUser=$(shell whoami 2>/dev/null || echo unknown) -X $(PKG).BuildDate=$(shell date -u +%Y%m%d-%H:%M:%S)
FUZZTIME  ?= 10s
# go vet's stdmethods check wants io.Seeker's signature on every Seek; the
# chunkenc.Iterator contract Kiln implements has a different one.
VETFLAGS  := -stdmethods=false

.PHONY: all build run test test-short bench fuzz lint docker clean

all: build

build:
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags '$(LDFLAGS)' -o $(BIN) ./node/cmd/kiln

run: build
	./$(BIN) --storage.path=./data

test:
	$(GO) vet $(VETFLAGS) ./...
	$(GO) test -race -count=1 -timeout 30m ./...

test-short:
	$(GO) test -short -count=1 ./...

bench:
	$(GO) test -run='^$$' -bench=. -benchmem ./...

# Runs every Fuzz target of every package for $(FUZZTIME).
fuzz:
	@set -e; for pkg in $$($(GO) list ./...); do \
		for f in $$($(GO) test -list '^Fuzz' $$pkg | grep '^Fuzz' || true); do \
			echo "== $$pkg $$f"; \
			$(GO) test -run='^$$' -fuzz="^$$f\$$" -fuzztime=$(FUZZTIME) $$pkg; \
		done; \
	done

lint:
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
	$(GO) vet $(VETFLAGS) ./...

docker: build
	docker build -f docker/Dockerfile -t kiln:$(VERSION) -t kiln:latest bin

clean:
	rm -rf bin
